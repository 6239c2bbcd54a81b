#!/usr/bin/env python3
"""Online lookup latency, one run: mlops in-memory and Redis stores, with
redis-benchmark as the floor for the Redis path.

    python3 benches/online_vs_redis.py

Needs redis-server and redis-benchmark (Debian package redis-server). Starts a
server on a free loopback port, runs `cargo bench --features redis --bench
online_compare` against it (5 features from 2 views, 100,000 entities, 20,000
lookups per case after 1,000 warm-up), then redis-benchmark pipelining HMGET of
the same number of keys (2 for one entity, 200 for 100 entities: one hash per
entity and view), and prints p50/p99 in microseconds with the ratio to the floor.
Feast's get_online_features is not measured here yet.
"""
import json
import pathlib
import re
import socket
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def floor(port, key, pipeline):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-n", str(200 * pipeline), "-P", str(pipeline), "-c", "1",
         "HMGET", key, "e", "c", "v"],
        check=True, capture_output=True, text=True).stdout
    # "latency summary (msec):" then a header line and a values line
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if "latency summary" in line:
            header = lines[i + 1].split()
            values = [float(v) for v in lines[i + 2].split()]
            row = dict(zip(header, values))
            return row["p50"] * 1000, row["p99"] * 1000
    raise RuntimeError(out)


def main():
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["cargo", "bench", "-q", "--features", "redis", "--bench", "online_compare"],
            cwd=ROOT, check=True, capture_output=True, text=True,
            env={**__import__("os").environ, "MLOPS_BENCH_REDIS_URL": f"redis://127.0.0.1:{port}"}).stdout
        results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        key = subprocess.run(["redis-cli", "-p", str(port), "RANDOMKEY"],
                             check=True, capture_output=True, text=True).stdout.strip()
        floors = {1: floor(port, key, 2), 100: floor(port, key, 200)}
    finally:
        server.terminate()
    print(f"{'store':<8}{'entities':>9}{'p50 us':>10}{'p99 us':>10}   redis-benchmark floor p50/p99 us, ratio")
    for r in results:
        line = f"{r['store']:<8}{r['entities']:>9}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}"
        if r["store"] == "redis":
            f50, f99 = floors[r["entities"]]
            line += f"   {f50:.0f} / {f99:.0f}, {r['p50_us'] / f50:.2f}x / {r['p99_us'] / f99:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
