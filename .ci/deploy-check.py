#!/usr/bin/env python3
"""Checks the deployment artifacts without a cluster:

1. every Kustomize overlay under deploy/k8s/overlays renders (`kubectl kustomize`),
   and so does the production overlay with each component of deploy/k8s/components
   in its `components:` (the request-rate HPA's metric is one
   deploy/prometheus/adapter-rules.yaml makes; the CronJobs of the retrain and
   materialize components get the server's storage root and image);
2. every rendered manifest validates against the Kubernetes schemas
   (`kubernetes-validate --strict`, from PyPI);
3. the service config the manifests ship (the ConfigMap's mlops.toml) passes
   `mlops check`, with the dev overlay's keys in place of the mounted Secret, and
   so do the configs components add (retrain.toml, materialize.toml);
4. each rendered overlay is safe to run: no replica count fighting the HPA, no
   service-account token, a startupProbe, a preStop delay, a PDB that lets a
   single replica be drained, a NetworkPolicy, a termination grace period
   longer than preStop plus draining, and init containers of the same image
   as locked down as the server (.ci/deploy-smoke.py then runs each overlay);
5. the Prometheus alert rules pass `promtool check rules` and their unit tests
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
COMPONENTS = ROOT / "deploy" / "k8s" / "components"


def duration_seconds(text: str) -> float:
    """A humantime duration of the config ("12s", "500ms", "1m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"not a duration: {text!r}")


def operational_problems(docs: list) -> list:
    """What would make a rendered overlay misbehave on a real cluster."""
    out = []
    kinds = {d["kind"]: d for d in docs}
    deployment = kinds.get("Deployment")
    if deployment is None:
        return ["no Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if "HorizontalPodAutoscaler" in kinds and "replicas" in deployment["spec"]:
        out.append("the Deployment sets replicas while an HPA owns the count (each apply resets it)")
    if pod.get("automountServiceAccountToken") is not False:
        out.append("the pod mounts a service-account token it never uses")
    if "startupProbe" not in container:
        out.append("no startupProbe: a model slower to load than the liveness window is killed")
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if not pre_stop:
        out.append("no preStop delay: SIGTERM closes the port while the Service still routes to it")
    # Init containers (the dev overlay's seeding) run as locked down as the server.
    for c in [container, *pod.get("initContainers", [])]:
        security = c.get("securityContext", {})
        if (security.get("readOnlyRootFilesystem") is not True or security.get("allowPrivilegeEscalation") is not False
                or "ALL" not in security.get("capabilities", {}).get("drop", [])):
            out.append(f"container {c['name']}: not read-only, unprivileged and without capabilities")
        if c.get("image") != container.get("image"):
            out.append(f"container {c['name']}: image {c.get('image')} is not the server's {container.get('image')}")
    pdb = kinds.get("PodDisruptionBudget")
    if pdb is not None and "minAvailable" in pdb["spec"]:
        out.append("the PDB's minAvailable blocks node drains when one replica runs")
    if "NetworkPolicy" not in kinds:
        out.append("no NetworkPolicy")
    config = next((d["data"]["mlops.toml"] for d in docs if d["kind"] == "ConfigMap"), "")
    grace = next((line.split("=", 1)[1].strip().strip('"') for line in config.splitlines()
                  if line.strip().startswith("shutdown_grace")), None)
    if grace is not None:
        # Draining, then closing connections, take up to twice the grace each.
        needed = pre_stop.get("sleep", {}).get("seconds", 0) + 2 * duration_seconds(grace)
        allowed = pod.get("terminationGracePeriodSeconds", 30)
        if needed >= allowed:
            out.append(f"preStop + 2 x shutdown_grace = {needed:.0f}s is not under "
                       f"terminationGracePeriodSeconds = {allowed}s")
    out += cronjob_problems(docs, container)
    return out


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def cronjob_problems(docs: list, server: dict) -> list:
    """CronJobs (the components' retrain and materialize runs) use the server's
    storage root and image, run as locked down as it, and have a NetworkPolicy."""
    out = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    root = env_of(server).get("MLOPS_STORAGE_ROOT")
    for job in (d for d in docs if d["kind"] == "CronJob"):
        name = job["metadata"]["name"]
        template = job["spec"]["jobTemplate"]["spec"]["template"]
        pod = template["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"CronJob {name}: its pods mount a service-account token they never use")
        if job["spec"].get("concurrencyPolicy") != "Forbid":
            out.append(f"CronJob {name}: runs may overlap (concurrencyPolicy is not Forbid)")
        for c in pod["containers"]:
            security = c.get("securityContext", {})
            if (security.get("readOnlyRootFilesystem") is not True
                    or security.get("allowPrivilegeEscalation") is not False
                    or "ALL" not in security.get("capabilities", {}).get("drop", [])):
                out.append(f"CronJob {name}: container {c['name']}: not read-only, unprivileged and "
                           "without capabilities")
            if c.get("image") != server.get("image"):
                out.append(f"CronJob {name}: image {c.get('image')} is not the server's {server.get('image')}")
            if env_of(c).get("MLOPS_STORAGE_ROOT") != root:
                out.append(f"CronJob {name}: storage root {env_of(c).get('MLOPS_STORAGE_ROOT')!r} is not "
                           f"the server's {root!r}")
        labels = template.get("metadata", {}).get("labels", {})
        if not any(all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
                   for p in policies):
            out.append(f"CronJob {name}: no NetworkPolicy selects its pods")
    return out


def with_component(tmp: pathlib.Path, component: pathlib.Path) -> pathlib.Path:
    """The production overlay with `component` in its own `components:` list, as
    a user includes one: the overlay's patches (its storage root) then reach
    what the component adds. Written to a directory under `tmp`; its path."""
    source = OVERLAYS / "production"
    overlay = tmp / f"with-{component.name}"
    overlay.mkdir()
    k = yaml.safe_load((source / "kustomization.yaml").read_text())
    # kustomize takes relative paths only.
    k["resources"] = [os.path.relpath((source / r).resolve(), overlay) for r in k.get("resources", [])]
    k["components"] = [*(os.path.relpath((source / c).resolve(), overlay) for c in k.get("components", [])),
                       os.path.relpath(component, overlay)]
    for patch in k.get("patches", []):
        if "path" in patch:
            patch["path"] = os.path.relpath((source / patch["path"]).resolve(), overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    return overlay


def adapter_problems(docs: list) -> int:
    """The custom metric the request-rate HPA scales on is one the adapter rules
    make, from a counter the binary exports (its name is in the alert rules,
    which a test checks against a real scrape)."""
    hpa = next((d for d in docs if d["kind"] == "HorizontalPodAutoscaler"), None)
    if hpa is None:
        print("deploy: the autoscale-on-requests component leaves no HPA")
        return 1
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())["rules"]
    made = {r["name"]["as"]: r["seriesQuery"].split("{")[0] for r in rules}
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()
    problems = 0
    for metric in wanted:
        if metric not in made:
            print(f"deploy: the HPA scales on {metric}, which no adapter rule makes")
            problems += 1
        elif made[metric].removesuffix("_total") not in alerts:
            print(f"deploy: the adapter rule for {metric} reads {made[metric]}, which the alerts never use")
            problems += 1
    if not wanted:
        print("deploy: the autoscale-on-requests HPA has no per-pod metric")
        problems += 1
    return problems


def main() -> int:
    validate = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    problems = 0
    rendered = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        def render(directory: pathlib.Path, name: str) -> int:
            """Renders `directory` into `rendered[name]` and validates it; the problems."""
            out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                                 timeout=120)
            if out.returncode != 0:
                print(f"deploy: {name} does not render:\n{out.stderr}")
                return 1
            path = tmp / f"{name.replace(' + ', '-with-')}.yaml"
            path.write_text(out.stdout)
            rendered[name] = list(yaml.safe_load_all(out.stdout))
            check = subprocess.run([str(validate), "--strict", "--quiet", str(path)], capture_output=True,
                                   text=True, timeout=300)
            if check.returncode != 0:
                print(f"deploy: {name} fails schema validation:\n{check.stdout}{check.stderr}")
                return 1
            kinds = sorted(d["kind"] for d in rendered[name])
            print(f"deploy: {name} renders and validates: {', '.join(kinds)}")
            return 0

        for overlay in sorted(p for p in OVERLAYS.iterdir() if p.is_dir()):
            problems += render(overlay, overlay.name)
        # Each optional component (deploy/k8s/components), applied to the
        # production overlay as a user would include it, renders and validates.
        for component in sorted(p for p in COMPONENTS.iterdir() if p.is_dir()):
            problems += render(with_component(tmp, component), f"production + {component.name}")
        problems += adapter_problems(rendered.get("production + autoscale-on-requests", []))

        for name, docs in rendered.items():
            for problem in operational_problems(docs):
                print(f"deploy: {name}: {problem}")
                problems += 1

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
        # The configs the components add to the ConfigMap (retrain.toml,
        # materialize.toml) pass it too.
        for name, docs in rendered.items():
            data = next((d["data"] for d in docs if d["kind"] == "ConfigMap"), {})
            for file, text in sorted(data.items()):
                if file == "mlops.toml" or not file.endswith(".toml"):
                    continue
                path = tmp / f"{name.replace(' + ', '-with-')}-{file}"
                path.write_text(text)
                check = subprocess.run([*command, "check", "--config", str(path)], cwd=ROOT,
                                       env={**env, "REDIS_URL": "redis://127.0.0.1:6379"},
                                       capture_output=True, text=True, timeout=900)
                if check.returncode != 0:
                    print(f"deploy: {name}: {file} fails `mlops check`:\n{check.stderr}")
                    problems += 1
                else:
                    print(f"deploy: {name}: {file} passes `mlops check`: {check.stdout.strip()}")
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
