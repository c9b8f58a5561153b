"""The noisy-neighbour benchmark with several gateways: routing, policies, pooled metrics,
the spread arm's arithmetic and its report."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fairlane.bench.engine_watch import pooled_queue_waits
from fairlane.bench.loadgen import Client, Workload, round_robin
from fairlane.bench.noisy_args import add_arguments, check_arguments, default_output
from fairlane.bench.noisy_deploy import arm_policy, gateway_max_inflight, gateway_policy
from fairlane.bench.noisy_report import (
    FLOODER,
    PINNED,
    SPREAD,
    expected_spread_ratio,
    gateways_label,
    summarize_spread,
)
from fairlane.bench.records import RequestRecord, RunResult
from fairlane.bench.report import RESULTS_DIR
from fairlane.bench.stack import write_policy
from fairlane.policy_file import parse_policy

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
CHAT = "/v1/chat/completions"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


# -- routing ---------------------------------------------------------------------------


def test_round_robin_cycles_through_the_urls() -> None:
    assert [round_robin((A, B, C), turn) for turn in range(5)] == [A, B, C, A, B]
    assert round_robin((A,), 7) == A


def test_each_tenant_takes_turns_over_all_gateways_unless_pinned() -> None:
    workload = Workload(A, "m", 1, 1, more_urls=(B, C), pinned=frozenset({PINNED}))
    client = Client(workload)
    spread = [client.url_for(SPREAD) for _ in range(6)]
    assert spread == [A + CHAT, B + CHAT, C + CHAT] * 2
    assert {client.url_for(PINNED) for _ in range(6)} == {A + CHAT}
    # Turns are per tenant: another tenant starts at the first gateway, whatever came before.
    assert [client.url_for("quiet-1") for _ in range(2)] == [A + CHAT, B + CHAT]


def test_one_gateway_always_uses_the_base_url() -> None:
    client = Client(Workload(A, "m", 1, 1))
    assert {client.url_for(t) for t in ("quiet-1", FLOODER, PINNED)} == {A + CHAT}


def test_a_tenant_can_have_answers_of_its_own_length() -> None:
    workload = Workload(A, "m", 1, 256, max_tokens_spread=0.5, max_tokens_of=(("quiet-1", 16),))
    client = Client(workload)
    quiet = {json.loads(client.body_for("quiet-1"))["max_tokens"] for _ in range(50)}
    others = {json.loads(client.body_for("flooder"))["max_tokens"] for _ in range(200)}
    assert quiet == {16}
    assert others == set(workload.lengths()) and len(others) == 9  # the spread around 256
    args = _args("--quiet-max-tokens", "16")
    assert (args.quiet_max_tokens, _args().quiet_max_tokens) == (16, None)


def test_unique_prompts_differ_in_their_first_word_only() -> None:
    """For an engine with a prefix cache: no two requests, in this run or another, share
    their prompt's start; the max_tokens drawn are the same as without."""
    spread = {"max_tokens_spread": 0.5, "seed": 3}
    plain = Client(Workload(A, "m", 5, 256, **spread))
    unique = Client(Workload(A, "m", 5, 256, unique_prompts=True, **spread))
    other_run = Client(Workload(A, "m", 5, 256, unique_prompts=True, **spread))
    bodies = [json.loads(client.body_for(FLOODER)) for client in (plain, unique, other_run)]
    for _ in range(20):
        bodies += [json.loads(client.body_for(FLOODER)) for client in (plain, unique, other_run)]
    plains, uniques, others = bodies[0::3], bodies[1::3], bodies[2::3]
    assert [b["max_tokens"] for b in uniques] == [b["max_tokens"] for b in plains]
    texts = [b["messages"][0]["content"] for b in uniques + others]
    assert len({text.split()[0] for text in texts}) == len(texts)
    assert {text.split(" ", 1)[1] for text in texts} == {plains[0]["messages"][0]["content"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine", "external"], "--engine external and --engine-url go together"),
        (["--engine-url", A], "--engine external and --engine-url go together"),
        (["--engine", "external", "--engine-url", A], "needs --max-inflight"),
        (
            ["--engine", "external", "--engine-url", A, "--max-inflight", "8",
             "--max-num-batched-tokens", "768"],
            "start yours with them instead",
        ),
    ],
)  # fmt: skip
def test_an_external_engine_takes_only_the_flags_that_fit_it(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        check_arguments(_args(*argv))


def test_an_external_engine_url_loses_a_trailing_slash() -> None:
    args = _args("--engine", "external", "--engine-url", A + "/", "--max-inflight", "8")
    check_arguments(args)
    assert (args.engine_url, args.max_inflight) == (A, 8)


# -- policies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "gateways", "each"), [(256, 1, 256), (256, 2, 128), (256, 3, 85), (2, 3, 1)]
)
def test_max_inflight_is_divided_between_gateways(total: int, gateways: int, each: int) -> None:
    assert gateway_max_inflight(total, gateways) == each


