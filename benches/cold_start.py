#!/usr/bin/env python3
"""Cold start of the service, side by side: the `mlops` binary serving a model
from a file registry against KServe's Python model server with the same model,
from process start to the first answered inference, and resident memory at idle.
These are what scale-to-zero and serverless platforms pay on every cold start.

    python3 benches/cold_start.py [--runs 5]

The model is the serving benchmark's (a 20->64->64->1 MLP on 20 features, trained
by `cargo bench --bench serve_compare`, which also writes it to a file registry
under its export directory and its weights for KServe). Each server is started
--runs times; the table gives the median and the range. The binary is built
with `cargo build --release -p mlops-cli`; KServe runs from the serving
benchmark's virtual environment (~/.cache/mlops-bench/serve-venv).
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("serve-venv", ["kserve", "numpy", "safetensors"], __file__)

from serve_vs_python import EXPORT, KSERVE_MODEL, ROOT, arg, free_port  # noqa: E402


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def first_answer(url, body, started, process, timeout=120):
    """Seconds from `started` to the first 200 answer of `url`."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    json.loads(r.read())
                    return time.perf_counter() - started
        except Exception:
            time.sleep(0.002)
    raise SystemExit(f"{url} never answered")


def measure(command, url, body, runs):
    starts, memory = [], []
    for _ in range(runs):
        started = time.perf_counter()
        p = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            starts.append(first_answer(url, body, started, p))
            time.sleep(1.0)
            memory.append(resident_mib(p.pid))
        finally:
            p.terminate()
            p.wait(timeout=30)
    return starts, memory


def main():
    runs = arg("--runs", 5)
    EXPORT.mkdir(parents=True, exist_ok=True)
    # The model, its weights and a request, as the serving benchmark makes them.
    rust = subprocess.Popen(["cargo", "bench", "-q", "--bench", "serve_compare", "--", str(EXPORT)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("{"):
        line = rust.stdout.readline()
        if not line and rust.poll() is not None:
            raise SystemExit("the Rust side failed")
    rust.stdin.close()
    rust.wait()
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "mlops-cli"], cwd=ROOT, check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / "mlops"
    body = (EXPORT / "request.json").read_bytes()

    port = free_port()
    config = EXPORT / "mlops.toml"
    config.write_text(f"""
[storage]
root = "file://{EXPORT}/store"
[http]
bind = "127.0.0.1:{port}"
allow_unauthenticated = true
[[deployments]]
name = "fraud"
model = "fraud"
routing = {{ fixed = "@champion" }}
inline_max_rows = 64
""")
    ours = measure([str(binary), "serve", "--config", str(config)],
                   f"http://127.0.0.1:{port}/v2/models/fraud/infer", body, runs)

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(KSERVE_MODEL)
        model_py = f.name
    port = free_port()
    kserve = measure([sys.executable, model_py, str(EXPORT), "--http_port", str(port), "--enable_grpc", "false"],
                     f"http://127.0.0.1:{port}/v2/models/fraud/infer", body, runs)

    print(f"cold start: process start to the first answered inference, {runs} runs; memory 1 s after it")
    print(f"{'server':<28} {'median ms':>10} {'min-max ms':>16} {'idle RSS MiB':>13}")
    for name, (starts, memory) in [("mlops serve (file registry)", ours), ("KServe 0.21 Python (numpy)", kserve)]:
        ms = [s * 1e3 for s in starts]
        print(f"{name:<28} {statistics.median(ms):>10.1f} {min(ms):>7.1f}-{max(ms):<8.1f} "
              f"{statistics.median(memory):>13.1f}")
    o, k = statistics.median(ours[0]), statistics.median(kserve[0])
    print(f"mlops starts {k / o:.1f}x faster and idles in {statistics.median(ours[1]) / statistics.median(kserve[1]):.2f}x "
          f"KServe's memory")


if __name__ == "__main__":
    main()
