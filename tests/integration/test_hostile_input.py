"""Hostile input against a real stack: a hypothesis fuzz over raw HTTP requests, a storm
of random tenant ids, and a bad policy file written while serving.

The fuzz sends raw bytes over a socket (HTTP clients refuse CR/LF in header values and
invalid methods) and checks every answer; it collects every kind of bad answer instead of
stopping at the first, so one run shows all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fairlane.bench.cpu import running_descendants

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
CHAT = "/v1/chat/completions"
EXAMPLES = 300
SHORT = aiohttp.ClientTimeout(total=15)


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "listener": {"max_body_bytes": MAX_BODY},
            "tenants": {"alice": {}, "bob": {}},
            "unknown_tenants": {"mode": "shared"},
            "engines": {"fast": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
        }
    )


# -- helpers (test modules cannot share them: --import-mode=importlib) -----------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, raw: bytes, method: str, timeout_s: float = 20) -> Answer:
    """One request on a fresh connection; raises on a hang (timeout) or no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        # Envoy may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def build(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    head = [method + b" " + path + b" HTTP/1.1", b"Host: fairlane"]
    head += [k + b": " + v for k, v in headers]
    head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def openai_error(answer: Answer) -> str | None:
    """None when the answer is an OpenAI-style JSON error, else what is wrong with it."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {answer.headers.get('content-type')!r}"
    try:
        error = json.loads(answer.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return "not an OpenAI error object"
    return None


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession(timeout=SHORT) as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, number = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(number)
    return total


def child_pid(root: int, word: str) -> int:
    """The one live descendant of root whose command line contains word (for Envoy: whose
    program is named ``envoy``)."""
    found = [
        pid
        for pid, argv in running_descendants(root).items()
        if (Path(argv[0]).name == word if word == "envoy" else word in " ".join(argv))
    ]
    assert len(found) == 1, (word, found)
    return found[0]


# -- the fuzz ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
messages = st.just([{"role": "user", "content": "hi"}]) | st.lists(
    st.fixed_dictionaries({"role": json_values, "content": json_values}), max_size=3
)
# Small valid values or clearly invalid ones: a valid max_tokens in the thousands would
# only make the run slow.
max_tokens = (
    st.integers(1, 8)
    | st.integers(max_value=0)
    | st.integers(min_value=2049)
    | st.floats()
    | st.text(max_size=5)
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=2)
)
chat_objects = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("model-a") | json_values,
        "messages": messages,
        "prompt": json_values,
        "max_tokens": max_tokens,
        "max_completion_tokens": max_tokens,
        "stream": st.booleans() | json_values,
        "stream_options": st.just({"include_usage": True}) | json_values,
        "n": st.integers(-2, 3),
    },
)
# JSON that Python writes but strict parsers refuse (NaN, huge exponents, ...).
number_literals = st.sampled_from(
    ["1e400", "-1e400", "1" + "0" * 400, "-0", "1.5", "NaN", "Infinity", "0x10", "1_0", "٣"]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["chat", "chat", "chat", "json", "literal", "bytes", "big"]))
    if kind == "chat":
        return json.dumps(draw(chat_objects), allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "literal":
        literal = draw(number_literals)
        field_name = draw(st.sampled_from(["max_tokens", "stream", "model", "n"]))
        return (
            '{"model": "model-a", "messages": [{"role": "user", "content": "x"}], '
            f'"{field_name}": {literal}}}'
        ).encode()
    if kind == "bytes":
        valid = b'{"model": "model-a", "messages": [{"role": "user", "content": "X"}]}'
        junk = draw(st.binary(min_size=1, max_size=8).filter(_not_utf8))
        return draw(st.sampled_from([junk, valid.replace(b"X", junk), valid[:-3] + junk]))
    size = draw(st.sampled_from([MAX_BODY - 1024, MAX_BODY + 1, 4 * MAX_BODY]))
    content = "y" * size
    return json.dumps({"model": "model-a", "messages": [{"role": "user", "content": content}]})[
        : size + 100
    ].encode()


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


hostile_tenants = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@/-]{0,40}\Z").map(str.encode),
    st.text(min_size=1, max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(129, 20_000).map(lambda n: b"t" * n),
    st.sampled_from(
        [
            b"alice\r\nx-fairlane-cluster: engine_fast",
            b"alice\nx-tenant-id: bob",
            b"alice\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x",
            b"alice\rbob",
            b"al\x00ice",
            b"\xff\xfe",
            b" alice ",
            b"",
        ]
    ),
)
named_tenants = st.sampled_from([b"alice", b"bob"])
methods = st.sampled_from(
    [b"POST"] * 10
    + [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE", b"FOO", b"post"]
    + [b"P0ST", b"GET /x HTTP/1.1\r\nHost: y\r\n\r\nPOST"]
)
inference_paths = st.sampled_from([CHAT.encode(), b"/v1/completions"])
paths = st.one_of(
    inference_paths,
    st.sampled_from(
        [
            b"/health",
            b"/v1/models",
            b"/metrics",
            b"/v1/chat/completions/",
            b"/v1/chat/completions?stream=true",
            b"//v1/chat/completions",
            b"/v1/chat/../chat/completions",
            b"/V1/CHAT/COMPLETIONS",
            b"/v1/chat%2Fcompletions",
            b"/stats",
            b"/status",
            b"/admin",
            b"/../etc/passwd",
            b"/v1/audio/transcriptions",
            b"*",
            b"/" + b"a" * 5000,
        ]
    ),
    st.text(min_size=1, max_size=40).map(lambda t: b"/" + t.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(
    [b"application/json"] * 3 + [b"text/plain", b"application/x-www-form-urlencoded", b"", b"x/y"]
)
Headers = list[tuple[bytes, bytes]]
extra_headers = st.sampled_from(
    [
        (b"X_Tenant_ID", b"alice"),  # underscores: Envoy rejects the request
        (b"x-fairlane-cluster", b"engine_fast"),  # a client must not pick the cluster
        (b"Transfer-Encoding", b"chunked"),  # with Content-Length: smuggling attempt
        (b"Content-Length", b"0"),
        (b"Authorization", b"Bearer sk-nothing"),
        (b"Expect", b"100-continue"),
        (b"Connection", b"upgrade"),
        (b"Upgrade", b"websocket"),
        (b"X-Forwarded-For", b"10.0.0.1"),
    ]
)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[bytes, bytes, Headers, bytes]:
    """A well-formed request with one thing wrong (or nothing): reaches deep paths."""
    body: dict[str, Any] = {
        "model": "model-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": draw(st.integers(1, 8)),
        "stream": draw(st.booleans()),
    }
    headers: Headers = [(b"Content-Type", b"application/json")]
    tenant = draw(named_tenants)
    what = draw(st.sampled_from(["nothing", "field", "field", "field", "extra", "tenant", "raw"]))
    if what == "field":
        key = draw(st.sampled_from([*body, "stream_options", "n", "prompt"]))
        replacement = max_tokens if key == "max_tokens" else json_values
        body[key] = draw(replacement)
    elif what == "extra":
        body[draw(st.text(max_size=10))] = draw(json_values)
    elif what == "tenant":
        tenant = draw(hostile_tenants)
    headers.append((b"X-Tenant-ID", tenant))
    raw = json.dumps(body, allow_nan=True).encode()
    if what == "raw":
        raw = draw(bodies())
    return b"POST", draw(inference_paths), headers, raw


@st.composite
def wild(draw: st.DrawFn) -> tuple[bytes, bytes, Headers, bytes]:
    """Anything: any method, path, tenant, content type and body."""
    headers: Headers = []
    tenant = draw(st.none() | named_tenants | hostile_tenants)
    if tenant is not None:
        headers.append((b"X-Tenant-ID", tenant))
    content_type = draw(st.none() | content_types)
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    headers += draw(st.lists(extra_headers, max_size=2))
    return draw(methods), draw(paths), headers, draw(bodies())


@dataclass
class FuzzLog:
    tried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # kind of problem -> an input

    def note(self, problem: str, raw: bytes) -> None:
        self.problems.setdefault(problem, repr(raw[:300]))


def judge(answer: Answer, method: bytes) -> str | None:
    """None for an acceptable answer, else a short name of what is wrong with it."""
    if answer.status >= 500:
        return f"{answer.status} (a 5xx for bad input): {answer.body[:80]!r}"
    if answer.status >= 400:
        if method == b"HEAD":  # no body on HEAD
            return None
        problem = openai_error(answer)
        if problem is not None:
            return f"{answer.status} not OpenAI JSON ({problem}): {answer.body[:60]!r}"
        return None
    if answer.status != 200:
        return f"unexpected status {answer.status}"
    return None


def test_fuzz_requests(stack: Any) -> None:
    worker = child_pid(stack.process.pid, "fairlane.worker")
    envoy = child_pid(stack.process.pid, "envoy")
    log = FuzzLog()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    # Envoy's own refusals of broken HTTP, always tried (derandomized runs may miss them).
    @example(request=(b"FOO", CHAT.encode(), [], b"{}"))
    @example(request=(b"OPTIONS", b"*", [], b""))
    @example(request=(b"GET", b"/health\nx", [], b""))
    @example(request=(b"POST", CHAT.encode(), [(b"X_Tenant_ID", b"alice")], b"{}"))
    @given(request=near_valid() | wild())
    def one(request: tuple[bytes, bytes, Headers, bytes]) -> None:
        method, path, headers, body = request
        raw = build(method, path, headers, body)
        log.tried += 1
        try:
            answer = exchange(stack.port, raw, method.decode("latin-1").split(" ")[0])
        except TimeoutError:
            log.note("no answer within 20 s (hang)", raw)
            return
        except (OSError, http.client.HTTPException) as exc:
            log.note(f"no well-formed HTTP answer: {type(exc).__name__}", raw)
            return
        log.statuses[answer.status] = log.statuses.get(answer.status, 0) + 1
        problem = judge(answer, method)
        if problem is not None:
            log.note(problem, raw)

    one()
    print(f"\nfuzz: {log.tried} inputs, statuses {dict(sorted(log.statuses.items()))}")
    for problem, sample in log.problems.items():
        print(f"  PROBLEM {problem}\n    e.g. {sample}")
    assert log.tried >= EXAMPLES

    # The gateway is unharmed: healthy, nothing held, nothing restarted.
    health = exchange(stack.port, build(b"GET", b"/health", [], b""), "GET")
    assert health.status == 200
    # A slot is released when Envoy's access-log record of the request arrives, a few
    # milliseconds after the client has its answer: wait for it, do not race it.
    deadline = time.monotonic() + 5
    while True:
        metrics = exchange(stack.port, build(b"GET", b"/metrics", [], b""), "GET").body.decode()
        held = value(metrics, "fairlane_inflight"), value(metrics, "fairlane_queue_depth")
        if held == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert held == (0, 0), f"(in flight, queued) after the fuzz: {held}"
    assert child_pid(stack.process.pid, "fairlane.worker") == worker, "the worker restarted"
    assert child_pid(stack.process.pid, "envoy") == envoy, "Envoy restarted"
    assert log.problems == {}, "\n".join(log.problems)


def test_header_beyond_envoy_limit_gets_an_answer(stack: Any) -> None:
    """A 70 KB X-Tenant-ID is past Envoy's 60 KiB header limit: a 431, not a hang."""
    raw = build(b"POST", CHAT.encode(), [(b"X-Tenant-ID", b"t" * 70_000)], b"{}")
    answer = exchange(stack.port, raw, "POST")
    assert answer.status == 431
    assert openai_error(answer) is None, answer