def test_one_gateway_policy_is_unchanged_by_the_new_options() -> None:
    policy = arm_policy(_args(), "fair", ["quiet-1", FLOODER], 256, None)
    assert "state" not in policy
    assert policy["engines"]["sim"]["kind"] == "sim"
    assert policy["engines"]["sim"]["max_inflight"] == 256


def test_the_token_budget_goes_to_the_managed_engine_as_its_flag(tmp_path: Path) -> None:
    args = _args("--max-num-batched-tokens", "768")
    for arm in ("fifo", "fair"):  # every arm runs on the same engine
        policy = arm_policy(args, arm, ["quiet-1", FLOODER], 256, None)
        assert policy["engines"]["sim"]["args"] == ["--max-num-batched-tokens", "768"]
    parsed = parse_policy(write_policy(tmp_path, policy).read_text(), "p.yaml")
    assert parsed.engines["sim"].args == ("--max-num-batched-tokens", "768")


def test_the_engine_nice_goes_to_a_managed_engine_not_to_an_external_one(
    tmp_path: Path,
) -> None:
    policy = arm_policy(_args("--engine-nice", "5"), "fair", ["quiet-1", FLOODER], 256, None)
    assert (
        parse_policy(write_policy(tmp_path, policy).read_text(), "p.yaml").engines["sim"].cpu_nice
        == 5
    )
    # The bench starts a shared engine itself (at that nice); the policy may not name one.
    shared = gateway_policy(policy, [11, 12, 13], "http://127.0.0.1:9000", 2, {"kind": "local"})
    assert "nice" not in shared["engines"]["sim"]
    parse_policy(write_policy(tmp_path, shared).read_text(), "p.yaml")
    assert (
        "nice" not in arm_policy(_args(), "fair", ["quiet-1", FLOODER], 256, None)["engines"]["sim"]
    )
    with pytest.raises(SystemExit):
        _args("--engine-nice", "20")


def test_unnamed_tenants_are_ids_of_the_shared_unknown_tenant(tmp_path: Path) -> None:
    policy = arm_policy(_args("--unnamed"), "fair", ["quiet-1", FLOODER], 256, None)
    assert (policy["tenants"], policy["unknown_tenants"]) == ({}, {"mode": "shared"})
    parsed = parse_policy(write_policy(tmp_path, policy).read_text(), "p.yaml")
    assert parsed.unknown_tenants.mode == "shared" and not parsed.tenants
    named = arm_policy(_args(), "fair", ["quiet-1", FLOODER], 256, None)
    assert (set(named["tenants"]), named["unknown_tenants"]) == (
        {"quiet-1", FLOODER},
        {"mode": "reject"},
    )


def test_gateway_policy_shares_an_external_engine_and_redis(tmp_path: Path) -> None:
    argv = ("--gateways", "2", "--adaptive", "--max-num-batched-tokens", "768")
    base = arm_policy(_args(*argv), "fair", ["q", FLOODER], 256, None)
    base["engines"]["sim"]["inject_priority"] = True
    original = copy.deepcopy(base)
    state = base["state"] | {"url": "redis://127.0.0.1:6400/0"}
    document = gateway_policy(base, [11, 12, 13], "http://127.0.0.1:9000", 2, state)
    assert base == original  # the template is reused for every gateway
    engine = document["engines"]["sim"]
    assert engine == {
        "models": base["engines"]["sim"]["models"],
        "max_inflight": 128,
        "scheduler": "fair",
        "inject_priority": "header",  # as the managed sim gets it; external means the body
        "adaptive": {},  # and no "args": the bench starts the shared engine itself
        "kind": "external",
        "url": "http://127.0.0.1:9000",
        "announce": True,  # started listening, as its prefills are isolated
    }
    assert document["state"] == {
        "kind": "redis",
        "sync_interval_s": 0.1,
        "url": "redis://127.0.0.1:6400/0",
    }
    listener = document["listener"]
    assert (listener["port"], listener["admin_port"], listener["control_port"]) == (11, 12, 13)
    parsed = parse_policy((write_policy(tmp_path, document)).read_text(), "p.yaml")
    assert parsed.state.kind == "redis"
    assert parsed.engines["sim"].max_inflight == 128


def test_local_state_has_no_redis_and_divides_the_token_bucket() -> None:
    args = _args("--gateways", "2", "--local-state")
    policy = arm_policy(args, "token-bucket", ["q", FLOODER], 256, 120.0)
    assert "state" not in policy
    assert policy["tenants"][FLOODER]["limits"]["requests_per_minute"] == 60.0
    shared = arm_policy(_args("--gateways", "2"), "token-bucket", ["q", FLOODER], 256, 120.0)
    assert shared["tenants"][FLOODER]["limits"]["requests_per_minute"] == 120.0


def test_default_output_names_the_gateways() -> None:
    assert default_output(1, False) == RESULTS_DIR / "noisy-neighbor.json"
    assert default_output(2, False) == RESULTS_DIR / "noisy-neighbor-gateways-2.json"
    assert default_output(2, True) == RESULTS_DIR / "noisy-neighbor-gateways-2-local.json"


