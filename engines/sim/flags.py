"""The simulator's command line: vLLM's flags where the simulator models them."""

from __future__ import annotations

import argparse
from dataclasses import replace

from .presets import DEFAULT_PRESET, PRESETS, SimPreset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fairlane sim", description="A model-less, vLLM-like OpenAI server."
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--model", action="append", help="served model name, repeatable (default: sim-model)"
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help="requests accepted beyond a full batch before 503s (default: 10 x max_num_seqs)",
    )
    parser.add_argument(
        "--scheduling-policy",
        choices=["fcfs", "priority"],
        default="fcfs",
        help="order of the waiting queue, as vLLM's flag (priority: lower first)",
    )
    parser.add_argument(
        "--isolate-prefills",
        nargs="?",
        choices=["prompts", "step"],
        const="prompts",
        help="with --scheduling-policy priority, as Fairlane's vLLM scheduler "
        "(fairlane.engines.vllm_scheduler): a step that prefills a better priority's prompt "
        "runs no worse prompt (prompts, the default) or nothing worse, decodes included (step)",
    )
    parser.add_argument(
        "--announcements",
        action="store_true",
        help="with --isolate-prefills, as Fairlane's vLLM scheduler: listen on UDP at "
        "--host:--port for Fairlane's word of the requests it admits, and start no worse "
        "prompt while a better one is on its way (fairlane.engines.announcements)",
    )
    parser.add_argument(
        "--heavy-prefill-tokens",
        type=int,
        help="with --isolate-prefills, as Fairlane's vLLM scheduler: the most prompt tokens "
        "a step prefills of a worse priority level than the best that arrived in the last "
        "30 s (fairlane.engines.heavy_prefills)",
    )
    parser.add_argument(
        "--max-num-seqs", type=int, help="most sequences in one step, as vLLM's flag"
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="token budget of one step, as vLLM's flag (prompts beyond it are chunked)",
    )
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate, as vLLM")
    parser.add_argument("--ssl-keyfile", help="and this key (both or neither)")
    args = parser.parse_args(argv)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        parser.error("--ssl-certfile and --ssl-keyfile go together")
    for flag in ("max_queue", "max_num_seqs", "max_num_batched_tokens", "heavy_prefill_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.isolate_prefills and args.scheduling_policy != "priority":
        parser.error("--isolate-prefills needs --scheduling-policy priority")
    if args.announcements and not args.isolate_prefills:
        parser.error("--announcements needs --isolate-prefills")
    if args.heavy_prefill_tokens and not args.isolate_prefills:
        parser.error("--heavy-prefill-tokens needs --isolate-prefills")
    preset = configured_preset(args)
    if preset.max_num_batched_tokens < preset.max_num_seqs:
        # As vLLM: every running sequence's next token must fit in one step.
        parser.error(
            f"--max-num-batched-tokens ({preset.max_num_batched_tokens}) must be at least "
            f"--max-num-seqs ({preset.max_num_seqs})"
        )
    return args


def configured_preset(args: argparse.Namespace) -> SimPreset:
    """The preset, with the batch limits the command line overrides."""
    overrides = {
        flag: getattr(args, flag)
        for flag in ("max_num_seqs", "max_num_batched_tokens")
        if getattr(args, flag) is not None
    }
    return replace(PRESETS[args.preset], **overrides)
