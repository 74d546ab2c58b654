"""serve-model under hostile and bursty clients: 4xx with a JSON error for every bad request,
no connection resets for 200 concurrent clients, and no tracebacks for half-open connections."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tiny_lm import tiny_model_and_tokenizer

from agentropy.agents.backends.hf import HFBackend
from agentropy.agents.serve import ModelServer, ServedModel, make_server, server_url


@pytest.fixture(scope="module")
def server():
    model, tokenizer = tiny_model_and_tokenizer()
    served = ServedModel(HFBackend(model, tokenizer), tokenizer, name="tiny", max_model_len=256)
    srv = make_server(served, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _post_raw(srv, body: bytes) -> httpx.Response:
    return httpx.post(server_url(srv) + "/completions", content=body,
                      headers={"Content-Type": "application/json"}, timeout=30)


def test_backlog_is_deep(server):
    assert isinstance(server, ModelServer) and server.request_queue_size == 256


@pytest.mark.parametrize("body, message", [
    (b'{"prompt": "\xff\xfe"}', "the request body is not UTF-8 (byte 12)"),
    (b'{"prompt": "hi", "temperature": NaN}', "the request body is not valid JSON: NaN is not valid JSON"),
    (b'{"prompt": "hi", "top_p": Infinity}', "the request body is not valid JSON: Infinity is not valid JSON"),
    (b'{"prompt": "hi", "temperature": 1e999}', "`temperature` must be a finite number, got inf"),
    (b'{"prompt": "hi"', "the request body is not valid JSON: Expecting ',' delimiter: line 1 column 16 (char 15)"),
])
def test_bad_bodies_get_400_with_a_json_error(server, body, message):
    response = _post_raw(server, body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message


def test_200_concurrent_clients_are_all_answered(server):
    url = server_url(server).removesuffix("/v1") + "/health"

    def get(_):
        try:
            return httpx.get(url, timeout=60).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=200) as pool:
        codes = list(pool.map(get, range(200)))
    assert codes == [200] * 200


def test_half_open_and_reset_connections_leave_no_traceback(server, capfd):
    host, port = server.server_address[:2]
    for _ in range(20):
        sock = socket.create_connection((host, port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pro")
        sock.close()  # hung up mid-body
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    sock.close()  # RST
    assert httpx.get(server_url(server).removesuffix("/v1") + "/health", timeout=30).status_code == 200
    assert "Traceback" not in capfd.readouterr().err
