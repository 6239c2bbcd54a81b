"""Shared by the benchmark scripts: each peer runs in its own virtual environment
under ~/.cache/mlops-bench, created on first use."""
import os
import pathlib
import re
import subprocess
import sys


def ensure_venv(name, packages, script):
    """Re-runs `script` (with this process's arguments) in the virtual environment
    ~/.cache/mlops-bench/<name>, creating it with `packages` from PyPI when missing
    or when an earlier install did not finish; returns when already running there."""
    venv = pathlib.Path.home() / ".cache" / "mlops-bench" / name
    python = venv / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == venv.resolve():
        return venv
    marker = venv / ".mlops-installed"
    wanted = " ".join(packages)
    if not marker.exists() or marker.read_text() != wanted:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text(wanted)
    os.execv(str(python), [str(python), script, *sys.argv[1:]])


def to_us(v):
    """A wrk duration (`1.23ms`) in microseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1, "ms": 1000, "s": 1e6}[unit]


def run_wrk(url, connections, seconds, script, threads=2, prefix=()):
    """One wrk run (`prefix`, e.g. taskset, before it): requests per second,
    p50 and p99 latency in microseconds, and non-2xx answers."""
    out = subprocess.run([*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          script, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_us(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_us(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_us": p50, "p99_us": p99, "non_2xx": int(errors.group(1)) if errors else 0}


def pin(pid, cpus):
    """Every thread of process `pid` to `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):  # a thread that has just ended
            pass
