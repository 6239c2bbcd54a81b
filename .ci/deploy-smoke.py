#!/usr/bin/env python3
"""Runs each Kustomize overlay as a pod would, without a cluster.

For every overlay under deploy/k8s/overlays, `kubectl kustomize` renders it and
this script takes from the rendered Deployment the pod's init containers and
its `mlops` container: their exact command (the image's ENTRYPOINT, read from
deploy/Dockerfile, when they name none), args and env, and the files of the
ConfigMap and Secret volumes they mount (emptyDir volumes start empty). Then:

1. the init containers run in order, each to exit 0;
2. the server starts; it must pass the startupProbe's path, then the
   readinessProbe's, and the Dockerfile's HEALTHCHECK command with `--ready`;
3. it answers an inference from tritonclient (HTTP) with the infer key of the
   mounted Secret, for the model of the config's first deployment;
4. after SIGHUP it logs the reload, is still ready and answers again;
5. on SIGTERM it drains and exits 0 within terminationGracePeriodSeconds less
   the preStop sleep (the kubelet spends that first).

Each overlay runs twice:

- as processes of the binary CI built (MLOPS_BIN): the volumes become temp
  dirs, and ONLY their mount-path prefixes are rewritten to those dirs, in the
  args, the env and the ConfigMap's files; so are two paths inside the image
  (the ENTRYPOINT, /usr/local/bin/mlops, and the seed model under
  /usr/share/mlops/), which point into the image tree deploy/rootfs.sh
  assembles. The config's `bind` port is rewritten to a free loopback port,
  since the processes share this machine's network (a pod has its own);
- as the image: deploy/rootfs.sh assembles the image tree from the same
  binaries, and podman builds it with the final stage of deploy/Dockerfile
  (its FROM scratch, USER, HEALTHCHECK, ENTRYPOINT and CMD; the COPY from the
  build stage reads that tree instead) and runs it with the pod's volumes at
  their real mount paths, nothing rewritten, as the pod's user, with a
  read-only root filesystem, no capabilities, its own network namespace
  (slirp4netns) and the container port published on a free loopback port.
  Without podman this part is skipped with a message, or fails the run under
  MLOPS_TEST_REQUIRE_ALL=1 (as `.ci/run` sets it).

The production overlay's storage root (s3://...) is used verbatim against the
S3-compatible server CI starts (MLOPS_TEST_S3_ENDPOINT): its bucket is created
there and emptied under the root's prefix, then seeded with the binary
(`mlops models register` and `alias`, with the same config and environment)
before the server starts. Credentials and the endpoint reach the binary only
as a pod would get them, through AWS_* variables; nothing else of this
script's environment is passed on. The production Secret is created outside
the repository, so its files (the key files the config names) are generated
here.

Every wait has a deadline; every process is killed on every exit path; a
failure names what did not happen and prints the server's last log lines.

Arguments: overlay directories (default: every one under deploy/k8s/overlays).
Environment: MLOPS_BIN (the `mlops` binary, with the storage backends the
overlays use: the workspace's test build has them, `cargo build -p mlops-cli`
alone has not; add `--features mlops/aws`), MLOPS_QUICKSTART_BIN (the
quickstart example, which writes the seed model; default: the target dir's
debug build), MLOPS_TEST_S3_ENDPOINT, MLOPS_DEPLOY_SMOKE_IMAGE=0 to skip the
image runs. Run with a Python that has PyYAML, tritonclient[http], numpy and
boto3: `.ci/run` uses its virtual environment.
"""

import base64
import collections
import json
import os
import pathlib
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ROOTFS_SCRIPT = ROOT / "deploy" / "rootfs.sh"
# Paths inside the image that the native runs map into the assembled image tree.
IMAGE_PATHS = ("/usr/local/bin/mlops", "/usr/share/mlops/")
# Deadlines: generous, only there to turn a hang into a failure.
START_LIMIT = 120.0
STEP_LIMIT = 60.0
COMMAND_LIMIT = 120.0
# slirp4netns's address for the host's loopback, seen from the container.
SLIRP_HOST = "10.0.2.2"


