"""The container deliverables, checked structurally (no Docker engine needed).

docker-compose.yml, the Dockerfile and .dockerignore, the Prometheus and Grafana
provisioning, the dashboard's metric names and the container policies must agree with
each other and with the code: a renamed metric, a moved file or a port changed on one
side only fails here instead of in someone's `docker compose up`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from fairlane.envoy.bootstrap import render_bootstrap
from fairlane.extproc.metrics import Metrics
from fairlane.policy import Policy
from fairlane.policy_file import load_policy
from fairlane.rlimits import OPEN_FILES_WANTED
from fairlane.rundir import RunDir
from fairlane.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/fairlane.json"
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


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order (the last match wins)."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = str(PurePosixPath(line.lstrip("!").strip("/")))
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_patterns():
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def exposed_metric_names() -> tuple[set[str], set[str]]:
    """(metric family names, sample names Prometheus sees) of the worker's registry:
    ``Metrics`` plus the ``GatewayCollector`` the worker registers in it."""
    # The worker's own wiring: Metrics plus the GatewayCollector it registers.
    worker = Worker(ROOT / "configs/docker.yaml", RunDir(Path("/nonexistent/fairlane")))
    metrics = worker.metrics
    assert isinstance(metrics, Metrics)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    families, samples = set(), set()
    for family in metrics.registry.collect():
        families.add(family.name)
        samples.update(family.name + suffix for suffix in suffixes[family.type])
    # Both sources are there: Metrics' own series and the GatewayCollector's gauges.
    assert {"fairlane_requests", "fairlane_inflight"} <= families
    return families, samples


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


def test_dashboard_uses_only_real_metric_names() -> None:
    families, samples = exposed_metric_names()
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    queried = {n for q in queries for n in re.findall(r"\bfairlane_[a-z_]+", q)}
    assert queried <= samples, queried - samples
    # Prose (titles, descriptions) may name a family or a series.
    named = set(re.findall(r"\bfairlane_[a-z_]+", DASHBOARD.read_text()))
    assert named <= samples | families, named - samples - families
    # The panels the operations docs promise.
    for name in (
        "fairlane_requests_total",
        "fairlane_ttft_seconds_bucket",
        "fairlane_queue_depth",
        "fairlane_queue_wait_seconds_bucket",
        "fairlane_tokens_total",
        "fairlane_rejected_total",
        "fairlane_inflight",
        "fairlane_engine_capacity",
        "fairlane_engine_up",
        "fairlane_config_generation",
        "fairlane_config_reload_failures_total",
    ):
        assert name in queried, name


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {
        source["uid"]
        for path in sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


# -- Dockerfile and .dockerignore ---------------------------------------------------------


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


def test_dockerfile_copies_every_package_and_nothing_ignored() -> None:
    sources = []
    for kind, args in dockerfile_instructions():
        if kind == "COPY" and not args.startswith("--from"):
            *srcs, _ = args.split()
            sources += srcs
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is left out of the build context"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs | {"pyproject.toml", "configs"} <= set(sources)
    assert (ROOT / "envoy/usage.lua").is_file() and not ignored("envoy/usage.lua")


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "build/x", "fairlane.egg-info/PKG-INFO"):
        assert ignored(path), path
    for path in ("extproc/__pycache__/gateway.cpython-311.pyc", "bench/results/run.json"):
        assert ignored(path), path
    for path in ("fairlane/cli.py", "extproc/gateway.py", "configs/docker.yaml"):
        assert not ignored(path), path
