#!/usr/bin/env python3
"""Training, side by side in one run: mlops (burn) vs PyTorch on CPU vs
scikit-learn, on the same generated fraud-like data and the same split.

    python3 benches/train_vs_torch.py [--rows 1000000] [--epochs 5]

Creates (once) ~/.cache/mlops-bench/train-venv with numpy, pyarrow, scikit-learn and
torch (from PyPI). Generates with a fixed seed (function `generate`, below) an
imbalanced binary dataset: 20 numeric features x0..x19 (float32), 3 categorical
features cat0..cat2 (8, 50 and 3 levels), label is_fraud (about 2% positives)
from a known logistic model with interactions, and a fixed 80/20 train/valid
split column. Reports:

- throughput: one epoch of a 20->64->64->1 ReLU MLP (AdamW, batch 1024, shuffled)
  on the 20 numeric features, rows per second, mlops vs PyTorch (default thread
  count; scikit-learn's MLPClassifier with the same settings if torch is missing);
- quality: ROC AUC on the valid split, mlops MLP (64x64, all 23 features) and
  linear model after --epochs epochs, vs scikit-learn LogisticRegression and
  HistGradientBoostingClassifier fitted on the train split;
- inference: batch rows per second over the valid split of the 20-feature MLP
  (20->64->64->1), mlops (Arrow in, standardization included) beside PyTorch's
  forward pass over the same rows and columns; the 23-feature model's rate; and
  1- and 64-row
  latency through the Predictor trait.

With MLOPS_DEVICE=wgpu or cuda (and the matching cargo feature passed through
MLOPS_FEATURES, e.g. MLOPS_FEATURES=cuda) the mlops side runs on that GPU.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = pathlib.Path(os.environ.get("MLOPS_TRAIN_DATA", "/tmp/mlops-train-bench"))


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("train-venv", ["numpy", "pyarrow", "scikit-learn", "torch"], __file__)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

NUMERIC = [f"x{i}" for i in range(20)]
CATEGORICAL = {"cat0": 8, "cat1": 50, "cat2": 3}


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def generate(rows):
    """The committed generator: seed 2026, known signal."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"fraud-{rows}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(2026)
    x = rng.normal(0, 1, (rows, 20)).astype(np.float32)
    cats = {name: rng.integers(0, k, rows) for name, k in CATEGORICAL.items()}
    effect1 = rng.normal(0, 0.8, CATEGORICAL["cat1"])
    logit = (
        -5.0
        + 1.2 * x[:, 0] - 0.9 * x[:, 1] + 0.7 * x[:, 2] + 0.5 * x[:, 3]
        + 0.8 * x[:, 4] * x[:, 5]              # interaction
        + 0.6 * (x[:, 6] ** 2 - 1)             # non-linearity
        + 0.4 * np.abs(x[:, 7])
        + np.where(cats["cat0"] == 3, 1.0, 0.0) + effect1[cats["cat1"]] - 0.5 * cats["cat2"]
    )
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols = {name: x[:, i] for i, name in enumerate(NUMERIC)}
    for name, k in CATEGORICAL.items():
        cols[name] = pa.array([f"{name}_{v}" for v in cats[name]])
    cols["is_fraud"] = y
    cols["split"] = np.where(rng.random(rows) < 0.8, "train", "valid")
    pq.write_table(pa.table(cols), path)
    return path


def load(path):
    t = pq.read_table(path)
    split = t.column("split").to_numpy(zero_copy_only=False)
    return t, split == "train", split == "valid"


