"""The container deliverables, checked structurally (no Docker engine needed):
docker-compose.yml's services, the container policy they run, the Prometheus and Grafana
wiring, and the image's runtime contract with that policy.

docker-compose.yml, the Dockerfile and .dockerignore, the Prometheus and Grafana
provisioning, the dashboard's metric names and the container policies must agree with
each other and with the code: a renamed metric, a moved file or a port changed on one
side only fails here instead of in someone's `docker compose up`. The build context and
the dashboard's contents are checked in test_deployment_artifacts.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairlane.envoy.bootstrap import render_bootstrap
from fairlane.policy import Policy
from fairlane.policy_file import load_policy
from fairlane.rlimits import OPEN_FILES_WANTED
from fairlane.rundir import RunDir

from testkit.deployment import ROOT, dockerfile_instructions

COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_SERVICES = {"fairlane", "prometheus", "grafana"}


# -- helpers ------------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with no variable set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def published(port: str) -> tuple[str, int, int]:
    """A short-syntax port "[host_ip:]host:container" → (host_ip, host, container)."""
    parts = interpolate(port).split("/")[0].split(":")
    host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return host_ip, int(parts[-2]), int(parts[-1])


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source relative to the repo, container path) of each host-path volume."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = interpolate(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def service_policy(service: dict[str, Any]) -> Path:
    command = [interpolate(part) for part in service["command"]]
    assert command[:2] == ["serve", "--config"], command
    return ROOT / command[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def docker_policy(services: dict[str, dict[str, Any]]) -> Policy:
    return load_policy(service_policy(services["fairlane"]))


# -- docker-compose.yml ---------------------------------------------------------------------


def test_default_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in services.items() if not s.get("profiles")} == DEFAULT_SERVICES
    assert services["vllm"]["profiles"] == ["gpu"]
    # Anything added later (the scale profile) must stay out of a plain `docker compose up`.
    for name, service in services.items():
        assert name in DEFAULT_SERVICES or service.get("profiles"), name


def test_only_the_openai_port_is_published_on_all_interfaces(
    services: dict[str, dict[str, Any]],
) -> None:
    public = set()
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, host, container = published(str(port))
            if host_ip != "127.0.0.1":
                public.add((name, host, container))
    assert public == {("fairlane", 8000, 8000)}


def test_fairlane_service_runs_the_image_and_a_container_policy(
    services: dict[str, dict[str, Any]], docker_policy: Policy
) -> None:
    fairlane = services["fairlane"]
    assert fairlane["build"]["context"] == "."
    assert (ROOT / fairlane["build"]["dockerfile"]).is_file()
    listener = docker_policy.listener
    assert listener.host == "0.0.0.0"  # reachable through the published port
    assert ("0.0.0.0", 8000, listener.port) in [published(str(p)) for p in fairlane["ports"]]
    # The policies are mounted where the image's working directory expects them.
    workdir = [args for kind, args in dockerfile_instructions() if kind == "WORKDIR"][-1]
    assert ("./configs", f"{workdir}/configs") in bind_mounts(fairlane)
    # Long enough for `fairlane serve` to drain in-flight streams on SIGTERM.
    grace = fairlane["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > listener.drain_grace_s
    # Room for all the connections Envoy accepts (serve cannot lift a hard limit).
    assert fairlane["ulimits"]["nofile"] >= OPEN_FILES_WANTED


def test_envoy_admin_is_reached_from_the_containers_loopback(
    services: dict[str, dict[str, Any]], docker_policy: Policy
) -> None:
    # Envoy binds its admin interface to loopback only, so a port published by Docker
    # (which forwards to the container's address) would never reach it: Prometheus shares
    # the fairlane container's network namespace instead, and 9901 is not published.
    bootstrap = render_bootstrap(docker_policy, RunDir(Path("/tmp/fairlane/8000")))
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert admin == {"address": "127.0.0.1", "port_value": docker_policy.listener.admin_port}
    assert services["prometheus"]["network_mode"] == "service:fairlane"
    for service in services.values():
        for port in service.get("ports", []):
            assert published(str(port))[2] != admin["port_value"]


def test_vllm_service_uses_the_gpu(services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    assert interpolate(vllm["image"]).startswith("vllm/vllm-openai:")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    command = [interpolate(str(part)) for part in vllm["command"]]
    assert command[command.index("--model") + 1]
    targets = [interpolate(v).split(":")[1] for v in vllm["volumes"]]
    assert "/root/.cache/huggingface" in targets
    hf_volume = interpolate(vllm["volumes"][targets.index("/root/.cache/huggingface")])
    assert not hf_volume.startswith((".", "/"))  # a named volume, kept across runs


def test_gpu_policy_points_at_the_vllm_service(services: dict[str, dict[str, Any]]) -> None:
    policy = load_policy(ROOT / "configs/docker-gpu.yaml")
    command = [interpolate(str(part)) for part in services["vllm"]["command"]]
    port = command[command.index("--port") + 1]
    served = command[command.index("--served-model-name") + 1]
    (engine,) = policy.engines.values()
    assert engine.kind == "external"
    assert engine.url == f"http://vllm:{port}"
    assert engine.models == (served,)
    assert policy.listener.host == "0.0.0.0"
    assert policy.listener.port == 8000


def test_referenced_files_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        if "build" in service:
            assert (ROOT / service["build"]["context"]).is_dir(), name
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: undeclared volume {source}"


def test_compose_file_validates_with_docker_compose() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("docker is installed without the compose plugin")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- Prometheus and Grafana ----------------------------------------------------------------


def test_prometheus_scrapes_fairlane_and_envoy_admin(
    services: dict[str, dict[str, Any]], docker_policy: Policy
) -> None:
    mounts = dict(bind_mounts(services["prometheus"]))
    config_path = next(src for src, dst in mounts.items() if dst.endswith("prometheus.yml"))
    config = yaml.safe_load((ROOT / config_path).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    listener = docker_policy.listener

    def targets(job: dict[str, Any]) -> list[str]:
        return [t for group in job["static_configs"] for t in group["targets"]]

    assert jobs["fairlane"]["metrics_path"] == "/metrics"
    assert targets(jobs["fairlane"]) == [f"127.0.0.1:{listener.port}"]
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert targets(jobs["envoy"]) == [f"127.0.0.1:{listener.admin_port}"]
    assert listener.expose_metrics  # otherwise Envoy does not route /metrics


def test_prometheus_ui_is_published_where_it_listens(services: dict[str, dict[str, Any]]) -> None:
    # Sharing fairlane's network namespace, Prometheus' port is published by fairlane.
    listen = next(a for a in services["prometheus"]["command"] if "web.listen-address" in a)
    port = int(listen.rsplit(":", 1)[1])
    assert ("127.0.0.1", port, port) in [published(str(p)) for p in services["fairlane"]["ports"]]
    datasources = ROOT / "deploy/grafana/provisioning/datasources"
    urls = [
        source["url"]
        for path in sorted(datasources.glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
        if source["type"] == "prometheus"
    ]
    assert urls == [f"http://fairlane:{port}"]


def test_provisioned_dashboards_exist_and_parse(services: dict[str, dict[str, Any]]) -> None:
    mounts = {dst: ROOT / src for src, dst in bind_mounts(services["grafana"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert list((provisioning / "datasources").glob("*.yml"))
    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.yml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers
    for provider in providers:
        host_dir = mounts[provider["options"]["path"]]
        dashboards = sorted(host_dir.glob("*.json"))
        assert dashboards, host_dir
        for path in dashboards:
            dashboard = json.loads(path.read_text())
            assert dashboard["uid"] and dashboard["title"] and dashboard["panels"], path
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, name = home.rsplit("/", 1)
    assert (mounts[directory] / name).is_file()


# -- the Dockerfile's image ----------------------------------------------------------------


def test_dockerfile_image_user_entrypoint_and_healthcheck(docker_policy: Policy) -> None:
    instructions = dockerfile_instructions()
    final_stage = max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM")
    final = instructions[final_stage:]
    assert final[0][1] == "python:3.11-slim"
    users = [args for kind, args in final if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    entrypoint = next(json.loads(args) for kind, args in final if kind == "ENTRYPOINT")
    command = next(json.loads(args) for kind, args in final if kind == "CMD")
    assert entrypoint == ["fairlane"]
    assert command == ["serve", "--config", "configs/docker.yaml"]
    assert load_policy(ROOT / command[2]) == docker_policy
    healthcheck = next(args for kind, args in final if kind == "HEALTHCHECK")
    assert f"http://127.0.0.1:{docker_policy.listener.port}/health" in healthcheck
    assert '"-P"' in healthcheck  # the working directory holds no `envoy/`, but be safe
    assert str(docker_policy.listener.port) in [args for kind, args in final if kind == "EXPOSE"]
