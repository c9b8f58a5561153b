"""The simulator's command line: vLLM's batch flags override the preset's limits."""

from __future__ import annotations

import pytest

from fairlane.engines.sim.flags import configured_preset, parse_args
from fairlane.engines.sim.presets import PRESETS


def test_batch_flags_override_the_preset_and_nothing_else() -> None:
    args = parse_args(["--preset", "a100-8b", "--max-num-batched-tokens", "768"])
    preset = configured_preset(args)
    base = PRESETS["a100-8b"]
    assert preset.max_num_batched_tokens == 768
    assert preset.max_num_seqs == base.max_num_seqs
    assert preset.base_step_ms == base.base_step_ms
    both = configured_preset(parse_args(["--max-num-seqs", "64", "--max-num-batched-tokens", "64"]))
    assert (both.max_num_seqs, both.max_num_batched_tokens) == (64, 64)


def test_without_flags_the_preset_is_unchanged() -> None:
    assert configured_preset(parse_args(["--preset", "l4-8b"])) == PRESETS["l4-8b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-num-seqs", "0"], "--max-num-seqs must be at least 1"),
        (["--max-num-batched-tokens", "-5"], "--max-num-batched-tokens must be at least 1"),
        (
            ["--preset", "a100-8b", "--max-num-batched-tokens", "100"],
            "--max-num-batched-tokens (100) must be at least --max-num-seqs (256)",
        ),
    ],
)
def test_impossible_batch_limits_are_refused_as_vllm_does(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
