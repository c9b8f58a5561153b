"""docs/policy.md documents every key of the policy schema, and only those.

Convention: every key has one table row whose first cell is its full dotted path in
backticks, with ``<name>`` for a mapping's user-chosen keys (``tenants.<name>.weight``),
and whose third cell is its default exactly as the schema has it (``required`` when
there is none). A key added to ``fairlane/policy.py`` without a row, a row for a key
that no longer exists, or a default changed on one side only fails here.

The other user docs are held to the code the same way: every error code of
``extproc/errors.py`` is explained in docs/troubleshooting.md, and every ``fairlane_*``
metric the docs name is one the worker exports.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fairlane.engines.sim.engine import SimEngine
from fairlane.engines.sim.metrics import build_registry
from fairlane.engines.sim.presets import PRESETS
from fairlane.envoy.common import CONTROL_CLUSTER, WORKER_CLUSTER
from fairlane.extproc.errors import Reason
from fairlane.policy import Policy
from fairlane.rundir import RunDir
from fairlane.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|([^|]*)\|", re.MULTILINE)
USER_DOCS = ("quickstart.md", "operations.md", "troubleshooting.md", "architecture.md", "policy.md")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds directly or as ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _model_in(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _mapped_model(annotation: Any) -> type[BaseModel] | None:
    """The value model of a ``dict[Name, Model]`` field."""
    if typing.get_origin(annotation) is dict:
        return _model_in(typing.get_args(annotation)[1])
    return None


def schema_keys(model: type[BaseModel] = Policy, prefix: str = "") -> dict[str, FieldInfo]:
    """Every key path of the schema → its field, sections included."""
    keys: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys[path] = field
        nested = _model_in(field.annotation)
        if nested is not None:
            keys.update(schema_keys(nested, f"{path}."))
        mapped = _mapped_model(field.annotation)
        if mapped is not None:
            keys.update(schema_keys(mapped, f"{path}.<name>."))
    return keys


def default_cell(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "(section)"
    if isinstance(default, tuple):
        default = list(default)
    return f"`{json.dumps(default)}`"


def documented_rows() -> dict[str, tuple[str, str]]:
    text = (DOCS / "policy.md").read_text()
    rows: dict[str, tuple[str, str]] = {}
    for key, type_cell, default in ROW.findall(text):
        assert key not in rows, f"{key} is documented twice"
        rows[key] = (type_cell.strip(), default.strip())
    return rows


def test_the_walk_sees_nested_and_mapped_keys() -> None:
    keys = schema_keys()
    for key in (
        "version",
        "listener.port",
        "tenants.<name>.limits.tokens_per_day",
        "engines.<name>.queue.timeout_s",
        "engines.<name>.adaptive.max_kv_usage",
        "unknown_tenants.limits.burst_seconds",
    ):
        assert key in keys, key


def test_every_key_is_documented() -> None:
    missing = sorted(set(schema_keys()) - set(documented_rows()))
    assert not missing, f"docs/policy.md lacks rows for: {missing}"


def test_no_documented_key_is_made_up() -> None:
    extra = sorted(set(documented_rows()) - set(schema_keys()))
    assert not extra, f"docs/policy.md documents keys the schema does not have: {extra}"


def test_documented_defaults_match_the_schema() -> None:
    rows = documented_rows()
    wrong = {
        key: (rows[key][1], default_cell(field))
        for key, field in schema_keys().items()
        if key in rows and rows[key][1] != default_cell(field)
    }
    assert not wrong, f"(documented, schema) defaults differ: {wrong}"


def test_every_row_has_a_type() -> None:
    assert all(type_cell for type_cell, _ in documented_rows().values())


def test_the_full_example_is_a_valid_policy() -> None:
    from fairlane.policy_file import parse_policy

    text = (DOCS / "policy.md").read_text()
    example = re.search(r"## Full example\n.*?```yaml\n(.*?)```", text, re.DOTALL)
    assert example is not None, "docs/policy.md has no `## Full example` yaml block"
    policy = parse_policy(example.group(1), "docs/policy.md example")
    # It shows the sections a reader looks for.
    assert policy.tenants and policy.engines
    assert any(t.limits.tokens_per_minute for t in policy.tenants.values())
    assert any(e.kind == "external" for e in policy.engines.values())
    assert any(e.adaptive is not None for e in policy.engines.values())


def test_troubleshooting_explains_every_error_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    for reason in Reason:
        heading = re.search(rf"^### `{reason.code}` \((\d+)\)", text, re.MULTILINE)
        assert heading, f"docs/troubleshooting.md has no `### `{reason.code}` (status)` heading"
        assert int(heading.group(1)) == reason.status, reason


def test_docs_name_only_exported_metrics() -> None:
    worker = Worker(ROOT / "configs/quickstart.yaml", RunDir(Path("/nonexistent/fairlane")))
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    # The simulator's own fairlane_sim_* metrics, on its /metrics, count too.
    simulator, _ = build_registry(SimEngine(PRESETS["tiny"]), "m")
    names = set()
    for family in [*worker.metrics.registry.collect(), *simulator.collect()]:
        names.add(family.name)
        names.update(family.name + s for s in suffixes[family.type])
    # Other fairlane_* words the docs may show: access-log `details` of refusals and
    # Envoy's names for the worker's clusters.
    others = {f"fairlane_{reason.code}" for reason in Reason} | {WORKER_CLUSTER, CONTROL_CLUSTER}
    for doc in USER_DOCS:
        used = set(re.findall(r"\bfairlane_[a-z_]+[a-z]", (DOCS / doc).read_text()))
        assert used <= names | others, (
            f"{doc} names unknown metrics: {sorted(used - names - others)}"
        )
    listed = set(re.findall(r"`(fairlane_[a-z_]+)", (DOCS / "operations.md").read_text()))
    exported = {
        f"{f.name}_total" if f.type == "counter" else f.name
        for f in worker.metrics.registry.collect()
    }
    assert exported <= listed, f"docs/operations.md does not list {sorted(exported - listed)}"
