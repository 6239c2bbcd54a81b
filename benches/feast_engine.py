#!/usr/bin/env python3
"""Feast as a peer in the feature-store benchmarks; called by
`benches/pit_vs_duckdb.py --feast` and `benches/online_vs_redis.py --feast`,
not on its own.

    python3 benches/feast_engine.py offline DATA_DIR
    python3 benches/feast_engine.py online

Creates (once) ~/.cache/mlops-bench/feast-venv with feast from PyPI and re-runs
itself there. Prints one JSON line of results.

offline: Feast's `get_historical_features` with its local file offline store over
the data files that the mlops offline store wrote under DATA_DIR/store (the same
files every other engine reads), 1-day TTL, entity rows from
DATA_DIR/entities.parquet; best of 3, peak resident memory and a checksum in the
format of pit_vs_duckdb.py.

online: Feast's `get_online_features` with its default SQLite online store after
`materialize`, on the same shape as benches/online_compare.rs: 100,000 entities,
5 float features from 2 views (card: f0..f2, merchant: g0..g1), keyed by card_id;
p50/p99 of one call for 1 and 100 entities over the same key sequence.
"""
import datetime
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time



sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_env import ensure_venv  # noqa: E402

ensure_venv("feast-venv", ["feast"], __file__)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import feast  # noqa: E402
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType  # noqa: E402
from feast.repo_config import RepoConfig  # noqa: E402
from feast.types import Float64  # noqa: E402

FEATURES = [f"f{i}" for i in range(5)]


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_at(directory):
    config = RepoConfig(
        project="bench",
        registry=str(directory / "registry.db"),
        provider="local",
        offline_store={"type": "file"},
        online_store={"type": "sqlite", "path": str(directory / "online.db")},
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)


def offline(data):
    work = pathlib.Path(tempfile.mkdtemp(prefix="feast-pit-"))
    # The store's data files, as one Parquet file set Feast's file source reads
    # (it does not take a Hive-partitioned directory with its partition column).
    files = sorted((data / "store/features/views/card/data").glob("*/*.parquet"))
    source_dir = work / "card"
    source_dir.mkdir()
    for i, f in enumerate(files):
        os.symlink(f, source_dir / f"part-{i:05}.parquet")
    store = store_at(work)
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="card",
        entities=[card],
        ttl=datetime.timedelta(days=1),
        schema=[Field(name=f, dtype=Float64) for f in FEATURES],
        source=FileSource(path=str(source_dir), timestamp_field="event_ts"),
    )
    store.apply([card, view])
    entity_df = pq.read_table(data / "entities.parquet").to_pandas()
    best = float("inf")
    first_peak = None
    out = None
    for _ in range(3):
        start = time.perf_counter()
        out = store.get_historical_features(
            entity_df=entity_df, features=[f"card:{f}" for f in FEATURES]
        ).to_df()
        best = min(best, time.perf_counter() - start)
        first_peak = first_peak or peak_mib()
    count = 0
    total = 0.0
    for f in FEATURES:
        col = out[f].to_numpy(dtype=float, na_value=np.nan)
        count += int(np.count_nonzero(~np.isnan(col)))
        total += float(np.nansum(col))
    # Feast's file offline store drops the entity rows without a match (see
    # pit_vs_duckdb.py): the row count is reported next to the checksum.
    return {"engine": "feast " + feast.__version__, "seconds": best, "non_null": count, "sum": total,
            "rows": len(out), "entity_rows": len(entity_df),
            "peak_mib": first_peak, "peak_all_runs_mib": peak_mib()}


ENTITIES = 100_000
ITERATIONS = 2_000


def online():
    work = pathlib.Path(tempfile.mkdtemp(prefix="feast-online-"))
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64)
    views = []
    for name, features in [("card", ["f0", "f1", "f2"]), ("merchant", ["g0", "g1"])]:
        cols = {"card_id": np.arange(ENTITIES, dtype=np.int64),
                "ts": pa.array([now] * ENTITIES, pa.timestamp("us", tz="UTC"))}
        for j, f in enumerate(features):
            cols[f] = (np.arange(ENTITIES) * 7 + j).astype(float)
        path = work / f"{name}.parquet"
        pq.write_table(pa.table(cols), path)
        views.append(FeatureView(
            name=name,
            entities=[card],
            ttl=datetime.timedelta(days=1),
            schema=[Field(name=f, dtype=Float64) for f in features],
            source=FileSource(path=str(path), timestamp_field="ts"),
        ))
    store = store_at(work)
    store.apply([card, *views])
    start = time.perf_counter()
    store.materialize(now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=1))
    materialize_s = time.perf_counter() - start
    refs = ["card:f0", "card:f1", "card:f2", "merchant:g0", "merchant:g1"]
    results = {"engine": "feast " + feast.__version__ + " (sqlite)", "materialize_s": materialize_s}
    for batch in [1, 100]:
        lat = []
        for i in range(ITERATIONS + 100):
            keys = [(i * 7919 + k * 104_729) % ENTITIES for k in range(batch)]
            start = time.perf_counter()
            out = store.get_online_features(features=refs, entity_rows=[{"card_id": k} for k in keys]).to_dict()
            t = (time.perf_counter() - start) * 1e6
            assert out["f0"][0] == keys[0] * 7, (out["f0"][0], keys[0])
            if i >= 100:
                lat.append(t)
        lat.sort()
        results[f"p50_us_{batch}"] = lat[len(lat) // 2]
        results[f"p99_us_{batch}"] = lat[int((len(lat) - 1) * 0.99)]
    return results


def main():
    mode = sys.argv[1]
    if mode == "offline":
        print(json.dumps(offline(pathlib.Path(sys.argv[2]))))
    elif mode == "online":
        print(json.dumps(online()))
    else:
        raise SystemExit(f"unknown mode {mode!r}: offline DATA_DIR | online")


if __name__ == "__main__":
    main()
