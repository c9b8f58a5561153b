"""API keys of external engines (vLLM's `--api-key`), read from the environment of
`fairlane serve`, so that no key is written in the policy or anywhere on disk."""

from __future__ import annotations

from collections.abc import Mapping

from fairlane.policy import Policy
from fairlane.policy_file import PolicyError


def engine_keys(policy: Policy, environ: Mapping[str, str]) -> dict[str, str]:
    """Engine name → its API key, for the engines with ``api_key_env``. Raises
    PolicyError naming every variable that is unset or empty."""
    wanted = {name: e.api_key_env for name, e in policy.engines.items() if e.api_key_env}
    problems = []
    for name, var in sorted(wanted.items()):
        key = environ.get(var, "")
        if not key:
            problems.append(
                f"engines.{name}.api_key_env: ${var} is not set in the environment of "
                "fairlane serve"
            )
        elif not (key.isascii() and key.isprintable()):
            # It travels in a header: a control character could split it.
            problems.append(f"engines.{name}.api_key_env: ${var} must be printable ASCII")
    if problems:
        raise PolicyError(problems)
    return {name: environ[var] for name, var in wanted.items()}
