"""Clients at once against a running server: the tokens all of them get a second, and each one's.

Developer tool::

    kvrun serve smollm2 -np 4 --port 8080 &
    python tools/bench_serve.py http://127.0.0.1:8080 -c 4 -n 64 -r 2

Each of ``-c`` clients sends ``-r`` chat requests in turn (a different question each, greedy, ``max_tokens``
``-n``, the reply's end ignored so every reply is ``-n`` tokens), all clients at once; prints the wall time,
the completion tokens of all replies over it, and each reply's mean tokens a second.  Works against any
OpenAI-compatible server (llama-server too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

TOPICS = ["the sea", "bread", "owls", "rain", "mountains", "chess", "tea", "bicycles", "libraries", "volcanoes",
          "bees", "trains", "maps", "glass", "clocks", "snow"]  # fmt: skip


def ask(url: str, topic: str, n: int) -> tuple[int, float]:
    body = {"messages": [{"role": "user", "content": f"Tell me about {topic}."}], "max_tokens": n, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        usage = json.loads(r.read())["usage"]
    return usage["completion_tokens"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("-c", "--clients", type=int, default=4)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", "--requests", type=int, default=2, help="requests each client sends, one after another")
    a = ap.parse_args()
    ask(a.url, "warm-up", 4)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(a.requests):
            got = ask(a.url, TOPICS[(i * a.requests + j) % len(TOPICS)], a.n)
            with lock:
                results.append(got)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in results)
    each = statistics.fmean(n / s for n, s in results)
    print(f"{a.clients} clients x {a.requests} requests x {a.n} tokens: {wall:.2f} s, {tokens / wall:.1f} tok/s in all, "
          f"{each:.1f} tok/s a reply (prompt included)")


if __name__ == "__main__":
    main()
