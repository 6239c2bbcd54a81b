#!/usr/bin/env python3
"""Online lookup latency, one run: mlops in-memory and Redis stores, with
redis-benchmark as the floor for the Redis path.

    python3 benches/online_vs_redis.py

Needs redis-server and redis-benchmark (Debian package redis-server). Starts a
server on a free loopback port, runs `cargo bench --features redis --bench
online_compare` against it (5 features from 2 views, 100,000 entities, 20,000
lookups per case after 1,000 warm-up), and the `redis` crate alone doing the same
HMGETs with no mlops code (`redis-crate`: what a store built on that crate cannot
go below). Then the floor: redis-benchmark pipelining HMGET of the same number of
keys (2 for one entity, 200 for 100 entities: one hash per entity and view), twice:
re-reading one hot hash, and reading random ones of the very hashes the store
wrote (renamed to redis-benchmark's `__rand_int__` names once our cases are done),
which is what a lookup of distinct entities makes the server do. Then
Feast's get_online_features with its default SQLite
online store after materialize, on the same shape (benches/feast_engine.py, in its
own virtual environment ~/.cache/mlops-bench/feast-venv, created once; skip it
with --no-feast). Prints p50/p99 in microseconds with the ratio to both Redis
floors and to Feast.

Every client (our bench, redis-benchmark, Feast) runs pinned to core 1 and
redis-server to core 0 (taskset), as a latency-sensitive service would be
deployed: unpinned, the scheduler moves the client between the two cores and each
move costs it its warm L2 cache, which shows at p99. --no-pin runs them unpinned.
"""
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIN = "--no-pin" not in sys.argv


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spread_renames(port):
    """Renames every hash the store wrote (after our cases ran) to `floor:<12
    digits>`, redis-benchmark's `__rand_int__` names, and returns how many there
    are: the floor then reads random keys of the same data in the same keyspace, as
    a lookup does."""
    keys = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", "bench:*"],
                          check=True, capture_output=True, text=True).stdout.split()
    def resp(*args):
        return f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    script = "".join(resp("RENAME", k, f"floor:{i:012d}") for i, k in enumerate(keys))
    out = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=script, check=True,
                         capture_output=True, text=True).stdout
    if f"errors: 0, replies: {len(keys)}" not in out:
        raise RuntimeError(f"renaming the stored hashes for the floor failed: {out}")
    return len(keys)


def floor(port, key, pipeline, keyspace=None):
    """redis-benchmark's p50/p99 in µs for a pipeline of `pipeline` HMGETs of `key`
    (with `keyspace`, `key` holds `__rand_int__`: each command reads a random one)."""
    spread = ["-r", str(keyspace)] if keyspace else []
    out = subprocess.run(
        [*pinned(1, []), "redis-benchmark", "-p", str(port), "-n", str(200 * pipeline), "-P", str(pipeline), "-c", "1",
         *spread, "HMGET", key, "e", "c", "v"],
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


def pinned(core, argv):
    """argv pinned to one core with taskset where there is one (see the docstring)."""
    if PIN and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def main():
    port = free_port()
    # Built first: the timed run below is pinned to one core.
    subprocess.run(["cargo", "bench", "--no-run", "-q", "--features", "redis", "--bench", "online_compare"],
                   cwd=ROOT, check=True)
    server = subprocess.Popen([*pinned(0, []), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(
            pinned(1, ["cargo", "bench", "-q", "--features", "redis", "--bench", "online_compare"]),
            cwd=ROOT, check=True, capture_output=True, text=True,
            env={**__import__("os").environ, "MLOPS_BENCH_REDIS_URL": f"redis://127.0.0.1:{port}"}).stdout
        results = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        key = subprocess.run(["redis-cli", "-p", str(port), "RANDOMKEY"],
                             check=True, capture_output=True, text=True).stdout.strip()
        floors = {1: floor(port, key, 2), 100: floor(port, key, 200)}
        hashes = spread_renames(port)
        spread = {n: floor(port, "floor:__rand_int__", 2 * n, hashes) for n in [1, 100]}
    finally:
        server.terminate()
    feast = None
    if "--no-feast" not in sys.argv:
        out = subprocess.run(pinned(1, [sys.executable, str(ROOT / "benches" / "feast_engine.py"), "online"]),
                             check=True, capture_output=True, text=True).stdout
        feast = [json.loads(line) for line in out.splitlines() if line.startswith("{")][0]
    print(f"{'store':<12}{'entities':>9}{'p50 us':>10}{'p99 us':>10}   redis-benchmark floor p50/p99 us, ratio: "
          "one hot key | random keys")
    for r in results:
        line = f"{r['store']:<12}{r['entities']:>9}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}"
        if r["store"] in ("redis", "redis-crate"):
            for sep, (f50, f99) in (("   ", floors[r["entities"]]), (" | ", spread[r["entities"]])):
                line += f"{sep}{f50:.0f} / {f99:.0f}, {r['p50_us'] / f50:.2f}x / {r['p99_us'] / f99:.2f}x"
        print(line)
    if feast:
        print(f"{feast['engine']}: materialize {feast['materialize_s']:.1f} s")
        for n in [1, 100]:
            f50, f99 = feast[f"p50_us_{n}"], feast[f"p99_us_{n}"]
            print(f"{'feast':<12}{n:>9}{f50:>10.1f}{f99:>10.1f}")
            for r in results:
                if r["entities"] == n:
                    print(f"   {r['store']} vs feast, {n} entities: {f50 / r['p50_us']:.0f}x at p50, "
                          f"{f99 / r['p99_us']:.0f}x at p99")


if __name__ == "__main__":
    main()
