#!/usr/bin/env python3
"""Dependency checks: vulnerabilities, licences, bans and sources (cargo-deny,
configured by deny.toml) against a dated RustSec advisory snapshot.

CI cannot reach the advisory database's git host, so a snapshot of it is provided
next to the checkout (`../shared/advisory-db`, or MLOPS_ADVISORY_DB). cargo-deny
reads databases only as git checkouts at a path it derives from the database URL,
so this script:

1. installs cargo-deny from crates.io when it is missing (reused when present);
2. downloads every crate of Cargo.lock (cargo fetch: cargo-deny runs offline);
3. asks cargo-deny where it expects the default database and puts a throwaway git
   repository there, made from a copy of the snapshot and dated at its date;
4. prints that date and runs `cargo deny --offline check`, whose exit status it
   returns: any vulnerability, unaccepted unmaintained crate, disallowed licence or
   unknown source fails it.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def main() -> int:
    snapshot = Path(os.environ.get("MLOPS_ADVISORY_DB", ROOT.parent / "shared" / "advisory-db"))
    stamp = snapshot / "SNAPSHOT"
    if not stamp.is_file():
        print(f"audit: no advisory snapshot at {snapshot} (set MLOPS_ADVISORY_DB)", file=sys.stderr)
        return 2
    commit, date = stamp.read_text().split()[:2]

    if shutil.which("cargo-deny") is None:
        run(["cargo", "install", "--locked", "cargo-deny"])
    run(["cargo", "fetch", "--locked"], stdout=subprocess.DEVNULL)

    # Where cargo-deny opens the default database (it logs the path at debug level).
    probe = subprocess.run(
        ["cargo", "deny", "--offline", "--log-level", "debug", "check", "advisories"],
        cwd=ROOT, capture_output=True, text=True,
    )
    found = re.search(r"Opening advisory database at '([^']+)'", probe.stderr)
    if not found:
        print(probe.stderr, file=sys.stderr)
        print("audit: cargo-deny did not say where it reads the database", file=sys.stderr)
        return 2
    db = Path(found.group(1))
    if db.exists():
        shutil.rmtree(db)
    shutil.copytree(snapshot, db, ignore=shutil.ignore_patterns(".git"))
    dated = {**os.environ, "GIT_AUTHOR_DATE": f"{date}T00:00:00Z", "GIT_COMMITTER_DATE": f"{date}T00:00:00Z"}
    git = ["git", "-C", str(db), "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", f"advisory-db snapshot {commit}"], check=True, env=dated)
    # cargo-deny dates a checkout by the newer of its HEAD commit and HEAD file.
    run(["touch", "-d", date, str(db / ".git" / "HEAD")])

    print(f"audit: RustSec advisory database snapshot {commit[:12]} of {date}")
    return subprocess.run(["cargo", "deny", "--offline", "check"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
