"""`fairlane bench engine-floor` end to end on the tiny simulator preset, seconds long."""

from __future__ import annotations

import json
from pathlib import Path

from fairlane.bench.engine_floor import FLOODER_PRIORITY, QUIET_PRIORITY
from fairlane.benchcli import build_parser
from fairlane.engines.priority_levels import priority_level


def test_engine_floor_writes_every_arm(tmp_path: Path) -> None:
    output = tmp_path / "floor.json"
    argv = ["engine-floor", "--preset", "tiny", "--prompt-tokens", "64", "--max-tokens", "16"]
    argv += ["--quiet-rps", "20", "--duration", "2", "--warmup", "0.5", "--pace", "1.0"]
    args = build_parser().parse_args([*argv, "--output", str(output)])
    assert args.run(args) == 0
    arms = {arm["arm"]: arm for arm in json.loads(output.read_text())["arms"]}
    assert list(arms) == ["solo", "held", "paced-1"]
    assert arms["solo"]["quiet_p99_x_solo"] == 1.0
    assert arms["solo"]["flooder_tokens_per_s"] is None
    assert arms["held"]["flooder_x_held"] == 1.0
    assert arms["held"]["flooder_tokens_per_s"] > 0
    # Fairlane's pacer, fed by the completions it sees (the quiet tenant's 20/s too).
    assert arms["paced-1"]["pacing"] == 1.0
    assert 0 < arms["paced-1"]["flooder_x_held"] < 1.5
    for arm in arms.values():
        assert arm["quiet_ttft_ms"]["count"] > 10


def test_engine_floor_runs_every_arm_at_each_token_budget(tmp_path: Path) -> None:
    output = tmp_path / "floor.json"
    argv = ["engine-floor", "--preset", "tiny", "--prompt-tokens", "64", "--max-tokens", "8"]
    argv += ["--quiet-rps", "20", "--duration", "1", "--warmup", "0.2", "--pace"]
    argv += ["--max-num-batched-tokens", "512", "24"]
    args = build_parser().parse_args([*argv, "--output", str(output)])
    assert args.run(args) == 0
    arms = json.loads(output.read_text())["arms"]
    assert [(a["arm"], a["max_num_batched_tokens"]) for a in arms] == [
        ("solo", 512), ("held", 512), ("solo", 24), ("held", 24),
    ]  # fmt: skip
    # Ratios are against the first budget's solo and held: the engine as configured.
    assert arms[0]["quiet_p99_x_solo"] == 1.0 and arms[1]["flooder_x_held"] == 1.0
    # Next to the flooder's 7 decodes a 24-token step takes 17 prompt tokens: the
    # 64-token prompt needs four steps instead of one.
    assert arms[2]["quiet_ttft_ms"]["p50"] > arms[0]["quiet_ttft_ms"]["p50"]


def test_the_flooder_is_a_worse_priority_level_than_the_quiet_tenant() -> None:
    # Isolation holds work back by level: with both in one level the isolated arms
    # would measure no isolation at all.
    assert priority_level(FLOODER_PRIORITY) > priority_level(QUIET_PRIORITY)