def run_torch(path):
    t, train, valid = load(path)
    try:
        import torch
    except ImportError:
        return run_sklearn_mlp(path)
    features = np.stack([t.column(c).to_numpy() for c in NUMERIC], axis=1)
    x = torch.from_numpy(features[train])
    mean, std = x.mean(0), x.std(0)
    x = (x - mean) / std
    y = torch.from_numpy(t.column("is_fraud").to_numpy()[train].astype(np.float32)).unsqueeze(1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = x.shape[0]
    start = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(0, n, 1024):
        idx = perm[i:i + 1024]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        loss.item()  # as mlops reads each batch's loss
    seconds = time.perf_counter() - start
    engine = f"pytorch {torch.__version__} cpu ({torch.get_num_threads()} threads)"
    # Batch inference over the validation split, as the mlops side measures it
    # (the best of 5 passes after a warm-up pass; probabilities out). Its input
    # is the 20 numeric columns already standardized: mlops reads them from
    # Arrow and standardizes them inside its pass.
    xv = (torch.from_numpy(features[valid]) - mean) / std
    model.eval()
    with torch.no_grad():
        torch.sigmoid(model(xv))
        inference = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.sigmoid(model(xv))
            inference = min(inference, time.perf_counter() - start)
    return [{"what": "epoch", "engine": engine, "rows_per_second": n / seconds, "rows": n},
            {"what": "torch_inference", "engine": engine, "batch_rows_per_second": len(xv) / inference,
             "rows": len(xv)}]


def run_sklearn_mlp(path):
    from sklearn.neural_network import MLPClassifier
    import sklearn
    t, train, _ = load(path)
    x = np.stack([t.column(c).to_numpy() for c in NUMERIC], axis=1)[train]
    y = t.column("is_fraud").to_numpy()[train]
    m = MLPClassifier(hidden_layer_sizes=(64, 64), batch_size=1024, max_iter=1, alpha=1e-4, random_state=1)
    start = time.perf_counter()
    m.fit(x, y)
    return {"what": "epoch", "engine": f"sklearn {sklearn.__version__} MLPClassifier (torch missing)",
            "rows_per_second": len(y) / (time.perf_counter() - start), "rows": len(y)}


def run_sklearn(path):
    import sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
    t, train, valid = load(path)
    df = {c: t.column(c).to_numpy(zero_copy_only=False) for c in NUMERIC + list(CATEGORICAL)}
    import numpy.lib.recfunctions  # noqa: F401
    cols = NUMERIC + list(CATEGORICAL)
    x = np.empty((t.num_rows, len(cols)), dtype=object)
    for i, c in enumerate(cols):
        x[:, i] = df[c]
    y = t.column("is_fraud").to_numpy()
    num_idx = list(range(20))
    cat_idx = list(range(20, 23))
    out = []
    lr = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), num_idx), ("cat", OneHotEncoder(handle_unknown="ignore"), cat_idx)]),
        LogisticRegression(max_iter=1000),
    )
    hgb = make_pipeline(
        ColumnTransformer([("num", "passthrough", num_idx),
                           ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), cat_idx)]),
        HistGradientBoostingClassifier(categorical_features=[20, 21, 22], random_state=1),
    )
    for name, model in [("LogisticRegression", lr), ("HistGradientBoosting", hgb)]:
        start = time.perf_counter()
        model.fit(x[train], y[train])
        seconds = time.perf_counter() - start
        p = model.predict_proba(x[valid])[:, 1]
        out.append({"what": "auc", "engine": f"sklearn {sklearn.__version__} {name}",
                    "roc_auc": roc_auc_score(y[valid], p), "average_precision": average_precision_score(y[valid], p),
                    "fit_seconds": seconds})
    return out


def main():
    if "--engine" in sys.argv:
        engine = sys.argv[sys.argv.index("--engine") + 1]
        path = pathlib.Path(sys.argv[sys.argv.index("--data") + 1])
        result = {"torch": run_torch, "sklearn": run_sklearn}[engine](path)
        for r in result if isinstance(result, list) else [result]:
            print(json.dumps(r))
        return
    rows, epochs = arg("--rows", 1_000_000), arg("--epochs", 5)
    path = generate(rows)
    features = os.environ.get("MLOPS_FEATURES")
    cmd = ["cargo", "bench", "-q", "--bench", "train_compare"]
    if features:
        cmd += ["--features", features]
    out = subprocess.run(cmd + ["--", str(path), str(epochs)], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for engine in ["torch", "sklearn"]:
        out = subprocess.run([sys.executable, __file__, "--engine", engine, "--data", str(path)], check=True,
                             capture_output=True, text=True).stdout
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    t = pq.read_table(path, columns=["is_fraud"]).column(0).to_numpy()
    print(f"{rows:,} rows, {t.mean():.2%} positive; 80/20 train/valid split")
    print("\none epoch, 20->64->64->1 MLP, batch 1024, numeric features")
    epoch = [r for r in results if r["what"] == "epoch"]
    for r in epoch:
        print(f"  {r['engine']:<48}{r['rows_per_second']:>12,.0f} rows/s")
    if len(epoch) == 2:
        print(f"  mlops / peer throughput: {epoch[0]['rows_per_second'] / epoch[1]['rows_per_second']:.2f}")
    print(f"\nvalidation ROC AUC (mlops after {epochs} epochs)")
    for r in results:
        if r["what"] == "auc":
            print(f"  {r['engine']:<48}{r['roc_auc']:>8.4f} AUC {r['average_precision']:>8.4f} AP"
                  f"{r['fit_seconds']:>8.1f} s fit")
    torch_inference = [r for r in results if r["what"] == "torch_inference"]
    numeric_inference = [r for r in results if r["what"] == "numeric_inference"]
    print("\nbatch inference over the valid split, 20 numeric columns, 20->64->64->1 MLP")
    for r in numeric_inference + torch_inference:
        print(f"  {r['engine']:<48}{r['batch_rows_per_second']:>12,.0f} rows/s over {r['rows']:,} rows")
    if numeric_inference and torch_inference:
        ratio = numeric_inference[0]["batch_rows_per_second"] / torch_inference[0]["batch_rows_per_second"]
        print(f"  mlops / pytorch: {ratio:.2f} (mlops reads Arrow and standardizes inside its pass)")
    for r in results:
        if r["what"] == "inference":
            lat = r["latency"]
            print(f"\ninference ({r['engine']}): {r['batch_rows_per_second']:,.0f} rows/s over {r['rows']:,} rows;"
                  f" Predictor::predict 1 row p50 {lat['1_row_p50_us']:.0f} us p99 {lat['1_row_p99_us']:.0f} us,"
                  f" 64 rows p50 {lat['64_row_p50_us']:.0f} us p99 {lat['64_row_p99_us']:.0f} us")


if __name__ == "__main__":
    main()