@pytest.mark.parametrize(
    "expect", [[b"100-continue"], [b"100-continue", b"100-continue"], [b"something-else"]]
)
def test_expect_headers_never_reach_the_engine(stack: Any, expect: list[bytes]) -> None:
    """Envoy answers a single `Expect: 100-continue` itself; others (found by the fuzz
    test: a repeated one) used to reach the engine, whose 417 was plain text."""
    message = {"role": "user", "content": "hi"}
    body = json.dumps({"model": "model-a", "max_tokens": 2, "messages": [message]}).encode()
    headers = [(b"X-Tenant-ID", b"alice")] + [(b"Expect", value) for value in expect]
    answer = exchange(stack.port, build(b"POST", CHAT.encode(), headers, body), "POST")
    assert answer.status == 200, answer
    assert json.loads(answer.body)["object"] == "chat.completion"


@pytest.mark.parametrize("path", [CHAT.encode(), b"/v1/realtime", b"/health"])
def test_a_websocket_upgrade_gets_a_clear_refusal(stack: Any, path: bytes) -> None:
    """Envoy refuses upgrades before routing, with a bare 403; the client gets a 400
    that says why, in OpenAI's shape."""
    headers = [
        (b"X-Tenant-ID", b"alice"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    answer = exchange(stack.port, build(b"GET", path, headers, b""), "GET")
    assert answer.status == 400, answer
    error = json.loads(answer.body)["error"]
    assert error["code"] == "upgrade_not_supported"
    assert error["message"].startswith("WebSocket and other protocol upgrades are not supported")


# -- tenant-id storm -----------------------------------------------------------------------

RPM = 60.0
BURST_S = 10.0


@pytest.fixture(scope="module")
def limited(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "tenants": {"alice": {}},
            "unknown_tenants": {
                "mode": "shared",
                "limits": {"requests_per_minute": RPM, "burst_seconds": BURST_S},
            },
            "engines": {"fast": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
        }
    )


async def test_random_tenant_storm_gets_one_shared_limit(limited: Any) -> None:
    body = {"model": "model-a", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    statuses: dict[int, int] = {}
    ids: list[str] = []
    bad: list[str] = []

    async def send(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            tenant = f"storm-{uuid.uuid4().hex}"
            ids.append(tenant)
            async with session.post(
                limited.url + CHAT, json=body, headers={"x-tenant-id": tenant}
            ) as resp:
                raw = await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 429:
                    error = json.loads(raw)["error"]
                    if error["code"] != "rate_limit_exceeded" or "retry-after" not in resp.headers:
                        bad.append(raw.decode())
                elif resp.status != 200:
                    bad.append(f"{resp.status} {raw[:100]!r}")

    async def storm(total: int, concurrency: int) -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=SHORT) as session:
            await asyncio.gather(*(send(session, total // concurrency) for _ in range(concurrency)))

    start = time.monotonic()
    await storm(40, 4)  # warm-up: the unknown class's series exist, its burst is spent
    before = await scrape(limited.url + "/metrics")
    await storm(2000, 20)
    elapsed = time.monotonic() - start
    after = await scrape(limited.url + "/metrics")

    admitted = statuses.get(200, 0)
    bound = RPM / 60 * (elapsed + BURST_S)
    print(
        f"\nstorm: {sum(statuses.values())} requests from {len(set(ids))} tenant ids in "
        f"{elapsed:.1f}s: {statuses}; limit {bound:.1f}; /metrics {len(before)} -> "
        f"{len(after)} bytes"
    )
    assert bad == []
    assert 1 <= admitted <= math.floor(bound) + 1
    deadline = time.monotonic() + 5  # the last end-of-request records are on their way
    counted = value(after, "fairlane_requests_total", tenant="unknown")
    while counted != admitted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        metrics = await scrape(limited.url + "/metrics")
        counted = value(metrics, "fairlane_requests_total", tenant="unknown")
    assert counted == admitted
    series = [line for line in before.splitlines() if not line.startswith("#")]
    assert len([line for line in after.splitlines() if not line.startswith("#")]) == len(series)
    assert len(after) - len(before) < 512  # only digits of counters grew
    assert not any(t in after for t in ids[:50])


# -- a bad policy while serving ------------------------------------------------------------


async def test_bad_policy_keeps_old_policy(limited: Any) -> None:
    async def ok() -> bool:
        body = {"model": "model-a", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
        async with (
            aiohttp.ClientSession(timeout=SHORT) as session,
            session.post(limited.url + CHAT, json=body, headers={"x-tenant-id": "alice"}) as resp,
        ):
            return resp.status == 200

    async def wait_for(name: str, want: float) -> None:
        deadline = time.monotonic() + 15
        while value(await scrape(limited.url + "/metrics"), name) != want:
            assert await ok(), "a request failed while the bad policy was on disk"
            assert time.monotonic() < deadline, f"{name} never reached {want}"
            await asyncio.sleep(0.2)

    metrics = await scrape(limited.url + "/metrics")
    failures = value(metrics, "fairlane_config_reload_failures_total")
    generation = value(metrics, "fairlane_config_generation")
    good = limited.policy_path.read_text()
    try:
        limited.policy_path.write_text(good + "\nengines: [unclosed\n")  # invalid YAML
        await wait_for("fairlane_config_reload_failures_total", failures + 1)
        limited.policy_path.write_text(good.replace("tenants:", "tenantz:"))  # unknown key
        await wait_for("fairlane_config_reload_failures_total", failures + 2)
        for _ in range(5):
            assert await ok()
        metrics = await scrape(limited.url + "/metrics")
        assert value(metrics, "fairlane_config_generation") == generation
    finally:
        limited.write_policy(limited.policy)
    await wait_for("fairlane_config_generation", generation + 1)
    assert await ok()
    health = exchange(limited.port, build(b"GET", b"/health", [], b""), "GET")
    assert health.status == 200


def alice_on_one_engine(**engine: Any) -> dict[str, Any]:
    """A policy: tenant alice, one fast simulator with these settings."""
    fast = {"kind": "sim", "preset": "tiny", "models": ["model-a"], **engine}
    return {"version": 1, "tenants": {"alice": {}}, "engines": {"fast": fast}}


# -- a burst past gRPC's own admission ------------------------------------------------------

BURST = 3000


async def test_a_burst_of_requests_gets_fairlanes_answers_not_dropped_calls(
    stack_factory: Any,
) -> None:
    """3,000 requests at once: each waits for a decision on its own ext_proc stream. Past
    1,000 streams the worker has not yet picked up, gRPC's defaults drop calls at random
    (503 `gateway_unavailable`); every request must get Fairlane's own answer instead."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * BURST  # client sockets, Envoy's downstream ones, and the rest
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    # Before the stack starts, so that Envoy inherits it too.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        burst = stack_factory(
            alice_on_one_engine(max_inflight=8, queue={"max_per_tenant": 32, "timeout_s": 60})
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    body = {"model": "model-a", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}

    async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.post(
            burst.url + CHAT, json=body, headers={"x-tenant-id": "alice"}
        ) as resp:
            raw = await resp.read()
            return resp.status, "" if resp.status == 200 else json.loads(raw)["error"]["code"]

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        answers = await asyncio.gather(*(one(session) for _ in range(BURST)))
    counts: dict[tuple[int, str], int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    print(f"\nburst of {BURST}: {counts}")
    assert set(counts) <= {(200, ""), (429, "queue_full")}, counts
    assert counts[(200, "")] >= 40  # at least the 8 slots and 32 queued


# -- a body sent a byte at a time -------------------------------------------------------------


def test_a_request_trickled_in_is_cut_with_408(stack_factory: Any) -> None:
    """Each byte restarts the stream idle timeout, so only the request timeout stops a
    client that sends its body a byte at a time from holding its connection."""
    policy = alice_on_one_engine(queue={"timeout_s": 1})
    # Envoy's clock is request_timeout_s + the longest queue wait a reload could set
    # (below the idle timeout) + 5 s: 1 + 3 + 5 s here.
    policy["listener"] = {"request_timeout_s": 1, "stream_idle_timeout_s": 3}
    slow = stack_factory(policy)
    body = json.dumps(
        {"model": "model-a", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    request = build(b"POST", CHAT.encode(), [(b"X-Tenant-ID", b"alice")], body)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow.port), timeout=30) as sock:
        sock.sendall(request[: -len(body)])  # the headers at once
        sock.settimeout(0.25)
        answer = b""
        for i in range(len(body)):  # ~20 s for the whole body, if nothing stopped it
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(body[i : i + 1])
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
            if answer:
                break
    waited = time.monotonic() - start
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert 1 <= waited < 1 + 3 + 5 + 3, waited
    assert exchange(slow.port, request, "POST").status == 200  # sent at once: served