# -- metrics and the spread arm --------------------------------------------------------


def _metrics(tenant_sums: dict[str, tuple[float, int]]) -> str:
    lines = ["# TYPE fairlane_queue_wait_seconds histogram"]
    for tenant, (total, count) in tenant_sums.items():
        labels = f'{{engine="sim",tenant="{tenant}"}}'
        lines.append(f'fairlane_queue_wait_seconds_bucket{{le="+Inf",tenant="{tenant}"}} {count}')
        lines.append(f"fairlane_queue_wait_seconds_sum{labels} {total}")
        lines.append(f"fairlane_queue_wait_seconds_count{labels} {count}")
    return "\n".join(lines)


def test_queue_waits_are_pooled_over_gateways_not_averaged_per_gateway() -> None:
    one = _metrics({"a": (1.0, 1), "b": (2.0, 4)})
    two = _metrics({"a": (9.0, 3)})
    waits = pooled_queue_waits([one, two])
    assert waits == pytest.approx({"a": 2500.0, "b": 500.0})  # a: 10 s over 4, not (1+3)/2
    assert pooled_queue_waits([]) == {}


@pytest.mark.parametrize(
    ("gateways", "shared", "headroom", "expected"),
    [
        (2, True, 0.0, 1.0),  # shared counters: no extra share
        (2, True, 0.125, 1 / 0.875),  # gateway 1's reserve idles: neither may take it
        (3, True, 0.0, 2.0),  # the pinned flooder can have gateway 1 only
        (2, False, 0.0, 3.0),  # local: half of gateway 1 and all of gateway 2
        (3, False, 0.125, 5.0),
    ],
)
def test_expected_spread_ratio(
    gateways: int, shared: bool, headroom: float, expected: float
) -> None:
    assert expected_spread_ratio(gateways, shared, headroom) == pytest.approx(expected)


def test_spread_summary_reports_spreader_over_pinned_goodput() -> None:
    records = [
        RequestRecord(PINNED, 5.0, ttft=0.1, end=6.0, tokens=10, status=200),
        RequestRecord(PINNED, 5.5, end=5.5, status=429, error="queue full"),
        RequestRecord(SPREAD, 5.0, ttft=0.2, end=6.0, tokens=10, status=200),
        RequestRecord(SPREAD, 1.0, ttft=0.2, end=2.0, tokens=10, status=200),  # warm-up
    ]
    result = RunResult(records, (2.0, 12.0), {PINNED: 100, SPREAD: 300}, [0.001], [], 0)
    summary = summarize_spread(result, 2, shared=True, headroom=0.125)
    assert summary["goodput_ratio"] == pytest.approx(3.0)
    assert (summary["state"], summary["headroom"]) == ("redis", 0.125)
    pinned = summary["tenants"][PINNED]
    assert (pinned["requests"], pinned["status_429"], pinned["goodput_tok_s"]) == (2, 1, 10.0)
    assert summary["tenants"][SPREAD]["requests"] == 1


def test_gateways_label_reads_old_and_new_result_files() -> None:
    old: dict[str, Any] = {"arms": {}}
    assert gateways_label(old) == "1"
    assert gateways_label({"gateways": 3, "state": "redis"}) == "3 redis"
    assert gateways_label({"gateways": 2, "state": "local"}) == "2 local"


@pytest.mark.parametrize(
    ("choice", "isolation"), [("prompts", "prompts"), ("step", "step"), ("off", None)]
)
def test_isolation_goes_to_the_engine_fairlane_starts_not_to_a_gateway(
    tmp_path: Path, choice: str, isolation: str | None
) -> None:
    policy = arm_policy(_args("--isolate-prefills", choice), "fair", ["q", FLOODER], 256, None)
    parsed = parse_policy(write_policy(tmp_path, policy).read_text(), "p.yaml")
    assert parsed.engines["sim"].prefill_isolation == isolation
    assert parsed.engines["sim"].announces == (isolation is not None)
    unannounced = arm_policy(
        _args("--isolate-prefills", choice, "--no-announce"), "fair", ["q", FLOODER], 256, None
    )
    assert (
        not parse_policy(write_policy(tmp_path, unannounced).read_text(), "p.yaml")
        .engines["sim"]
        .announces
    )
    # A shared engine (several gateways, vllm-cpu) is started by the bench with it, and
    # the gateways announce to it where it listens; never to an engine the bench did
    # not start (--engine external).
    gateway: tuple[list[int], str, int, dict[str, Any]] = (
        [11, 12, 13],
        "http://127.0.0.1:9000",
        2,
        {"kind": "local"},
    )
    shared = gateway_policy(policy, *gateway)
    assert "isolate_prefills" not in shared["engines"]["sim"]
    parsed = parse_policy(write_policy(tmp_path, shared).read_text(), "p.yaml").engines["sim"]
    assert parsed.announces == (isolation is not None)
    assert "announce" not in gateway_policy(unannounced, *gateway)["engines"]["sim"]
    assert "announce" not in gateway_policy(policy, *gateway, started=False)["engines"]["sim"]
