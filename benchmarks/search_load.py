"""Load test of the local search service: N concurrent clients for a bounded time.

Starts the Search-v0 service on 127.0.0.1 (a child process, as the env does), then runs,
for each client count, N client threads in a closed loop for ``--seconds`` seconds or until
``--max-requests`` requests in all. Every client holds its own keep-alive ``httpx.Client``, as
each env does, and sends a mix of searches (entity titles and question texts, so the BM25
path is exercised on short and long queries) and document opens. Loopback only.

Prints requests/s, p50 and p99 latency and the error count per client count; the last line
is the headline at 32 clients: ``search p99 ms at 32 clients: <p99> (target <= 50), errors <n>``.
"""

from __future__ import annotations

import argparse
import functools
import random
import socket
import threading
import time
from urllib.parse import urlencode

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress

from agentropy.envs.search.process import ServiceConfig, ServiceProcess
from agentropy.envs.search.questions import question_set
from agentropy.envs.search.world import WorldConfig, build_world

HEADLINE_CLIENTS = 32


def _requests(world_seed: int, n_docs: int, n: int, seed: int) -> list[str]:
    """``n`` request targets: 45% title searches, 35% question searches, 20% opens."""
    world = build_world(WorldConfig(seed=world_seed, n_docs=n_docs))
    questions = question_set(world, "train", 2000)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.45:
            out.append("/search?" + urlencode({"q": rng.choice(world.entities).title, "k": 5}))
        elif roll < 0.8:
            out.append("/search?" + urlencode({"q": rng.choice(questions).text, "k": 5}))
        else:
            out.append(f"/doc/{rng.choice(world.entities).id}")
    return out


class RawClient:
    """A minimal keep-alive HTTP/1.1 GET client on a socket, so the load generator costs far
    less CPU than the server it measures (both share the machine's cores)."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        host, port = endpoint.removeprefix("http://").split(":")
        self.address, self.timeout, self.sock, self.buffer = (host, int(port)), timeout, None, b""

    def get(self, target: str) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: loadtest\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length")
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _httpx_get(http: httpx.Client, target: str) -> tuple[int, bytes]:
    response = http.get(target)
    return response.status_code, response.content


def _client(endpoint: str, client_kind: str, work: list[str], stop_at: float, budget: list[int],
            lock: threading.Lock, latencies: list[float], errors: list[int]) -> None:
    if client_kind == "httpx":
        http = httpx.Client(base_url=endpoint, timeout=5.0, trust_env=False)
        get = functools.partial(_httpx_get, http)
    else:
        http = RawClient(endpoint)
        get = http.get
    i = 0
    try:
        while time.perf_counter() < stop_at:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            target = work[i % len(work)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, body = get(target)
                ok = status == 200 and body[:1] == b"{"
            except (OSError, httpx.HTTPError, ValueError, StopIteration):
                ok = False
                if client_kind == "raw":
                    http.close()
            latencies.append(time.perf_counter() - t0)
            if not ok:
                errors.append(1)
    finally:
        http.close()


def run_level(endpoint: str, client_kind: str, work: list[str], clients: int, seconds: float,
              max_requests: int, seed: int, progress: Progress | None = None) -> dict[str, float]:
    """Run ``clients`` closed-loop clients; returns rps, p50/p99 in ms, errors, requests."""
    rng = random.Random(seed + clients)
    lock, budget = threading.Lock(), [max_requests]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[int]] = [[] for _ in range(clients)]
    start = time.perf_counter()
    stop_at = start + seconds
    threads = []
    for c in range(clients):
        mine = work[:]
        rng.shuffle(mine)
        t = threading.Thread(target=_client, args=(endpoint, client_kind, mine, stop_at, budget, lock, latencies[c], errors[c]))
        threads.append(t)
        t.start()
    task = progress.add_task(f"{clients} clients", total=seconds) if progress else None
    deadline = stop_at + 30
    while any(t.is_alive() for t in threads) and time.perf_counter() < deadline:
        if progress is not None:
            progress.update(task, completed=min(seconds, time.perf_counter() - start))
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    n = len(lat)
    return {
        "requests": n,
        "rps": n / elapsed,
        "p50": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99": float(np.percentile(lat, 99)) if n else float("nan"),
        "errors": sum(len(e) for e in errors) + sum(t.is_alive() for t in threads),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts; 32 gives the headline")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each client-count level")
    parser.add_argument("--max-requests", type=int, default=30000, help="request budget of each level")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="unmeasured warm-up at the first level")
    parser.add_argument("--n-docs", type=int, default=3000, help="articles in the served world")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load-generator client: a lean socket client (default), or httpx as the env uses")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if HEADLINE_CLIENTS not in levels:
        levels.append(HEADLINE_CLIENTS)

    service = ServiceProcess(ServiceConfig(WorldConfig(seed=args.world_seed, n_docs=args.n_docs)))
    try:
        work = _requests(args.world_seed, args.n_docs, 5000, args.seed)
        print(f"service {service.endpoint} (pid {service.pid}), {args.n_docs} docs; {args.client} clients, "
              f"closed loop; {args.seconds:g} s or {args.max_requests} requests per level")
        results = {}
        with Progress(*Progress.get_default_columns(), console=Console(stderr=True), transient=True) as progress:
            run_level(service.endpoint, args.client, work, levels[0], args.warmup_seconds, args.max_requests, args.seed)
            for clients in levels:
                results[clients] = run_level(
                    service.endpoint, args.client, work, clients, args.seconds, args.max_requests, args.seed, progress
                )
        print(f"{'clients':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for clients, r in results.items():
            print(f"{clients:>7} {r['requests']:>9} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>6}")
    finally:
        service.close()
    head = results[HEADLINE_CLIENTS]
    print(f"search p99 ms at {HEADLINE_CLIENTS} clients: {head['p99']:.1f} (target <= 50), errors {head['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
