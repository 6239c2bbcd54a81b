#!/usr/bin/env python3
"""Times mlops's drift statistics and scipy's on the same data, in one run.

    python3 benches/drift_vs_scipy.py [--repeats N]

It creates (once) a virtual environment outside the repository,
~/.cache/mlops-bench/drift-venv, with numpy and scipy; writes the data to a
temporary directory; times scipy there; runs the Rust side
(`cargo bench --bench drift_compare -- DIR`, a release build); checks that both
computed the same values; and prints the ratio scipy time / mlops time.

Work measured (best of N wall times each, data generated once with a fixed seed):
  ks_2samp         two 1,000,000-value float64 columns
  wasserstein      the same columns
  psi              the same columns, 10 reference quantile bins (numpy)
  chi2_contingency 1,000,000 + 1,000,000 rows of 50 category codes, counted then tested
  table            100,000 rows x 20 columns (15 float, 5 string), per column the
                   method Evidently picks for that size (normed Wasserstein,
                   Jensen-Shannon), fit + detect
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

ensure_venv("drift-venv", ["numpy", "scipy"], __file__)

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.spatial.distance import jensenshannon  # noqa: E402
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance  # noqa: E402

repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 5


def best(fn):
    t = float("inf")
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - start)
    return t, out


def psi_numpy(ref, cur, bins=10, eps=1e-4):
    edges = np.unique(np.quantile(ref, np.arange(1, bins) / bins))
    rc = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=len(edges) + 1)
    cc = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=len(edges) + 1)
    rp = np.maximum(rc / ref.size, eps)
    cp = np.maximum(cc / cur.size, eps)
    return float(np.sum((cp - rp) * np.log(cp / rp)))


def table_scipy(ref_num, cur_num, ref_cat, cur_cat):
    drifted = 0
    for r, c in zip(ref_num, cur_num):
        if wasserstein_distance(r, c) / np.std(r) >= 0.1:
            drifted += 1
    for r, c in zip(ref_cat, cur_cat):
        keys_r, counts_r = np.unique(r, return_counts=True)
        keys_c, counts_c = np.unique(c, return_counts=True)
        keys = np.union1d(keys_r, keys_c)
        p = np.zeros(len(keys))
        q = np.zeros(len(keys))
        p[np.searchsorted(keys, keys_r)] = counts_r
        q[np.searchsorted(keys, keys_c)] = counts_c
        if jensenshannon(p, q, base=2) >= 0.1:
            drifted += 1
    return drifted / (len(ref_num) + len(ref_cat))


def main():
    rng = np.random.default_rng(42)
    n = 1_000_000
    with tempfile.TemporaryDirectory(prefix="mlops-drift-bench-") as d:
        d = pathlib.Path(d)
        a = rng.normal(0.0, 1.0, n)
        b = rng.normal(0.002, 1.0, n)
        a.astype("<f8").tofile(d / "ks_ref.f64")
        b.astype("<f8").tofile(d / "ks_cur.f64")
        probs = np.linspace(1.0, 2.0, 50)
        cr = rng.choice(50, n, p=probs / probs.sum())
        probs2 = probs * np.linspace(1.0, 1.02, 50)
        cc = rng.choice(50, n, p=probs2 / probs2.sum())
        cr.astype("<i8").tofile(d / "cat_ref.i64")
        cc.astype("<i8").tofile(d / "cat_cur.i64")
        rows = 100_000
        ref_num, cur_num, ref_cat, cur_cat = [], [], [], []
        for j in range(15):
            r = rng.normal(j, 1.0 + j / 10, rows)
            c = rng.normal(j + (0.3 if j % 5 == 0 else 0.0), 1.0 + j / 10, rows)
            r.astype("<f8").tofile(d / f"table_ref_num{j}.f64")
            c.astype("<f8").tofile(d / f"table_cur_num{j}.f64")
            ref_num.append(r)
            cur_num.append(c)
        for j in range(5):
            k = 10 + 20 * j
            pr = np.linspace(1.0, 3.0, k)
            pc = pr[::-1] if j == 0 else pr
            r = rng.choice(k, rows, p=pr / pr.sum())
            c = rng.choice(k, rows, p=pc / pc.sum())
            r.astype("<i8").tofile(d / f"table_ref_cat{j}.i64")
            c.astype("<i8").tofile(d / f"table_cur_cat{j}.i64")
            ref_cat.append(np.array([f"cat{x}" for x in r], dtype=object))
            cur_cat.append(np.array([f"cat{x}" for x in c], dtype=object))

        scipy_results = {}
        scipy_results["ks_2samp"] = best(lambda: ks_2samp(a, b).pvalue)
        scipy_results["wasserstein"] = best(lambda: wasserstein_distance(a, b))
        scipy_results["psi"] = best(lambda: psi_numpy(a, b))

        def chi():
            t = np.array([np.bincount(cr, minlength=50), np.bincount(cc, minlength=50)])
            return chi2_contingency(t)[1]

        scipy_results["chi2_contingency"] = best(chi)
        scipy_results["table_fit_and_detect"] = best(
            lambda: table_scipy(ref_num, cur_num, ref_cat, cur_cat))

        cmd = ["cargo", "bench", "-q", "--bench", "drift_compare", "--", str(d)]
        out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        ours = {}
        for line in out.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                ours[rec["op"]] = (rec["seconds"], rec["result"])

    print(f"scipy {scipy.__version__}, numpy {np.__version__}; best of {repeats}")
    print(f"{'operation':<24}{'mlops (s)':>12}{'scipy (s)':>12}{'speed-up':>10}  agreement")
    for op, (ts, rs) in scipy_results.items():
        to, ro = ours[op]
        if op == "table_fit_and_detect":
            agree = f"share drifted {ro:.3f} vs {rs:.3f}"
        else:
            rel = abs(ro - rs) / max(abs(rs), 1e-300)
            agree = f"relative difference {rel:.1e}"
        print(f"{op:<24}{to:>12.4f}{ts:>12.4f}{ts / to:>9.1f}x  {agree}")
    if "table_detect_prefitted" in ours:
        t, r = ours["table_detect_prefitted"]
        print(f"{'table_detect_prefitted':<24}{t:>12.4f}{'':>12}{'':>10}  (reference fitted once, as in serving)")


if __name__ == "__main__":
    main()
