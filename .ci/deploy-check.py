#!/usr/bin/env python3
"""Checks the deployment artifacts without a cluster:

1. every Kustomize overlay under deploy/k8s/overlays renders (`kubectl kustomize`);
2. every rendered manifest validates against the Kubernetes schemas
   (`kubernetes-validate --strict`, from PyPI);
3. the service config the manifests ship (the ConfigMap's mlops.toml) passes
   `mlops check`, with the dev overlay's keys in place of the mounted Secret;
4. the Prometheus alert rules pass `promtool check rules` and their unit tests
   `promtool test rules`. (That every metric the rules and the Grafana dashboard
   use is exported is a test of mlops-cli against a real scrape.)

Run with a Python that has kubernetes-validate (and so PyYAML): `.ci/run` uses
its virtual environment.
"""

import base64
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"


def main() -> int:
    validate = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    problems = 0
    rendered = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for overlay in sorted(p for p in OVERLAYS.iterdir() if p.is_dir()):
            out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                                 timeout=120)
            if out.returncode != 0:
                print(f"deploy: {overlay.name} does not render:\n{out.stderr}")
                problems += 1
                continue
            path = tmp / f"{overlay.name}.yaml"
            path.write_text(out.stdout)
            rendered[overlay.name] = list(yaml.safe_load_all(out.stdout))
            check = subprocess.run([str(validate), "--strict", "--quiet", str(path)], capture_output=True, text=True,
                                   timeout=300)
            if check.returncode != 0:
                print(f"deploy: {overlay.name} fails schema validation:\n{check.stdout}{check.stderr}")
                problems += 1
            else:
                kinds = sorted(d["kind"] for d in rendered[overlay.name])
                print(f"deploy: {overlay.name} renders and validates: {', '.join(kinds)}")

        docs = rendered.get("dev", [])
        config = next((d["data"]["mlops.toml"] for d in docs if d["kind"] == "ConfigMap"), None)
        secret = next((d for d in docs if d["kind"] == "Secret"), None)
        if config is None or secret is None:
            print("deploy: the dev overlay lacks the config map or the keys secret")
            return 1
        keys = tmp / "keys"
        keys.mkdir()
        for name, value in secret.get("data", {}).items():
            (keys / name).write_bytes(base64.b64decode(value))
        for name, value in secret.get("stringData", {}).items():
            (keys / name).write_text(value)
        toml = tmp / "mlops.toml"
        toml.write_text(config.replace("/run/secrets/mlops/", f"{keys}/"))
        env = {**os.environ, "MLOPS_STORAGE_ROOT": "memory://"}
        # The binary the test step built (MLOPS_BIN, as `.ci/run` sets it), so no
        # second build with another feature set; else cargo builds it.
        binary = os.environ.get("MLOPS_BIN")
        command = [binary] if binary else ["cargo", "run", "-q", "-p", "mlops-cli", "--"]
        check = subprocess.run([*command, "check", "--config", str(toml)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if check.returncode != 0:
            print(f"deploy: the shipped mlops.toml fails `mlops check`:\n{check.stderr}")
            problems += 1
        else:
            print(f"deploy: the shipped mlops.toml passes `mlops check`: {check.stdout.strip()}")
    rules = ROOT / "deploy" / "prometheus"
    promtool = os.environ.get("MLOPS_TEST_PROMTOOL", "promtool")
    for args in (["check", "rules", str(rules / "alerts.yaml")], ["test", "rules", str(rules / "alerts_test.yaml")]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            print(f"deploy: promtool {' '.join(args[:2])} failed:\n{out.stdout}{out.stderr}")
            problems += 1
        else:
            print(f"deploy: promtool {' '.join(args[:2])}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