class Failure(Exception):
    """A check that did not pass; the message says what did not happen."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process, its output (stdout and stderr together) read on a
    thread, killed by `close` (which every path runs). It stays in this
    script's process group, so a step's `timeout` reaches it too."""

    def __init__(self, name: str, argv: list, env: dict, cleanup: list | None = None):
        self.name = name
        self.argv = argv
        self.cleanup = cleanup
        self.lines: collections.deque = collections.deque(maxlen=400)
        self.seen = threading.Condition()
        self.count = 0
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.seen:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.count += 1
                self.seen.notify_all()

    def tail(self, n: int = 30) -> str:
        with self.seen:
            lines = list(self.lines)[-n:]
        return "\n".join(f"    | {line}" for line in lines) or "    | (no output)"

    def fail(self, what: str) -> Failure:
        return Failure(f"{what}\n  {self.name}: {' '.join(map(str, self.argv))}\n  its last lines:\n{self.tail()}")

    def exited(self):
        return self.proc.poll()

    def wait(self, limit: float):
        """The exit code, or None when it is still running after `limit` s."""
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_for_line(self, after: int, pattern: re.Pattern, what: str, limit: float) -> str:
        """The first line after the `after`-th that matches; fails naming `what`."""
        deadline = time.monotonic() + limit
        with self.seen:
            while True:
                new = list(self.lines)[-(self.count - after):] if self.count > after else []
                for line in new:
                    if pattern.search(line):
                        return line
                if self.proc.poll() is not None:
                    raise self.fail(f"{what}: it exited with {self.proc.returncode} first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.fail(f"{what}: no such log line within {limit:.0f}s")
                self.seen.wait(min(left, 0.5))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.cleanup:
            subprocess.run(self.cleanup, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.reader.join(timeout=10)


def run_to_end(name: str, argv: list, env: dict, limit: float = COMMAND_LIMIT, cleanup: list | None = None) -> str:
    """Runs a command to exit 0 within `limit`; its output."""
    p = Process(name, argv, env, cleanup)
    try:
        code = p.wait(limit)
        p.reader.join(timeout=10)
        if code is None:
            raise p.fail(f"{name} did not exit within {limit:.0f}s")
        if code != 0:
            raise p.fail(f"{name} exited with {code}")
        return "\n".join(p.lines)
    finally:
        p.close()


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_http_ok(server: Process, url: str, what: str, limit: float):
    deadline = time.monotonic() + limit
    last = None
    while True:
        last = http_status(url)
        if last == 200:
            return
        if server.exited() is not None:
            raise server.fail(f"{what}: the server exited with {server.exited()} before GET {url} answered 200")
        if time.monotonic() > deadline:
            raise server.fail(f"{what}: GET {url} did not answer 200 within {limit:.0f}s (last: {last or 'no answer'})")
        time.sleep(0.2)


def dockerfile_final_stage() -> list:
    """The lines of deploy/Dockerfile's last stage, from its FROM on."""
    lines = DOCKERFILE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    return lines[starts[-1]:]


def dockerfile_json(instruction: str) -> list:
    """An exec-form instruction of the final stage (ENTRYPOINT, CMD, or
    HEALTHCHECK: its CMD)."""
    for line in dockerfile_final_stage():
        if line.split(" ", 1)[0].upper() == instruction and "[" in line:
            return json.loads(line[line.index("["):])
    raise Failure(f"deploy/Dockerfile's final stage has no exec-form {instruction}")


class Pod:
    """The rendered overlay's pod: containers, volumes and what the config says."""

    def __init__(self, overlay: str, docs: list):
        self.overlay = overlay
        self.docs = docs
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        if len(deployments) != 1:
            raise Failure(f"{overlay}: expected one Deployment, found {len(deployments)}")
        self.spec = deployments[0]["spec"]["template"]["spec"]
        self.inits = self.spec.get("initContainers", [])
        self.main = next((c for c in self.spec["containers"] if c["name"] == "mlops"), None)
        if self.main is None:
            raise Failure(f"{overlay}: the Deployment has no container named mlops")
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.mounts = {}
        for c in [*self.inits, self.main]:
            for m in c.get("volumeMounts", []):
                known = self.mounts.setdefault(m["mountPath"], m["name"])
                if known != m["name"]:
                    raise Failure(f"{overlay}: {m['mountPath']} mounts {known} and {m['name']}")
        self.port = next(p["containerPort"] for p in self.main["ports"] if p.get("name") == "http")
        self.grace = self.spec.get("terminationGracePeriodSeconds", 30)
        self.pre_stop = self.main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        self.user = self.spec.get("securityContext", {}).get("runAsUser")

    def config_map(self, name: str) -> dict:
        for d in self.docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name:
                files = {k: v.encode() for k, v in d.get("data", {}).items()}
                files.update({k: base64.b64decode(v) for k, v in d.get("binaryData", {}).items()})
                return files
        raise Failure(f"{self.overlay}: ConfigMap {name} is mounted but not rendered")

    def secret(self, name: str, mount_path: str, config: dict) -> tuple:
        """The Secret's files, and whether they were generated here."""
        for d in self.docs:
            if d["kind"] == "Secret" and d["metadata"]["name"] == name:
                files = {k: base64.b64decode(v) for k, v in d.get("data", {}).items()}
                files.update({k: v.encode() for k, v in d.get("stringData", {}).items()})
                return files, False
        # Created outside the repository (production): the key files the config names.
        files = {}
        for key in config.get("http", {}).get("keys", []):
            path = key.get("key_file", "")
            if path.startswith(mount_path.rstrip("/") + "/"):
                files[path[len(mount_path.rstrip("/")) + 1:]] = secrets.token_hex(16).encode()
        if not files:
            raise Failure(f"{self.overlay}: Secret {name} is neither rendered nor named by the config's key files")
        return files, True

    def materialize(self, base: pathlib.Path, log) -> dict:
        """Writes every volume under `base`: volume name -> host dir."""
        config_text = None
        dirs = {}
        for name, volume in self.volumes.items():
            path = base / name
            path.mkdir(parents=True)
            if "configMap" in volume:
                for file, content in self.config_map(volume["configMap"]["name"]).items():
                    (path / file).write_bytes(content)
                    if file.endswith(".toml"):
                        config_text = content.decode()
            elif "emptyDir" in volume:
                # The pod's user (10001) writes it, as the kubelet lets it.
                path.chmod(0o777)
            elif "secret" not in volume:
                raise Failure(f"{self.overlay}: volume {name} is neither a ConfigMap, a Secret nor an emptyDir")
            dirs[name] = path
        self.config = tomllib.loads(config_text or "")
        for name, volume in self.volumes.items():
            if "secret" in volume:
                mount = next(p for p, v in self.mounts.items() if v == name)
                files, generated = self.secret(volume["secret"]["secretName"], mount, self.config)
                for file, content in files.items():
                    (dirs[name] / file).write_bytes(content)
                if generated:
                    log(f"Secret {volume['secret']['secretName']} is not in the overlay: generated "
                        f"{', '.join(sorted(files))} as the operator would")
        for path in base.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
            elif path.stat().st_mode & 0o777 != 0o777:
                path.chmod(0o755)
        base.chmod(0o755)
        return dirs

    def infer_key(self, dirs: dict) -> str:
        for key in self.config.get("http", {}).get("keys", []):
            if "infer" in key.get("scopes", []) or "admin" in key.get("scopes", []):
                path = key["key_file"]
                for mount, volume in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
                    if path.startswith(mount.rstrip("/") + "/"):
                        return (dirs[volume] / path[len(mount.rstrip("/")) + 1:]).read_text().strip()
        raise Failure(f"{self.overlay}: no key with the infer scope in a mounted file")

    def model(self) -> str:
        deployments = self.config.get("deployments", [])
        if not deployments:
            raise Failure(f"{self.overlay}: the config has no [[deployments]]")
        return deployments[0]["name"]


def container_env(container: dict) -> dict:
    env = {}
    for e in container.get("env", []):
        if "value" not in e:
            raise Failure(f"container {container['name']}: env {e['name']} uses valueFrom, which is not emulated")
        env[e["name"]] = e["value"]
    if container.get("envFrom"):
        raise Failure(f"container {container['name']}: envFrom is not emulated")
    return env


def storage_root(container: dict, config: dict) -> str:
    root = config.get("storage", {}).get("root", "")
    return re.sub(r"\$\{(\w+)\}", lambda m: container_env(container).get(m.group(1), ""), root)


class Native:
    """Runs the pod's containers as processes of this machine's binaries."""

    kind = "processes"

    def __init__(self, image_tree: pathlib.Path):
        self.tree = image_tree

    def prepare(self, pod: Pod, dirs: dict):
        # The rewrite: mount-path prefixes to the volumes' dirs, image paths into the tree.
        self.prefixes = {m.rstrip("/"): str(dirs[v]) for m, v in pod.mounts.items()}
        self.prefixes.update({p.rstrip("/"): str(self.tree) + p.rstrip("/") for p in IMAGE_PATHS})
        self.host_port = free_port()
        for name, volume in pod.volumes.items():
            if "configMap" not in volume:
                continue
            for file in dirs[name].iterdir():
                if file.suffix == ".toml":
                    text = self.rewrite(file.read_text())
                    # A pod has its own network namespace; these processes share one.
                    text, n = re.subn(r'(?m)^(\s*bind\s*=\s*")[^"]*:%d"' % pod.port,
                                      lambda m: f'{m.group(1)}127.0.0.1:{self.host_port}"', text)
                    if n != 1:
                        raise Failure(f"{pod.overlay}: {file.name} has no bind on port {pod.port}")
                    file.write_text(text)

    def rewrite(self, text: str) -> str:
        """`text` with each prefix (a whole path or a leading part of one,
        longest first, in one pass) replaced."""
        alternatives = "|".join(re.escape(p) for p in sorted(self.prefixes, key=len, reverse=True))
        return re.sub(f"(?:{alternatives})(?=/|$|[^\\w.-])", lambda m: self.prefixes[m.group(0)], text)

    def argv(self, container: dict) -> list:
        command = container.get("command") or dockerfile_json("ENTRYPOINT")
        args = container.get("args") if "args" in container else (
            [] if container.get("command") else dockerfile_json("CMD"))
        return [self.rewrite(a) for a in [*command, *args]]

    def env(self, container: dict, extra: dict) -> dict:
        env = {k: self.rewrite(v) for k, v in container_env(container).items()}
        return {"PATH": "/usr/bin:/bin", **env, **extra}

    def run_init(self, pod: Pod, container: dict, extra: dict):
        run_to_end(f"init container {container['name']}", self.argv(container), self.env(container, extra))

    def start(self, pod: Pod, extra: dict) -> Process:
        return Process("mlops container", self.argv(pod.main), self.env(pod.main, extra))

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def healthcheck(self, pod: Pod) -> list:
        return [*self.rewrite_list(dockerfile_json("HEALTHCHECK")), "--url", self.base_url()]

    def rewrite_list(self, argv: list) -> list:
        return [self.rewrite(a) for a in argv]

    def s3_endpoint(self, endpoint: str) -> str:
        return endpoint


class Image:
    """Runs the pod's containers in the image podman built from the same tree."""

    kind = "image"

    def __init__(self, tag: str):
        self.tag = tag
        self.runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
        # Not above this process's limits: raising them needs CAP_SYS_RESOURCE.
        self.ulimits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]

    def prepare(self, pod: Pod, dirs: dict):
        self.dirs = dirs
        self.host_port = free_port()

    def podman_run(self, pod: Pod, container: dict, extra: dict, name: str, publish: bool) -> list:
        security = container.get("securityContext", {})
        argv = ["podman", *self.runtime, "run", "--rm", "--name", name, *self.ulimits,
                "--network", "slirp4netns:allow_host_loopback=true"]
        if publish:
            argv += ["-p", f"127.0.0.1:{self.host_port}:{pod.port}"]
        if pod.user is not None:
            argv += ["--user", str(pod.user)]
        if security.get("readOnlyRootFilesystem"):
            argv.append("--read-only")
        if "ALL" in security.get("capabilities", {}).get("drop", []):
            argv += ["--cap-drop", "all"]
        if security.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        for m in container.get("volumeMounts", []):
            host = self.dirs[m["name"]]
            argv += ["-v", f"{host}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
        for k, v in {**container_env(container), **extra}.items():
            argv += ["-e", f"{k}={v}"]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        argv.append(self.tag)
        argv += container.get("args", [])
        return argv

    def run_init(self, pod: Pod, container: dict, extra: dict):
        name = f"mlops-smoke-{os.getpid()}-{pod.overlay}-{container['name']}"
        run_to_end(f"init container {container['name']} (image)", self.podman_run(pod, container, extra, name, False),
                   dict(os.environ), cleanup=["podman", "rm", "-f", "-i", "-t", "0", name])

    def start(self, pod: Pod, extra: dict) -> Process:
        self.name = f"mlops-smoke-{os.getpid()}-{pod.overlay}"
        # Attached: podman passes the signals it gets on to the container and
        # exits with its exit code.
        return Process("mlops container (image)", self.podman_run(pod, pod.main, extra, self.name, True),
                       dict(os.environ), cleanup=["podman", "rm", "-f", "-i", "-t", "0", self.name])

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def healthcheck(self, pod: Pod) -> list:
        # The HEALTHCHECK as the container runtime runs it: inside the container.
        return ["podman", "exec", self.name, *dockerfile_json("HEALTHCHECK")]

    def s3_endpoint(self, endpoint: str) -> str:
        return re.sub(r"//(127\.0\.0\.1|localhost)(?=[:/]|$)", f"//{SLIRP_HOST}", endpoint)


def log_message(line: str) -> str:
    """A log line's message (JSON logs: fields.message)."""
    try:
        return json.loads(line)["fields"]["message"]
    except (ValueError, KeyError, TypeError):
        return line.strip()


def infer(base_url: str, key: str, model: str) -> str:
    """One inference through tritonclient: inputs from the model's metadata."""
    import numpy as np
    import tritonclient.http as httpclient

    headers = {"Authorization": f"Bearer {key}"}
    client = httpclient.InferenceServerClient(url=base_url.split("//", 1)[1], connection_timeout=30,
                                              network_timeout=30)
    try:
        meta = client.get_model_metadata(model, headers=headers)
        dtypes = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32,
                  "BOOL": np.bool_, "BYTES": np.object_}
        inputs = []
        for spec in meta["inputs"]:
            shape = [1 if d == -1 else d for d in spec["shape"]]
            if spec["datatype"] == "BYTES":
                data = np.full(shape, b"a", dtype=np.object_)
            else:
                data = np.ones(shape, dtype=dtypes[spec["datatype"]])
            t = httpclient.InferInput(spec["name"], shape, spec["datatype"])
            t.set_data_from_numpy(data)
            inputs.append(t)
        result = client.infer(model, inputs, headers=headers)
        answer = result.get_response()
        outputs = {o["name"]: result.as_numpy(o["name"]) for o in answer["outputs"]}
        if not outputs or any(v is None or v.size == 0 for v in outputs.values()):
            raise Failure(f"the inference of {model} answered no output values: {answer}")
        return ", ".join(f"{n}={v.tolist()}" for n, v in outputs.items()) + f" (version {answer.get('model_version')})"
    finally:
        client.close()


def seed_bucket(pod: Pod, native: "Native", env: dict, log):
    """Registers the image's seed model in the overlay's s3:// root with the
    binary, the server's config and `env`; points the routed alias at it."""
    config = [a for a in native.argv(pod.main) if a.endswith(".toml")]
    seed = native.tree / "usr/share/mlops/seed/fraud.mlopstab"
    mlops = str(native.tree / "usr/local/bin/mlops")
    model = pod.model()
    out = run_to_end("mlops models register (seeding the bucket)",
                     [mlops, "--json", "models", "--config", config[0], "register", model, str(seed),
                      "--flavor", "burn-tabular"], env)
    version = json.loads(out.strip().splitlines()[-1])["version"]
    alias = re.search(r'@(\w+)', json.dumps(pod.config["deployments"][0].get("routing", {})))
    run_to_end("mlops models alias (seeding the bucket)",
               [mlops, "models", "--config", config[0], "alias", model, alias.group(1) if alias else "champion",
                str(version)], env)
    log(f"seeded {model} version {version} in {storage_root(pod.main, pod.config)}")


def reset_bucket(url: str, endpoint: str):
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def run_overlay(overlay: str, docs: list, runner, tree: pathlib.Path, tmp: pathlib.Path, endpoint: str | None):
    def log(msg):
        print(f"deploy-smoke: {overlay} ({runner.kind}): {msg}", flush=True)

    pod = Pod(overlay, docs)
    dirs = pod.materialize(tmp / f"{overlay}-{runner.kind}", log)
    runner.prepare(pod, dirs)
    root = storage_root(pod.main, pod.config)
    extra = {}
    if root.startswith("s3://"):
        if not endpoint:
            raise Failure(f"{overlay}: the storage root is {root} and MLOPS_TEST_S3_ENDPOINT is not set")
        reset_bucket(root, endpoint)
        # As a pod gets them (a Secret's env, IRSA, a node role): AWS_* only.
        aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}
        native = Native(tree)
        native.prepare(pod, pod.materialize(tmp / f"{overlay}-{runner.kind}-seed", lambda _: None))
        seed_bucket(pod, native, native.env(pod.main, {**aws, "AWS_ENDPOINT": endpoint}), log)
        extra = {**aws, "AWS_ENDPOINT": runner.s3_endpoint(endpoint)}
        log(f"storage {root} on {endpoint}, credentials and endpoint through AWS_* only")
    elif not root.startswith("file://"):
        raise Failure(f"{overlay}: storage root {root!r} is not emulated (file:// and s3:// are)")

    for container in pod.inits:
        runner.run_init(pod, container, extra)
        log(f"init container {container['name']} exited 0")

    server = runner.start(pod, extra)
    try:
        base = runner.base_url()
        startup = pod.main.get("startupProbe", {}).get("httpGet", {}).get("path", "/v2/health/live")
        ready = pod.main.get("readinessProbe", {}).get("httpGet", {}).get("path", "/v2/health/ready")
        wait_http_ok(server, base + startup, "startupProbe", START_LIMIT)
        wait_http_ok(server, base + ready, "readinessProbe", START_LIMIT)
        check = runner.healthcheck(pod)
        out = run_to_end("the Dockerfile's HEALTHCHECK", [*check, "--ready"], dict(os.environ), STEP_LIMIT)
        log(f"ready; HEALTHCHECK --ready: {out.strip()}")
        key, model = pod.infer_key(dirs), pod.model()
        log(f"tritonclient: {infer(base, key, model)}")

        seen = server.count
        server.signal(signal.SIGHUP)
        line = server.wait_for_line(seen, re.compile("sighup", re.I), "the server did not log the SIGHUP reload",
                                    STEP_LIMIT)
        if server.exited() is not None:
            raise server.fail(f"the server exited with {server.exited()} after SIGHUP")
        wait_http_ok(server, base + ready, "readiness after SIGHUP", STEP_LIMIT)
        log(f"after SIGHUP (logged {log_message(line)!r}): tritonclient: {infer(base, key, model)}")

        allowed = pod.grace - pod.pre_stop
        server.signal(signal.SIGTERM)
        code = server.wait(allowed)
        if code is None:
            raise server.fail(f"SIGTERM: the server did not exit within {allowed}s "
                              f"(terminationGracePeriodSeconds {pod.grace} less preStop {pod.pre_stop})")
        if code != 0:
            raise server.fail(f"SIGTERM: the server exited with {code}, not 0")
        server.reader.join(timeout=10)
        drained = [log_message(line) for line in list(server.lines)[-20:] if re.search("drain", line, re.I)]
        if not drained:
            raise server.fail("SIGTERM: the server exited 0 without logging that it drained")
        log(f"SIGTERM: exited 0 within {allowed}s, having logged {drained[0]!r}")
    finally:
        server.close()


