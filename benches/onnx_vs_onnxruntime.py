#!/usr/bin/env python3
"""Times the exported ONNX models through mlops's loader and through onnxruntime's
Python API, on the same files and inputs, in one run.

    python3 benches/onnx_vs_onnxruntime.py [MODEL ...]

It creates (once) a virtual environment outside the repository,
~/.cache/mlops-bench/onnx-venv, with onnxruntime and numpy; times onnxruntime
(one thread for intra- and inter-op work, as the Rust side runs one call on one
thread) on each model of mlops-onnx/tests/fixtures for a 1-row request (median
latency of 2,000 calls) and a 1024-row batch (median of 200 calls, as rows/s);
runs the Rust side (`cargo bench --features onnx --bench onnx_compare`, a
release build) on the same inputs (the fixture's probe rows, cycled); and prints
both with the ratio onnxruntime time / mlops time (above 1: mlops is faster).
"""
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "mlops-onnx" / "tests" / "fixtures"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("onnx-venv", ["onnxruntime", "numpy"], __file__)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

MODELS = [a for a in sys.argv[1:] if not a.startswith("-")] or [
    "pipeline_logreg", "random_forest", "gbt_regressor", "xgb_classifier", "lgbm_regressor", "mlp"]


def median(n, fn):
    for _ in range(n // 10):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[n // 2]


def feeds_of(entry, rows):
    feeds = {}
    for name, spec in entry["inputs"].items():
        shape = spec["shape"]
        if spec["dtype"] == "str":
            value = np.array(spec["data"], dtype=object).reshape(shape)
        else:
            value = np.array(spec["data"], dtype=spec["dtype"]).reshape(shape)
        index = np.arange(rows) % shape[0]
        feeds[name] = value[index]
    return feeds


def onnxruntime_times():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    out = {}
    for name in MODELS:
        session = ort.InferenceSession(str(FIXTURES / f"{name}.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        for rows, calls in ((1, 2000), (1024, 200)):
            feeds = feeds_of(expected[name], rows)
            out[(name, rows)] = median(calls, lambda: session.run(None, feeds))
    return out


def mlops_times():
    cmd = ["cargo", "bench", "--features", "onnx", "--bench", "onnx_compare", "--", *MODELS]
    result = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    out = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[(r["model"], r["rows"])] = r["median_us"] / 1e6
    return out


def main():
    theirs = onnxruntime_times()
    ours = mlops_times()
    print(f"onnxruntime {ort.__version__}, one thread each side")
    print("| model | rows | mlops | onnxruntime (Python) | onnxruntime / mlops |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        for rows in (1, 1024):
            a, b = ours[(name, rows)], theirs[(name, rows)]
            if rows == 1:
                cells = f"{a * 1e6:.1f} µs | {b * 1e6:.1f} µs"
            else:
                cells = f"{rows / a / 1e6:.2f} M rows/s | {rows / b / 1e6:.2f} M rows/s"
            print(f"| {name} | {rows} | {cells} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
