#!/usr/bin/env python3
"""The `mlops` binary as deployed, side by side with the in-process server and a
do-nothing axum handler (the floor), on one pinned core.

    python3 benches/serve_binary.py [--seconds 8] [--rounds 3] [--connections 8]
                                    [--binary PATH] [--compare PATH] [--config PATH]

The model is the serving benchmark's (`cargo bench --bench serve_compare`: a
20->64->64->1 MLP on 20 features, written to a file registry under its export
directory, MLOPS_SERVE_EXPORT, default /tmp/mlops-serve-bench). That process also
serves the same model in process (no key, `inline_max_rows = 64`, mimalloc) and
the floor: an axum handler returning the answer as a fixed body.

--binary and --compare take prebuilt executables (the `mlops` binary and the
serve_compare bench) instead of building them; --config another config to run the
binary from, in place of the shipped one (the same replacements are made). The binary runs as
deploy/k8s/base/deployment.yaml runs it (`serve --config ... --log-format json`),
from deploy/k8s/base/mlops.toml as it is, with only the storage root, the bind address
and the secrets directory pointed at local ones: both API keys on (every request
carries the infer key) and /metrics scraped with the metrics key once a second
while it is measured. It is started under `taskset` on the server core, so its
runtime is sized to the one core it has, as in a pod with a one-CPU limit; the
serve_compare process runs one runtime worker (TOKIO_WORKER_THREADS=1) and is
pinned to the same core once it has started. One wrk thread runs on the other
core, so the client never takes the server's core.

Each round measures the three servers in turn (floor, in-process, binary), each
timed run after an untimed 2 s one; the table gives the median over rounds of
req/s, p50 and p99, and each server's share of the floor is the median of the
per-round ratios. Every answer is checked (non-2xx counted) and the binary's
answer is compared with the in-process one before timing.
"""
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import pin, run_wrk  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPORT = pathlib.Path(os.environ.get("MLOPS_SERVE_EXPORT", "/tmp/mlops-serve-bench"))
DEPLOYED = ROOT / "deploy" / "k8s" / "base" / "mlops.toml"
WARM_UP_SECONDS = 2
INFER_KEY = "bench-infer-key-0123456789abcdef"
METRICS_KEY = "bench-metrics-key-0123456789abcdef"

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
wrk.body = io.open("{body}"):read("*a")
"""


def arg(name, default, kind=int):
    return kind(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def wait_listening(process, timeout=60):
    """The address the binary prints on stdout once it serves."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise SystemExit(f"mlops serve exited with {process.returncode}")
            continue
        m = re.match(r"listening on (http://\S+)", line)
        if m:
            return m.group(1)
    raise SystemExit("mlops serve never printed its address")


def deployed_config(port, secrets, template):
    """`template` (deploy/k8s/base/mlops.toml) with only the bind address and the
    secrets directory replaced (the storage root comes from MLOPS_STORAGE_ROOT, as there)."""
    text = template.read_text()
    bound = re.sub(r'(?m)^bind = ".*"$', f'bind = "127.0.0.1:{port}"', text)
    if bound == text:
        raise SystemExit(f"{template} has no bind line to point at a local port")
    return bound.replace("/run/secrets/mlops", str(secrets))


