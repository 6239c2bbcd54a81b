#!/usr/bin/env python3
"""Point-in-time join, side by side: mlops vs DuckDB's ASOF LEFT JOIN vs polars
join_asof, on the same Parquet files, in one run.

    python3 benches/pit_vs_duckdb.py [--rows 10000000] [--entities-rows 1000000] [--feast]

Creates (once) ~/.cache/mlops-bench/pit-venv with numpy, pyarrow, duckdb and polars.
Generates, with a fixed seed: feature rows for 100,000 entities (5 float features,
event times over 30 days) and entity rows (random entity, random time), written
as Parquet. mlops ingests the feature rows into an offline store once (not timed);
every engine then reads that store's data files
(features/views/card/data/event_date=*/*.parquet) and joins with a 1-day TTL:
the latest feature row with event time <= the entity row's time and >= time - 1 day.
Each engine runs in its own process; the script prints wall time (best of 3), the
peak resident memory of that process after its first join and after all three,
and a checksum (non-null count and sum of all joined values) that must agree.

--feast adds Feast's get_historical_features with its local file offline store
over the same files (benches/feast_engine.py, in its own virtual environment
~/.cache/mlops-bench/feast-venv, created once). Feast's file offline store
returns only the entity rows that found a feature row within the TTL (the others
are dropped instead of getting nulls), so its row count is printed too; the
non-null count and sum must still agree.
"""
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = pathlib.Path(os.environ.get("MLOPS_PIT_DATA", "/tmp/mlops-pit-bench"))


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("pit-venv", ["numpy", "pyarrow", "duckdb", "polars"], __file__)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

FEATURES = [f"f{i}" for i in range(5)]
DAY_US = 86_400_000_000
GLOB = str(DATA / "store/features/views/card/data/*/*.parquet")


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def generate(rows, entity_rows):
    DATA.mkdir(parents=True, exist_ok=True)
    marker = DATA / f"generated-{rows}-{entity_rows}"
    if marker.exists():
        return
    rng = np.random.default_rng(7)
    start = 1_700_000_000 * 1_000_000
    span = 30 * DAY_US
    cols = {
        "card_id": rng.integers(0, 100_000, rows),
        "event_ts": pa.array(start + rng.integers(0, span, rows), pa.timestamp("us", tz="UTC")),
    }
    for f in FEATURES:
        cols[f] = rng.normal(0, 1, rows)
    pq.write_table(pa.table(cols), DATA / "features.parquet")
    ent = {
        "card_id": rng.integers(0, 100_000, entity_rows),
        "event_timestamp": pa.array(start + rng.integers(0, span, entity_rows), pa.timestamp("us", tz="UTC")),
    }
    pq.write_table(pa.table(ent), DATA / "entities.parquet")
    marker.touch()


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checksum(table):
    count = 0
    total = 0.0
    for f in FEATURES:
        col = table.column(f)
        count += len(col) - col.null_count
        total += float(np.nansum(col.to_numpy(zero_copy_only=False).astype(float)))
    return count, total


def run_duckdb():
    import duckdb
    con = duckdb.connect()
    q = f"""
        SELECT e.card_id, e.event_timestamp,
               {", ".join(f"CASE WHEN f.event_ts >= e.event_timestamp - INTERVAL 1 DAY THEN f.{c} END AS {c}" for c in FEATURES)}
        FROM read_parquet('{DATA}/entities.parquet') e
        ASOF LEFT JOIN read_parquet('{GLOB}') f
          ON e.card_id = f.card_id AND e.event_timestamp >= f.event_ts
    """
    best = float("inf")
    first_peak = None
    for _ in range(3):
        start = time.perf_counter()
        cur = con.execute(q)
        table = cur.to_arrow_table() if hasattr(cur, "to_arrow_table") else cur.fetch_arrow_table()
        if hasattr(table, "read_all"):
            table = table.read_all()
        best = min(best, time.perf_counter() - start)
        first_peak = first_peak or peak_mib()
    count, total = checksum(table)
    return {"engine": "duckdb " + duckdb.__version__, "seconds": best, "non_null": count, "sum": total,
            "peak_mib": first_peak, "peak_all_runs_mib": peak_mib()}


def run_polars():
    import polars as pl
    best = float("inf")
    first_peak = None
    for _ in range(3):
        start = time.perf_counter()
        ent = pl.scan_parquet(f"{DATA}/entities.parquet").with_row_index("i").sort("event_timestamp")
        feat = pl.scan_parquet(GLOB).sort("event_ts")
        out = (
            ent.join_asof(feat, left_on="event_timestamp", right_on="event_ts", by="card_id",
                          strategy="backward", tolerance="1d")
            .sort("i")
            .collect()
        )
        best = min(best, time.perf_counter() - start)
        first_peak = first_peak or peak_mib()
    count, total = checksum(out.to_arrow())
    return {"engine": "polars " + pl.__version__, "seconds": best, "non_null": count, "sum": total,
            "peak_mib": first_peak, "peak_all_runs_mib": peak_mib()}


def main():
    if "--engine" in sys.argv:
        engine = sys.argv[sys.argv.index("--engine") + 1]
        print(json.dumps({"duckdb": run_duckdb, "polars": run_polars}[engine]()))
        return
    rows, entity_rows = arg("--rows", 10_000_000), arg("--entities-rows", 1_000_000)
    generate(rows, entity_rows)
    results = []
    out = subprocess.run(["cargo", "bench", "-q", "--bench", "pit_compare", "--", str(DATA)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for engine in ["duckdb", "polars"]:
        out = subprocess.run([sys.executable, __file__, "--engine", engine], check=True,
                             capture_output=True, text=True).stdout
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if "--feast" in sys.argv:
        out = subprocess.run([sys.executable, str(ROOT / "benches" / "feast_engine.py"), "offline", str(DATA)],
                             check=True, capture_output=True, text=True).stdout
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    print(f"{rows:,} feature rows (100,000 entities, 5 features), {entity_rows:,} entity rows, TTL 1 day")
    print("peak: resident memory of the engine's process after its first join; all runs: after three")
    print(f"{'engine':<18}{'time (s)':>10}{'peak MiB':>10}{'all runs':>10}{'non-null':>12}{'sum':>16}{'rows':>12}")
    for r in results:
        print(f"{r['engine']:<18}{r['seconds']:>10.3f}{r['peak_mib']:>10.0f}{r['peak_all_runs_mib']:>10.0f}"
              f"{r['non_null']:>12}{r['sum']:>16.4f}{r.get('rows', entity_rows):>12,}")
    base = results[0]["seconds"]
    for r in results[1:]:
        print(f"mlops vs {r['engine']}: {r['seconds'] / base:.2f}x faster")


if __name__ == "__main__":
    main()
