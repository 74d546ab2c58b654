"""The search service: a threaded HTTP/1.1 JSON server over a :class:`BM25Index`.

Endpoints (all ``GET``, all answers JSON):

* ``/search?q=<query>&k=<1..50>`` -> ``{"query": q, "results": [{"id", "title", "snippet", "score"}]}``
* ``/doc/<id>`` -> ``{"id", "title", "text"}``, or 404 ``{"error": ...}``
* ``/health`` -> ``{"status": "ok", "n_docs": N, "world_seed": S}``

Run it with ``agentropy serve-search`` or ``python -m agentropy.envs.search.server``. When
started with ``--ready-stdout`` it prints one JSON line ``{"endpoint": ...}`` on stdout once
it accepts requests; :mod:`.process` waits for that line. It binds 127.0.0.1 unless told
otherwise.

Why it is fast: one thread per keep-alive connection (no connection set-up per request),
Nagle's algorithm off (no 40 ms delayed-ACK stalls), each response written with a single
``send``, and the BM25 fast path of :mod:`.index`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from agentropy.envs.search.world import WorldConfig, build_world

if TYPE_CHECKING:
    from agentropy.envs.search.index import BM25Index

MAX_K = 50
MAX_QUERY_CHARS = 1000


class SearchRequestHandler(BaseHTTPRequestHandler):
    """Answers the three endpoints; the index is ``self.server.index``."""

    protocol_version = "HTTP/1.1"  # keep-alive, so httpx's pool reuses connections
    disable_nagle_algorithm = True
    server_version = "agentropy-search/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Silence per-request logs: at thousands of requests a second they cost more than the search."""

    def _reply(self, status: int, payload: dict | bytes) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        self.wfile.write(head + body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        index: BM25Index = self.server.index  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path == "/search":
            params = parse_qs(url.query)
            query = params.get("q", [""])[0]
            try:
                k = int(params.get("k", ["5"])[0])
            except ValueError:
                self._reply(400, {"error": "parameter 'k' must be an integer"})
                return
            if not 1 <= k <= MAX_K:
                self._reply(400, {"error": f"parameter 'k' must lie in [1, {MAX_K}], got {k}"})
                return
            if len(query) > MAX_QUERY_CHARS:
                self._reply(400, {"error": f"parameter 'q' is longer than {MAX_QUERY_CHARS} characters"})
                return
            self._reply(200, index.search_json(query, k))
        elif url.path.startswith("/doc/"):
            doc_id = unquote(url.path[len("/doc/"):])
            body = index.doc_json(doc_id)
            if body is None:
                self._reply(404, {"error": f"no document with id {doc_id!r}"})
            else:
                self._reply(200, body)
        elif url.path == "/health":
            self._reply(200, {"status": "ok", "n_docs": index.n_docs, "world_seed": self.server.world_seed})  # type: ignore[attr-defined]
        else:
            self._reply(404, {"error": f"unknown path {url.path!r}; use /search, /doc/<id> or /health"})


class SearchServer(ThreadingHTTPServer):
    """A thread per connection; a deep accept backlog so a burst of clients is never refused."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, index: BM25Index, host: str = "127.0.0.1", port: int = 0, world_seed: int | None = None):
        self.index = index
        self.world_seed = world_seed
        super().__init__((host, port), SearchRequestHandler)

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(config: WorldConfig, host: str = "127.0.0.1", port: int = 0, snippet_chars: int = 160) -> SearchServer:
    """Build the world's index and bind a server to ``host:port`` (port 0: a free one)."""
    from agentropy.envs.search.index import BM25Index  # numpy + bm25s: only when serving

    index = BM25Index.from_world(build_world(config), snippet_chars)
    return SearchServer(index, host, port, world_seed=config.seed)


def serve_in_thread(server: SearchServer) -> threading.Thread:
    """Serve ``server`` from a daemon thread (stop with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return thread


def _exit_with_parent(parent_pid: int) -> None:
    """Exit when the process that started us is gone, so a crashed trainer leaves no orphan."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the generated encyclopedia")
    parser.add_argument("--n-docs", type=int, default=3000, help="about how many articles to generate")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of entities in the test split")
    parser.add_argument("--snippet-chars", type=int, default=160, help="length of result snippets")
    parser.add_argument("--ready-stdout", action="store_true", help="print one JSON line with the endpoint when ready")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    return parser


def server_from_args(args: argparse.Namespace) -> SearchServer:
    """The server the parsed command-line arguments describe (the index is built here)."""
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    config = WorldConfig(seed=args.world_seed, n_docs=args.n_docs, test_fraction=args.test_fraction)
    server = make_server(config, args.host, args.port, args.snippet_chars)
    if args.ready_stdout:
        print(json.dumps({"endpoint": server.endpoint, "pid": os.getpid()}), flush=True)
    return server


def main(argv: list[str] | None = None) -> int:
    server = server_from_args(build_arg_parser().parse_args(argv))
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
