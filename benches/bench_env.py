"""Shared by the benchmark scripts: each peer runs in its own virtual environment
under ~/.cache/mlops-bench, created on first use."""
import os
import pathlib
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
