"""deploy/: every file parsed and checked against the code it deploys.

No Docker engine or Kubernetes cluster is available here, so images are not built and
manifests are not applied; the systemd unit is checked for real with ``systemd-analyze
verify``. Grace periods are checked against the worker's own shutdown grace and final-write
time, key names against :class:`~worker.store.keys.Keys`, variable names against the settings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PYTHON, REPO
from worker.commands.health import HEALTH_TIMEOUT_S
from worker.config.settings import ENV_NAMES, Settings
from worker.pipeline.runner import FINAL_WRITE_S
from worker.store.keys import Keys

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
DEFAULT_GRACE_S = Settings.__dataclass_fields__["shutdown_grace_s"].default
SETTINGS_VARS = set(ENV_NAMES.values())


def _needed_stop_s(grace: object = DEFAULT_GRACE_S) -> float:
    """What an orchestrator must wait after SIGTERM: the drain grace plus the final writes."""
    return float(str(grace)) + FINAL_WRITE_S


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def test_dockerfile_is_multi_stage_with_a_slim_non_root_runtime() -> None:
    build, runtime = stages()
    args = dict(a.split("=", 1) for i, a in dockerfile_instructions() if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    assert build[0][1] == "${PYTHON_IMAGE} AS build"
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    assert runtime[0][1] == "${PYTHON_IMAGE} AS runtime"
    assert any(i == "COPY" and a.startswith("--from=build /wheels") for i, a in runtime)
    install = next(a for i, a in runtime if i == "RUN" and "pip install" in a)
    assert "--no-index" in install  # the runtime installs only the wheels built above
    user = [a for i, a in runtime if i == "USER"]
    assert len(user) == 1
    uid, _, gid = user[0].partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) > 0  # not root


def test_dockerfile_runs_ackworker_and_checks_its_heartbeat() -> None:
    runtime = dict(stages()[1])  # the last of each instruction wins, as in Docker
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(runtime["ENTRYPOINT"]) == ["ackworker"]
    assert json.loads(runtime["CMD"]) == ["run"]
    options, _, command = runtime["HEALTHCHECK"].partition(" CMD ")
    assert json.loads(command) == ["ackworker", "health"]
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout is not None
    assert int(timeout.group(1)) > HEALTH_TIMEOUT_S


def test_build_context_holds_what_the_wheel_needs() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :] == [
        "!pyproject.toml",
        "!README.md",
        "!worker/",
        "**/__pycache__",
    ]
    copied = [a for i, a in stages()[0] if i == "COPY"]
    assert copied == ["pyproject.toml README.md ./", "worker ./worker"]


# --- docker-compose.yml -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match is not None, duration
    return float(match.group(1))


def test_compose_has_redis_two_workers_and_the_stand_in() -> None:
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:7")
    stand_in = services["mock-api"]
    assert stand_in["command"][:3] == ["mock-api", "--host", "0.0.0.0"]
    assert stand_in["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / stand_in["build"]["context"] / "pyproject.toml").exists()
    workers = {name: s for name, s in services.items() if s.get("command") == ["run"]}
    assert sorted(workers) == ["worker-1", "worker-2"]
    consumers = {w["environment"]["ACKWORKER_CONSUMER"] for w in workers.values()}
    assert len(consumers) == 2
    for worker in workers.values():
        env = worker["environment"]
        assert env["ACKWORKER_REDIS_URL"].startswith("redis://redis:")
        assert env["ACKWORKER_ENDPOINT"] == "http://mock-api:8790"
        assert _seconds(worker["stop_grace_period"]) > _needed_stop_s(
            env["ACKWORKER_SHUTDOWN_GRACE_S"]
        )
        assert worker["hostname"] == env["ACKWORKER_CONSUMER"]  # ackworker health by host
        assert worker["read_only"] is True
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert {k for k in env if k.startswith("ACKWORKER_")} <= SETTINGS_VARS


def test_compose_seed_script_compiles() -> None:
    seed = compose()["services"]["seed"]
    assert seed["entrypoint"] == ["python", "-c"]
    compile(seed["command"][0], "seed", "exec")


# --- systemd ----------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "ackworker.service"


def unit_settings() -> dict[str, list[str]]:
    """``Key`` -> every value it is given (keys may repeat), from the [Service] section."""
    section = ""
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_runs_ackworker_and_outlasts_its_drain() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["exec"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"][0].split()[1:] == ["run"]
    assert Path(unit["ExecStart"][0].split()[0]).name == "ackworker"
    assert unit["KillSignal"] == ["SIGTERM"]
    assert float(unit["TimeoutStopSec"][0]) > _needed_stop_s()
    assert unit["RestartPreventExitStatus"] == ["2"]  # a bad setting: restarting cannot help


def test_unit_takes_credentials_from_files() -> None:
    unit = unit_settings()
    assert unit["EnvironmentFile"] == ["/etc/ackworker/ackworker.env"]
    name, _, source = unit["LoadCredential"][0].partition(":")
    assert source.startswith("/etc/ackworker/")
    assert f"ALIBABA_CLOUD_CREDENTIALS_FILE=%d/{name}" in unit["Environment"]


def test_unit_is_hardened() -> None:
    unit = unit_settings()
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
    }.items():
        assert unit[key] == [value], key
    assert "@system-service" in unit["SystemCallFilter"]


def test_env_example_names_only_real_settings() -> None:
    text = (DEPLOY / "systemd" / "ackworker.env.example").read_text()
    names = set(re.findall(r"^#?\s*(ACKWORKER_[A-Z_]+)=", text, re.MULTILINE))
    assert "ACKWORKER_REDIS_URL" in names
    assert names <= SETTINGS_VARS


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify requires ExecStart's binary to exist: point it at this checkout's ackworker.
    real = Path(PYTHON).parent / "ackworker"
    assert real.exists(), real
    exec_start = unit_settings()["ExecStart"][0].split()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(exec_start, str(real)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if UNIT.name in line] == [], output


# --- Kubernetes -------------------------------------------------------------------------------


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def config() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_manifest_parses_and_is_labelled() -> None:
    kinds = sorted(doc["kind"] for _, doc in manifests())
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Kustomization",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
        "Secret",
        "TriggerAuthentication",
    ]
    for name, doc in manifests():
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "ackworker", name


def test_kustomization_leaves_out_the_example_secrets() -> None:
    resources = one("Kustomization")["resources"]
    assert sorted(resources) == ["configmap.yaml", "deployment.yaml", "pdb.yaml"]
    assert all((K8S / name).exists() for name in resources)


def test_configmap_names_only_real_settings_and_opens_the_endpoint() -> None:
    data = config()
    assert set(data) <= SETTINGS_VARS
    assert data["ACKWORKER_HTTP_HOST"] == "0.0.0.0"
    assert int(data["ACKWORKER_HTTP_PORT"]) > 0
    assert all(isinstance(v, str) for v in data.values())  # ConfigMap values are strings


def test_deployment_outlasts_the_drain_and_probes_the_worker() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    grace = config().get("ACKWORKER_SHUTDOWN_GRACE_S", DEFAULT_GRACE_S)
    assert pod["terminationGracePeriodSeconds"] > _needed_stop_s(grace)
    c = container()
    assert c["livenessProbe"]["exec"]["command"] == ["ackworker", "health"]
    assert c["livenessProbe"]["timeoutSeconds"] > HEALTH_TIMEOUT_S
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    port = next(p for p in c["ports"] if p["name"] == ready["port"])
    assert str(port["containerPort"]) == config()["ACKWORKER_HTTP_PORT"]


def test_deployment_resources_and_security() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    c = container()
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = next(a for i, a in stages()[1] if i == "USER")
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # writable scratch


def test_deployment_reads_settings_and_secrets_that_exist() -> None:
    c = container()
    assert c["envFrom"] == [{"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}}]
    secrets = {
        doc["metadata"]["name"]: doc["stringData"]
        for _, doc in manifests()
        if doc["kind"] == "Secret"
    }
    env = {e["name"]: e for e in c["env"]}
    url = env["ACKWORKER_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert url["key"] in secrets[url["name"]]
    assert env["ACKWORKER_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The credentials file is a mounted Secret, so rotations reach running pods.
    creds = Path(env["ALIBABA_CLOUD_CREDENTIALS_FILE"]["value"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(creds.parent))
    volumes = one("Deployment")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert creds.name in secrets[volume["secret"]["secretName"]]
    assert "[default]" in secrets[volume["secret"]["secretName"]][creds.name]


def test_pdb_selects_the_workers() -> None:
    pdb = one("PodDisruptionBudget")
    deployment = one("Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scales_the_deployment_on_pending_entries() -> None:
    scaled = one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one("Deployment")["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    keys = Keys.for_prefix(config()["ACKWORKER_KEY_PREFIX"])
    meta = trigger["metadata"]
    assert meta["stream"] == keys.tasks == "ackworker:tasks"
    assert meta["consumerGroup"] == keys.group == "ackworker"
    assert int(meta["pendingEntriesCount"]) > 0
    assert isinstance(meta["pendingEntriesCount"], str)  # KEDA metadata values are strings
    auth = one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secrets = {
        d["metadata"]["name"]: d["stringData"] for _, d in manifests() if d["kind"] == "Secret"
    }
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]], ref


# --- deploy/README.md -------------------------------------------------------------------------


def test_readme_explains_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert f"`{path.relative_to(DEPLOY)}`" in readme, path
    assert "no Docker engine" in readme.replace("\n", " ")
