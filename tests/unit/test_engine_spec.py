"""How each kind of engine is started: command lines, ports, health paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fairlane.engine_config import EngineConfig
from fairlane.engines import tinylora, tinymodel
from fairlane.engines.spec import build_argv, engine_spec


def config(**fields: Any) -> EngineConfig:
    return EngineConfig.model_validate(fields)


def flag(argv: list[str], name: str) -> list[str]:
    """The values after ``name`` up to the next flag."""
    i = argv.index(name) + 1
    values = []
    while i < len(argv) and not argv[i].startswith("--"):
        values.append(argv[i])
        i += 1
    return values


def test_vllm_command_line() -> None:
    cfg = config(
        kind="vllm",
        models=["tiny-llama", "tiny-alias"],
        model_path="/models/tiny",
        port=8123,
        args=["--max-model-len", "1024"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    spec = engine_spec("v", cfg)
    assert spec.managed
    assert (spec.host, spec.port, spec.health_path) == ("127.0.0.1", 8123, "/health")
    assert spec.argv[:4] == [sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(spec.argv, "--model") == ["/models/tiny"]
    assert flag(spec.argv, "--served-model-name") == ["tiny-llama", "tiny-alias"]
    assert flag(spec.argv, "--host") == ["127.0.0.1"]
    assert flag(spec.argv, "--port") == ["8123"]
    assert "--disable-uvicorn-access-log" in spec.argv
    assert "--scheduling-policy" not in spec.argv
    # The policy's own args come last, so they can override anything above.
    assert spec.argv[-2:] == ["--max-model-len", "1024"]
    assert spec.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}


def test_vllm_priority_scheduling_follows_inject_priority() -> None:
    argv = build_argv(
        config(kind="vllm", models=["m"], inject_priority=True, args=["--enforce-eager"]),
        "0.0.0.0",
        9000,
    )
    assert flag(argv, "--scheduling-policy") == ["priority"]
    assert argv.index("--scheduling-policy") < argv.index("--enforce-eager")
    assert flag(argv, "--host") == ["0.0.0.0"]


@pytest.mark.parametrize(
    ("fields", "scheduler"),
    [
        ({"inject_priority": True}, "isolated_prefills"),  # on by default with priorities
        ({"inject_priority": "body"}, "isolated_prefills"),
        ({"inject_priority": True, "isolate_prefills": True}, "isolated_prefills"),
        ({"inject_priority": True, "isolate_prefills": "prompts"}, "isolated_prefills"),
        ({"inject_priority": True, "isolate_prefills": "step"}, "isolated_prefill_steps"),
        ({"inject_priority": True, "isolate_prefills": False}, None),
        ({}, None),  # nothing to isolate by
    ],
)
def test_vllm_isolated_prefills_follow_inject_priority(
    fields: dict[str, Any], scheduler: str | None
) -> None:
    argv = build_argv(config(kind="vllm", models=["m"], **fields), "127.0.0.1", 9000)
    expected = [f"fairlane.engines.vllm_scheduler.{scheduler}"] if scheduler else []
    assert (flag(argv, "--scheduler-cls") if "--scheduler-cls" in argv else []) == expected


def test_sim_isolates_prefills_as_the_vllm_scheduler_does() -> None:
    argv = build_argv(config(kind="sim", models=["m"], inject_priority=True), "h", 1)
    assert flag(argv, "--scheduling-policy") == ["priority"]
    assert flag(argv, "--isolate-prefills") == ["prompts"]
    steps = config(kind="sim", models=["m"], inject_priority=True, isolate_prefills="step")
    assert flag(build_argv(steps, "h", 1), "--isolate-prefills") == ["step"]
    plain = config(kind="sim", models=["m"], inject_priority=True, isolate_prefills=False)
    assert "--isolate-prefills" not in build_argv(plain, "h", 1)


def test_isolate_prefills_takes_a_known_mode() -> None:
    with pytest.raises(ValidationError, match="isolate_prefills"):
        config(kind="sim", models=["m"], inject_priority=True, isolate_prefills="decodes")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kind": "external", "url": "http://127.0.0.1:8100", "inject_priority": True},
            "start an external vLLM with --scheduler-cls fairlane.engines.vllm_scheduler",
        ),
        ({"kind": "sglang", "inject_priority": True}, "SGLang's scheduler is not supported"),
        ({"kind": "vllm"}, "isolate_prefills needs inject_priority"),
    ],
)
def test_isolate_prefills_only_where_fairlane_starts_it(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        config(models=["m"], isolate_prefills=True, **fields)
    # Left unset, the same engines are simply started without it.
    assert not config(models=["m"], **fields).prefill_isolation


def test_vllm_without_model_path_loads_the_model_name() -> None:
    argv = build_argv(config(kind="vllm", models=["org/model-8b"]), "127.0.0.1", 9000)
    assert flag(argv, "--model") == ["org/model-8b"]
    assert flag(argv, "--served-model-name") == ["org/model-8b"]


def test_vllm_loads_the_adapters_and_batches_them_together() -> None:
    cfg = config(
        kind="vllm",
        models=["llama-8b"],
        adapters={"alice-lora": "/adapters/alice", "bob-lora": "/adapters/bob,v2=final"},
        args=["--max-lora-rank", "64"],
    )
    argv = build_argv(cfg, "127.0.0.1", 9000)
    assert flag(argv, "--served-model-name") == ["llama-8b"]  # adapters are no aliases
    assert "--enable-lora" in argv
    assert flag(argv, "--max-loras") == ["2"]
    assert [json.loads(m) for m in flag(argv, "--lora-modules")] == [
        {"name": "alice-lora", "path": "/adapters/alice"},
        {"name": "bob-lora", "path": "/adapters/bob,v2=final"},  # vLLM's name=path breaks
    ]
    assert argv[-2:] == ["--max-lora-rank", "64"]
    assert cfg.served == ("llama-8b", "alice-lora", "bob-lora")


def test_vllm_without_adapters_has_no_lora_flags() -> None:
    argv = build_argv(config(kind="vllm", models=["m"]), "127.0.0.1", 9000)
    assert not [a for a in argv if "lora" in a]


def test_sglang_command_line_and_health() -> None:
    cfg = config(
        kind="sglang", models=["qwen"], model_path="/m/qwen", port=30000, args=["--tp", "2"]
    )
    spec = engine_spec("s", cfg)
    assert spec.managed
    assert spec.argv[:4] == [sys.executable, "-P", "-m", "sglang.launch_server"]
    assert flag(spec.argv, "--model-path") == ["/m/qwen"]
    assert flag(spec.argv, "--served-model-name") == ["qwen"]
    assert flag(spec.argv, "--port") == ["30000"]
    assert spec.argv[-2:] == ["--tp", "2"]
    # SGLang answers GET /health once its HTTP server and scheduler are up.
    assert spec.health_path == "/health"
    assert "--scheduling-policy" not in spec.argv


def test_sglang_priority_runs_low_values_first() -> None:
    argv = build_argv(config(kind="sglang", models=["q"], inject_priority=True), "h", 1)
    assert "--enable-priority-scheduling" in argv
    assert "--schedule-low-priority-values-first" in argv


def test_sglang_serves_one_name_only() -> None:
    # SGLang's --served-model-name takes one name: the policy refuses more...
    with pytest.raises(ValidationError, match="exactly one model"):
        config(kind="sglang", models=["a", "b"])
    # ...and the command line is never built from a config that slipped past it.
    unchecked = EngineConfig.model_construct(kind="sglang", models=("a", "b"))
    with pytest.raises(ValueError, match="one model"):
        build_argv(unchecked, "127.0.0.1", 30000)


def test_sim_command_line() -> None:
    cfg = config(kind="sim", models=["a", "b"], preset="h100-8b", args=["--seed", "3"])
    spec = engine_spec("sim", cfg, port=8200)
    assert spec.argv[:4] == [sys.executable, "-P", "-m", "fairlane.engines.sim"]
    assert flag(spec.argv, "--preset") == ["h100-8b"]
    assert flag(spec.argv, "--port") == ["8200"]
    assert [spec.argv[i + 1] for i, a in enumerate(spec.argv) if a == "--model"] == ["a", "b"]
    assert spec.argv[-2:] == ["--seed", "3"]


def test_sim_answers_to_its_adapters_names() -> None:
    cfg = config(kind="sim", models=["base"], adapters={"alice-lora": "unused"})
    argv = build_argv(cfg, "127.0.0.1", 8200)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--model"] == ["base", "alice-lora"]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("external", "list an external engine's LoRA adapters in `models`"),
        ("sglang", "SGLang's LoRA adapters are not supported"),
    ],
)
def test_adapters_only_where_fairlane_can_load_them(kind: str, message: str) -> None:
    url = {"url": "http://127.0.0.1:8100"} if kind == "external" else {}
    with pytest.raises(ValidationError, match=message):
        config(kind=kind, models=["m"], adapters={"a": "/a"}, **url)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("http://127.0.0.1:8100", "127.0.0.1", 8100),
        ("http://vllm.internal:8100/", "vllm.internal", 8100),
        ("http://vllm.internal", "vllm.internal", 80),
        ("http://[::1]:9000", "::1", 9000),
    ],
)
def test_external_is_a_url_and_never_started(url: str, host: str, port: int) -> None:
    spec = engine_spec("ext", config(kind="external", url=url, models=["m"]), port=1234)
    assert not spec.managed
    assert spec.argv == []
    assert spec.env == {}
    assert (spec.host, spec.port, spec.health_path) == (host, port, "/health")


def test_real_engines_yield_the_cpu_to_the_gateway_by_default() -> None:
    """vLLM and SGLang run at nice 10 unless the policy says otherwise; the simulator, a
    stand-in for a GPU whose timing benchmarks measure, at 0."""
    assert config(kind="vllm", models=["m"]).cpu_nice == 10
    assert config(kind="sglang", models=["m"]).cpu_nice == 10
    assert config(kind="sim", models=["m"]).cpu_nice == 0
    assert config(kind="vllm", models=["m"], nice=0).cpu_nice == 0
    assert config(kind="sim", models=["m"], nice=19).cpu_nice == 19
    for bad in (-1, 20):
        with pytest.raises(ValidationError):
            config(kind="vllm", models=["m"], nice=bad)


def test_ports_are_allocated_when_absent() -> None:
    cfg = config(kind="vllm", models=["m"])
    ports = {engine_spec("v", cfg).port for _ in range(5)}
    assert all(1024 <= p <= 65535 for p in ports)
    assert len(ports) > 1  # a free port each time, not a fixed default
    # An offered port is used when the policy names none; the policy's port wins.
    assert engine_spec("v", cfg, port=8311).port == 8311
    assert engine_spec("v", config(kind="vllm", models=["m"], port=8312), port=8311).port == 8312
    spec = engine_spec("v", cfg, port=8313)
    assert flag(spec.argv, "--port") == [str(spec.port)]


def test_tiny_model_is_not_regenerated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Idempotence without transformers: a complete OUTDIR is kept as it is."""
    assert not tinymodel.is_complete(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_text("{}")
    assert not tinymodel.is_complete(tmp_path)  # no marker: an interrupted run
    (tmp_path / tinymodel.MARKER).write_text(json.dumps(tinymodel.fingerprint(0)))
    assert tinymodel.is_complete(tmp_path)
    assert not tinymodel.is_complete(tmp_path, seed=1)  # another seed is another model
    assert tinymodel.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("kept")
    assert (tmp_path / "model.safetensors").read_text() == "{}"


def test_tiny_adapters_fit_the_tiny_models_projections() -> None:
    # Grouped-query attention: fewer key/value heads than query heads.
    assert tinylora.projection_sizes(tinymodel.SHAPE) == {"q_proj": 256, "v_proj": 128}
    no_head_dim = {"hidden_size": 512, "num_attention_heads": 8}
    assert tinylora.projection_sizes(no_head_dim) == {"q_proj": 512, "v_proj": 512}


def test_an_engine_never_gets_a_port_the_policy_gave_another_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The listener's ports are picked by whoever wrote the policy (a test, a benchmark)
    and Envoy binds its admin port after the engines' ports are picked: a port picked
    for an engine must skip them, and other engines' fixed ports, though none is bound."""
    from fairlane import ports
    from fairlane.engines.supervisor import EngineSupervisor
    from fairlane.policy_file import parse_policy
    from fairlane.rundir import RunDir

    admin, fixed, free = ports.free_port(), ports.free_port(), ports.free_port()
    policy = parse_policy(
        f"version: 1\nlistener: {{admin_port: {admin}}}\nengines:\n"
        f"  a: {{kind: sim, models: [a]}}\n  b: {{kind: sim, models: [b], port: {fixed}}}\n"
    )
    monkeypatch.setattr(ports, "_candidates_left", iter([admin, fixed, free]))
    run = EngineSupervisor(policy, RunDir(tmp_path))._new_run("a", policy)
    assert run.spec.port == free