class Scraper(threading.Thread):
    """GETs /metrics with the metrics key once a second, as Prometheus would."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stop, self.scrapes, self.last = url, threading.Event(), 0, ""

    def run(self):
        while not self.stop.wait(1.0):
            self.last = get(self.url, METRICS_KEY)
            self.scrapes += 1


def main():
    seconds = arg("--seconds", 8)
    rounds = arg("--rounds", 3)
    connections = arg("--connections", 8)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or not shutil.which("taskset") or not shutil.which("wrk"):
        raise SystemExit("needs two cores, taskset and wrk (apt-get install wrk)")
    server_core, client_core = {cores[0]}, cores[1]
    EXPORT.mkdir(parents=True, exist_ok=True)
    binary = arg("--binary", None, str)
    if binary is None:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "mlops-cli"], cwd=ROOT, check=True)
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        binary = str(target / "release" / "mlops")
    bench_env = {**os.environ, "TOKIO_WORKER_THREADS": "1"}
    compare = arg("--compare", None, str)
    command = [compare] if compare else ["cargo", "bench", "-q", "--bench", "serve_compare", "--"]
    rust = subprocess.Popen([*command, str(EXPORT)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=bench_env)
    line = ""
    while not line.startswith("{"):
        line = rust.stdout.readline()
        if not line and rust.poll() is not None:
            raise SystemExit("the Rust side (cargo bench --bench serve_compare) failed")
    info = json.loads(line)
    pin(info["pid"], server_core)

    secrets = pathlib.Path(tempfile.mkdtemp(prefix="mlops-bench-secrets-"))
    (secrets / "infer-key").write_text(INFER_KEY + "\n")
    (secrets / "metrics-key").write_text(METRICS_KEY + "\n")
    # The shipped config's operators' key: unused here, but the file must exist.
    (secrets / "admin-key").write_text("bench-admin-key-0123456789abcdef\n")
    port = free_port()
    config = secrets / "mlops.toml"
    template = pathlib.Path(arg("--config", str(DEPLOYED), str)).resolve()
    config.write_text(deployed_config(port, secrets, template))
    env = {k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS"}
    env["MLOPS_STORAGE_ROOT"] = f"file://{EXPORT}/store"
    log = open(secrets / "mlops.log", "w")
    served = subprocess.Popen(["taskset", "-c", str(cores[0]), binary, "serve", "--config", str(config),
                               "--log-format", "json"],
                              stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    scraper = None
    try:
        base = wait_listening(served)
        body = (EXPORT / "request.json").read_bytes()
        infer = "/v2/models/fraud/infer"
        deadline = time.time() + 60
        while True:  # listening comes before the model is ready when it is still loading
            try:
                theirs = post(base + infer, body, INFER_KEY)["outputs"][0]["data"][0]
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        ours = post(info["ours"] + infer, body)["outputs"][0]["data"][0]
        assert abs(ours - theirs) < 1e-6, (ours, theirs)
        plain = EXPORT / "wrk-plain.lua"
        plain.write_text(WRK_LUA.format(auth="", body=EXPORT / "request.json"))
        keyed = EXPORT / "wrk-keyed.lua"
        keyed.write_text(WRK_LUA.format(auth=f'wrk.headers["Authorization"] = "Bearer {INFER_KEY}"',
                                        body=EXPORT / "request.json"))
        targets = {
            "axum fixed body (floor)": (info["floor"] + infer, plain),
            "in-process (serve_compare)": (info["ours"] + infer, plain),
            "mlops serve (deployed config)": (base + infer, keyed),
        }
        scraper = Scraper(base + "/metrics")
        scraper.start()
        prefix = ("taskset", "-c", str(client_core))
        results = {name: [] for name in targets}
        for _ in range(rounds):
            for name, (url, script) in targets.items():
                run_wrk(url, connections, WARM_UP_SECONDS, str(script), threads=1, prefix=prefix)
                results[name].append(run_wrk(url, connections, seconds, str(script), threads=1, prefix=prefix))
        scraper.stop.set()
        scraper.join(timeout=10)
        counted = re.search(r'mlops_inference_requests_total\{[^}]*status="200"[^}]*\} (\d+)', get(base + "/metrics",
                                                                                           METRICS_KEY))
    finally:
        if scraper is not None:
            scraper.stop.set()
        served.terminate()
        served.wait(timeout=30)
        log.close()
        rust.stdin.close()
        rust.wait(timeout=30)
        if sys.exc_info()[0] is None:
            shutil.rmtree(secrets, ignore_errors=True)
        else:
            print(f"mlops serve's config and log are in {secrets}", file=sys.stderr)
    floor = [r["rps"] for r in results["axum fixed body (floor)"]]
    print(f"single-row FP32 v2 JSON inference, 20->64->64->1 MLP; server core {cores[0]}, one wrk thread on core"
          f" {client_core}, {connections} connections, {seconds} s per run, median of {rounds} rounds"
          f" (answers agree: {theirs:.6f})")
    print(f"binary: {binary} serve --config <{template}, local bind/storage/secrets>;"
          f" {scraper.scrapes} /metrics scrapes; requests counted with status 200:"
          f" {counted.group(1) if counted else 'none found'}")
    print(f"{'server':<32}{'req/s':>10}{'p50':>10}{'p99':>10}{'non-2xx':>9}{'of floor':>10}   req/s per round")
    for name, runs in results.items():
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        share = statistics.median(r["rps"] / f for r, f in zip(runs, floor))
        each = ", ".join(f"{r['rps']:,.0f}" for r in runs)
        print(f"{name:<32}{med('rps'):>10,.0f}{med('p50_us') / 1000:>8.3f}ms{med('p99_us') / 1000:>8.3f}ms"
              f"{sum(r['non_2xx'] for r in runs):>9}{share:>10.0%}   {each}")
    inproc = results["in-process (serve_compare)"]
    binary_runs = results["mlops serve (deployed config)"]
    ratio = statistics.median(b["rps"] / i["rps"] for b, i in zip(binary_runs, inproc))
    print(f"mlops serve = {ratio:.0%} of the in-process server (median of per-round ratios)")


if __name__ == "__main__":
    main()
