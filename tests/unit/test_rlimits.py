"""fairlane.rlimits: serve lifts the open-file limit its children inherit."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from fairlane.rlimits import OPEN_FILES_WANTED, connections_allowed, raise_open_file_limit


def _in_child(soft: int, code: str) -> str:
    """Run ``code`` in a Python whose soft open-file limit starts at ``soft``."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-P", "-c", code],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_the_soft_limit_is_lifted_as_far_as_the_hard_limit_allows() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard}: nothing to lift")
    code = (
        "import resource, subprocess\n"
        "from fairlane.rlimits import raise_open_file_limit\n"
        "got = raise_open_file_limit()\n"
        # A child started afterwards (as Envoy is) sees the new limit.
        "child = subprocess.run(['sh', '-c', 'ulimit -n'], capture_output=True, text=True)\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], child.stdout.strip())\n"
    )
    got, now, child = _in_child(256, code).split()
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    assert int(got) == int(now) == int(child) == want


@pytest.mark.parametrize(
    ("soft", "hard", "result", "set_to"),
    [
        (OPEN_FILES_WANTED + 1, resource.RLIM_INFINITY, OPEN_FILES_WANTED + 1, None),
        (resource.RLIM_INFINITY, resource.RLIM_INFINITY, OPEN_FILES_WANTED, None),
        (1024, resource.RLIM_INFINITY, OPEN_FILES_WANTED, OPEN_FILES_WANTED),
        (1024, 4096, 4096, 4096),
        (4096, 4096, 4096, None),
    ],
)
def test_what_is_asked_of_the_kernel(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, result: int, set_to: int | None
) -> None:
    """The branches the machine's own limits cannot reach, against a fake getrlimit."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert raise_open_file_limit() == result
    assert calls == ([] if set_to is None else [(set_to, hard)])


def test_connections_allowed_is_half_the_files_up_to_envoys_cap() -> None:
    assert connections_allowed(1024) == 512
    assert connections_allowed(10**9) == 20_000
