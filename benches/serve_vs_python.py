#!/usr/bin/env python3
"""Serving, side by side in one run on loopback with wrk: mlops-serve vs a minimal
axum handler returning a fixed body (the floor) vs KServe's Python model server
serving the same weights.

    python3 benches/serve_vs_python.py [--seconds 10]

Needs `wrk` (Debian package) and cargo. Creates (once)
~/.cache/mlops-bench/serve-venv with kserve, numpy and safetensors from PyPI.
The Rust side (benches/serve_compare.rs) trains the 20->64->64->1 MLP on
generated data, serves it and the floor, and exports the weights (safetensors) and
input standardization; the KServe model loads those and computes the same forward
pass with numpy, and furnace-server (crates.io, benches/furnace) serves them with burn
when it builds here (it takes the 20 values as one [1, 20] input). Every server gets the
same single-row FP32 request (20 inputs of
shape [1], the v2 JSON form; mlops-serve also in the binary tensor extension) at 8 and 64 connections for --seconds each, two wrk
threads, each timed run after a 2 s untimed one. Reports requests per second and p50/p99 latency, and the in-process
`Server::infer` latency for 1- and 64-row requests. The KServe answer is checked
against ours before timing.

The Rust servers (ours and the floor, which share one tokio runtime, and
furnace-server) run with one runtime worker thread (TOKIO_WORKER_THREADS=1), as
KServe runs one worker process: wrk needs about one of the machine's two cores, so
one core is what the server has, and a runtime sized to the cores it has is how a
latency-minded service is deployed. With two workers and wrk's two threads on two
cores the scheduler preempts workers mid-request and every server's p99, the
floor's included, was 1-4 ms from run to run. `--workers N` changes it.

Even so, with wrk's two threads and the server's one on two cores, a request
sometimes waits a scheduler time slice for the core: the p99 of every server, the
do-nothing floor's too, ranged from 0.8 to 2.9 ms over runs on the same code. So
a latency pass follows at 8 connections for mlops-serve and the floor: the
process serving both pinned to one core and a single wrk thread to the other
(taskset), so the client never takes the server's core. --no-pin-latency skips it.

This is the library served in process (`ModelServer` and `http::serve`, no key,
`inline_max_rows = 64`). The `mlops` binary as deployed (its shipped config, API
key and /metrics on) is measured beside the same in-process server and the floor
by benches/serve_binary.py.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The latency pass at 8 connections with server and client on separate cores
# (see the docstring); --no-pin-latency skips it.
PIN_LATENCY = "--no-pin-latency" not in sys.argv
EXPORT = pathlib.Path(os.environ.get("MLOPS_SERVE_EXPORT", "/tmp/mlops-serve-bench"))


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv, pin, run_wrk  # noqa: E402

ensure_venv("serve-venv", ["kserve", "numpy", "safetensors"], __file__)

KSERVE_MODEL = r'''
import json, sys
import numpy as np
from safetensors.numpy import load_file
from kserve import Model, ModelServer, InferRequest, InferResponse, InferOutput

EXPORT = sys.argv.pop(1)

class Mlp(Model):
    def __init__(self, name):
        super().__init__(name)
        w = load_file(f"{EXPORT}/weights.safetensors")
        self.layers = [(w[f"layers.{i}.weight"].T.copy(), w[f"layers.{i}.bias"]) for i in range(3)]
        scaling = json.load(open(f"{EXPORT}/scaling.json"))
        self.names = [s["name"] for s in scaling]
        self.mean = np.array([s["mean"] for s in scaling], dtype=np.float32)
        self.std = np.array([s["std"] for s in scaling], dtype=np.float32)
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        by_name = {i.name: i.as_numpy() for i in payload.inputs}
        x = (np.stack([by_name[n] for n in self.names], axis=1).astype(np.float32) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < 2:
                x = np.maximum(x, 0)
        p = (1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
        out = InferOutput(name="probability", shape=list(p.shape), datatype="FP32")
        out.set_data_from_numpy(p, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")

if __name__ == "__main__":
    ModelServer(workers=1).start([Mlp("fraud")])
'''

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""

WRK_BINARY_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header}"
wrk.body = io.open("{body}", "rb"):read("*a")
"""


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def start_furnace(port):
    """Builds and starts furnace-server on the same weights; (process, None) or (None, why not)."""
    target = os.environ.get("MLOPS_FURNACE_TARGET", "/tmp/mlops-furnace-target")
    build = subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path",
                            str(ROOT / "benches" / "furnace" / "Cargo.toml")],
                           env={**os.environ, "CARGO_TARGET_DIR": target}, capture_output=True, text=True)
    if build.returncode != 0:
        return None, "did not build here: " + build.stderr.strip().splitlines()[-1][:200]
    proc = subprocess.Popen([f"{target}/release/mlops-bench-furnace", str(EXPORT), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, None


# Each timed wrk run follows an untimed one of this length on the same server and
# connection count.
WARM_UP_SECONDS = 2


def main():
    seconds = arg("--seconds", 10)
    # Read by every tokio runtime built with the default worker count (see the docstring).
    os.environ["TOKIO_WORKER_THREADS"] = str(arg("--workers", 1))
    EXPORT.mkdir(parents=True, exist_ok=True)
    rust = subprocess.Popen(["cargo", "bench", "-q", "--bench", "serve_compare", "--", str(EXPORT)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("{"):
        line = rust.stdout.readline()
        if not line and rust.poll() is not None:
            raise SystemExit("the Rust side failed")
    info = json.loads(line)
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(KSERVE_MODEL)
        model_py = f.name
    kserve = subprocess.Popen([sys.executable, model_py, str(EXPORT), "--http_port", str(port), "--enable_grpc", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = {"mlops-serve": info["ours"], "axum fixed body (floor)": info["floor"],
                   "KServe 0.21 Python (numpy)": f"http://127.0.0.1:{port}"}
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        body = (EXPORT / "request.json").read_bytes()
        ours = post(f"{info['ours']}/v2/models/fraud/infer", body)["outputs"][0]["data"][0]
        theirs = post(f"http://127.0.0.1:{port}/v2/models/fraud/infer", body)["outputs"][0]["data"][0]
        assert abs(ours - theirs) < 1e-5, (ours, theirs)
        script = EXPORT / "wrk.lua"
        script.write_text(WRK_LUA.format(body=EXPORT / "request.json"))
        # furnace-server takes the same values as one [1, 20] FP32 input.
        request = json.loads(body)
        values = [t["data"][0] for t in sorted(request["inputs"], key=lambda t: int(t["name"][1:]))]
        packed = json.dumps({"id": "1", "inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32",
                                                     "data": values}]}).encode()
        (EXPORT / "request-furnace.json").write_bytes(packed)
        furnace_port = free_port()
        furnace, furnace_error = start_furnace(furnace_port)
        if furnace is not None:
            wait_ready(f"http://127.0.0.1:{furnace_port}/v2/health/ready")
            answer = post(f"http://127.0.0.1:{furnace_port}/v2/models/fraud/infer", packed)["outputs"][0]["data"][0]
            assert abs(answer - ours) < 1e-5, (answer, ours)
            targets["furnace-server 0.11 (burn)"] = f"http://127.0.0.1:{furnace_port}"
        furnace_script = EXPORT / "wrk-furnace.lua"
        furnace_script.write_text(WRK_LUA.format(body=EXPORT / "request-furnace.json"))
        results = {}
        for name, base in targets.items():
            for c in (8, 64):
                s = furnace_script if name.startswith("furnace") else script
                # A short untimed run first: every server starts its timed run warm.
                run_wrk(f"{base}/v2/models/fraud/infer", c, WARM_UP_SECONDS, str(s))
                results[(name, c)] = run_wrk(f"{base}/v2/models/fraud/infer", c, seconds, str(s))
        binary_script = EXPORT / "wrk-binary.lua"
        binary_script.write_text(WRK_BINARY_LUA.format(body=EXPORT / "request.bin",
                                                       header=(EXPORT / "request.bin.header").read_text()))
        for c in (8, 64):
            run_wrk(f"{info['ours']}/v2/models/fraud/infer", c, WARM_UP_SECONDS, str(binary_script))
            results[("mlops-serve, binary tensors", c)] = run_wrk(f"{info['ours']}/v2/models/fraud/infer", c, seconds,
                                                                 str(binary_script))
        # The latency pass: the process serving ours and the floor pinned to one core
        # and one wrk thread to another, so the client never takes the server's core.
        pinned = {}
        cores = sorted(os.sched_getaffinity(0))
        if PIN_LATENCY and len(cores) >= 2 and shutil.which("taskset"):
            before = os.sched_getaffinity(info["pid"])
            pin(info["pid"], {cores[0]})
            try:
                wrk_on = ("taskset", "-c", str(cores[1]))
                for name in ("mlops-serve", "axum fixed body (floor)"):
                    url = f"{targets[name]}/v2/models/fraud/infer"
                    run_wrk(url, 8, WARM_UP_SECONDS, str(script), threads=1, prefix=wrk_on)
                    pinned[name] = run_wrk(url, 8, seconds, str(script), threads=1, prefix=wrk_on)
            finally:
                pin(info["pid"], before)
    finally:
        kserve.terminate()
        if "furnace" in locals() and furnace is not None:
            furnace.terminate()
        rust.stdin.close()
        rust.wait(timeout=30)
    print(f"single-row FP32 inference, 20->64->64->1 MLP, wrk -t2 -d{seconds}s on loopback,"
          f" {os.environ['TOKIO_WORKER_THREADS']} runtime worker(s) per Rust server"
          f" (answers agree: {ours:.6f} vs {theirs:.6f})")
    print(f"{'server':<30}{'conns':>6}{'req/s':>12}{'p50':>10}{'p99':>10}{'non-2xx':>9}")
    for (name, c), r in results.items():
        print(f"{name:<30}{c:>6}{r['rps']:>12,.0f}{r['p50_us'] / 1000:>8.2f}ms{r['p99_us'] / 1000:>8.2f}ms{r['non_2xx']:>9}")
    if furnace_error:
        print(f"furnace-server: {furnace_error}")
    for c in (8, 64):
        o, f, k = (results[(n, c)]["rps"] for n in list(targets)[:3])
        b = results[("mlops-serve, binary tensors", c)]["rps"]
        print(f"{c} connections: mlops = {o / f:.0%} of the floor ({b / f:.0%} with binary tensors), {o / k:.1f}x KServe")
    for name, r in pinned.items():
        print(f"{name}, 8 connections, pinned (server on one core, one wrk thread on another): {r['rps']:,.0f} req/s,"
              f" p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms")
    lat = info["in_process"]
    print(f"in-process Server::infer: 1 row p50 {lat['1_row_p50_us']:.1f} us p99 {lat['1_row_p99_us']:.1f} us;"
          f" 64 rows p50 {lat['64_row_p50_us']:.1f} us p99 {lat['64_row_p99_us']:.1f} us")


if __name__ == "__main__":
    main()
