"""The files the containers are built and provisioned from, checked against the code (no
Docker engine needed): the Grafana dashboard's metric names and datasources, and the
Dockerfile's COPY sources against the packages and .dockerignore. The compose services
and the policy they run are checked in test_deployment_compose.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath

import yaml

from fairlane.extproc.metrics import Metrics
from fairlane.rundir import RunDir
from fairlane.worker import Worker

from testkit.deployment import ROOT, dockerfile_instructions
from testkit.envoy_config import validate

DASHBOARD = ROOT / "deploy/grafana/dashboards/fairlane.json"


# -- helpers ------------------------------------------------------------------------------


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


# -- the Grafana dashboard -----------------------------------------------------------------


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


def test_the_load_balancer_config_validates_with_envoy() -> None:
    """deploy/lb/envoy.yaml runs in the scale profile only, where no test starts it."""
    result = validate(ROOT / "deploy/lb/envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
