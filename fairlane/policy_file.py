"""Read a policy file: YAML with unique keys, the schema, the cross-section checks; every
problem reported as ``file:line key: message``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fairlane.policy import Policy
from fairlane.policy_checks import cross_reference_problems


class PolicyError(Exception):
    """A policy file that cannot be used; ``problems`` are ``file:line key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        # An unclosed bracket is reported where it opened, not at the end of the file.
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or exc
        context = getattr(exc, "context", None)
        raise PolicyError(
            [f"{where}: invalid YAML: {context + ', ' if context else ''}{problem}"]
        ) from exc
    if not isinstance(data, dict):
        raise PolicyError([f"{source}:1: the policy must be a YAML mapping"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_describe(err, node, source) for err in exc.errors()]) from exc
    problems = cross_reference_problems(policy)
    if problems:
        raise PolicyError(
            [
                f"{source}:{_line_of(node, list(path))} {'.'.join(path)}: {message}"
                for path, message in problems
            ]
        )
    return policy


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _describe(err: Any, root: yaml.Node | None, source: str) -> str:
    loc = [str(p) for p in err["loc"]]
    message = str(err["msg"]).removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif loc == ["version"] and kind == "literal_error":
        message = f"only version 1 is supported (got {err.get('input')!r})"
    elif kind == "too_short" and loc == ["engines"]:
        message = "at least one engine is required"
    key = ".".join(loc) if loc else "(top level)"
    return f"{source}:{_line_of(root, loc)} {key}: {message}"


def _line_of(node: yaml.Node | None, loc: list[str]) -> int:
    """1-based line of the deepest YAML node that ``loc`` reaches."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if str(k.value) == part), None)
            key = next((k for k, _ in node.value if str(k.value) == part), None)
            if match is None:
                return line
            line = (key or match).start_mark.line + 1
            node = match
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line