def build_image(tree: pathlib.Path, tmp: pathlib.Path) -> str:
    """podman builds deploy/Dockerfile's final stage from the assembled tree."""
    context = tmp / "image-context"
    context.mkdir()
    shutil.copytree(tree, context / "rootfs", symlinks=True)
    stage = []
    for line in dockerfile_final_stage():
        if re.match(r"(?i)COPY\s+--from=build\s+/rootfs\s+/\s*$", line):
            line = "COPY rootfs /"
        elif line.upper().startswith("COPY") or line.upper().startswith("RUN") or line.upper().startswith("ADD"):
            raise Failure(f"deploy/Dockerfile's final stage has a step this script cannot reproduce: {line}")
        stage.append(line)
    (context / "Containerfile").write_text("\n".join(stage) + "\n")
    tag = f"localhost/mlops-deploy-smoke:{os.getpid()}"
    run_to_end("podman build", ["podman", "build", "--format", "docker", "-q", "-t", tag, str(context)],
               dict(os.environ), 600)
    return tag


def main() -> int:
    # A step's time limit sends SIGTERM: unwind, so every `finally` stops what
    # it started (containers run under podman's conmon, not as children).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("deploy-smoke: terminated (time limit?)"))
    overlays = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(p for p in OVERLAYS.iterdir() if p.is_dir())
    binary = os.environ.get("MLOPS_BIN")
    if not binary:
        print("deploy-smoke: set MLOPS_BIN to the mlops binary (cargo build -p mlops-cli)")
        return 2
    target = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                                       capture_output=True, text=True, check=True, timeout=120).stdout)
    quickstart = os.environ.get("MLOPS_QUICKSTART_BIN",
                                str(pathlib.Path(target["target_directory"]) / "debug/examples/quickstart"))
    endpoint = os.environ.get("MLOPS_TEST_S3_ENDPOINT")
    require_all = os.environ.get("MLOPS_TEST_REQUIRE_ALL") == "1"
    want_image = os.environ.get("MLOPS_DEPLOY_SMOKE_IMAGE", "1") != "0"
    failures = 0
    image = None
    with tempfile.TemporaryDirectory(prefix="mlops-deploy-smoke-") as tmp:
        tmp = pathlib.Path(tmp)
        tmp.chmod(0o755)
        tree = tmp / "rootfs"
        try:
            run_to_end("deploy/rootfs.sh", ["sh", str(ROOTFS_SCRIPT), binary, quickstart, str(tree)],
                       dict(os.environ), 300)
        except Failure as e:
            print(f"deploy-smoke: the image tree could not be assembled: {e}")
            return 1
        runners = [Native(tree)]
        if want_image and shutil.which("podman"):
            try:
                image = build_image(tree, tmp)
                runners.append(Image(image))
                print(f"deploy-smoke: built {image} from deploy/Dockerfile's final stage", flush=True)
            except Failure as e:
                print(f"deploy-smoke: the image did not build: {e}")
                failures += 1
        elif want_image:
            print("deploy-smoke: podman is not installed: the image is not built or run")
            failures += 1 if require_all else 0
        try:
            for overlay in overlays:
                out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                                     timeout=120)
                if out.returncode != 0:
                    print(f"deploy-smoke: {overlay.name} does not render:\n{out.stderr}")
                    failures += 1
                    continue
                docs = [d for d in yaml.safe_load_all(out.stdout) if d]
                for runner in runners:
                    try:
                        run_overlay(overlay.name, docs, runner, tree, tmp, endpoint)
                        print(f"deploy-smoke: {overlay.name} ({runner.kind}): passed", flush=True)
                    except Failure as e:
                        print(f"deploy-smoke: {overlay.name} ({runner.kind}): FAILED: {e}", flush=True)
                        failures += 1
        finally:
            if image:
                subprocess.run(["podman", "rmi", "-f", image], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
