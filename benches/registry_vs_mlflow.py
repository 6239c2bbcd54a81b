#!/usr/bin/env python3
"""Times mlops's model registry and MLflow's (SQLite backend), same work, one run.

    python3 benches/registry_vs_mlflow.py

Creates (once) a virtual environment outside the repository,
~/.cache/mlops-bench/mlflow-venv, with mlflow. Work, on local disk in a temporary
directory for each side:
  register_100_versions  100 versions of a 100 KB model. MLflow: a run that logs the
                         file as an artifact, then create_model_version from it (its
                         registry keeps artifacts through runs). mlops: register().
  load_latest_by_alias   resolve alias "champion" and read the artifact's bytes
                         (best of 50). MLflow: download_artifacts("models:/name@champion").
  list_versions          all 100 versions with their metadata (best of 5).
                         MLflow: search_model_versions.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("mlflow-venv", ["mlflow"], __file__)

import logging  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.ERROR)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

VERSIONS = 100
MODEL_BYTES = 100 * 1024


def mlflow_side(d):
    mlflow.set_tracking_uri(f"sqlite:///{d}/mlflow.db")
    client = MlflowClient()
    exp = client.create_experiment("bench", artifact_location=f"file://{d}/artifacts")
    name = "bench-model"
    client.create_registered_model(name)
    model_file = pathlib.Path(d) / "model.bin"
    results = {}
    start = time.perf_counter()
    last = None
    for i in range(VERSIONS):
        data = bytearray(MODEL_BYTES)
        data[:8] = i.to_bytes(8, "little")
        model_file.write_bytes(bytes(data))
        run = client.create_run(exp)
        client.log_artifact(run.info.run_id, str(model_file), artifact_path="model")
        client.log_metric(run.info.run_id, "roc_auc", 0.8 + i / 1000)
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        last = mv.version
    results["register_100_versions"] = time.perf_counter() - start

    client.set_registered_model_alias(name, "champion", last)
    best = float("inf")
    for _ in range(50):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            path = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=out)
            size = (pathlib.Path(path) / "model.bin").stat().st_size
            best = min(best, time.perf_counter() - start)
            assert size == MODEL_BYTES
    results["load_latest_by_alias"] = best

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        versions = client.search_model_versions(f"name='{name}'", max_results=1000)
        best = min(best, time.perf_counter() - start)
        assert len(versions) == VERSIONS, len(versions)
    results["list_versions"] = best
    return results


def main():
    subprocess.run(["cargo", "build", "-q", "--release", "--bench", "registry_compare"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="mlops-registry-bench-") as d:
        ours = {}
        out = subprocess.run(
            ["cargo", "bench", "-q", "--bench", "registry_compare", "--", f"{d}/mlops"],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                ours[rec["op"]] = rec["seconds"]
        theirs = mlflow_side(d)
    print(f"mlflow {mlflow.__version__} (SQLite backend, local artifacts)")
    print(f"{'operation':<24}{'mlops (ms)':>12}{'mlflow (ms)':>12}{'speed-up':>10}")
    for op, t in theirs.items():
        print(f"{op:<24}{ours[op] * 1e3:>12.3f}{t * 1e3:>12.3f}{t / ours[op]:>9.1f}x")


if __name__ == "__main__":
    main()
