"""A hypothesis fuzz over raw HTTP requests against a real stack: every answer must be a
200 or an OpenAI-style JSON error (never a 5xx, a hang or broken HTTP), and the gateway
must come out of it unharmed.

The fuzz sends raw bytes over a socket (HTTP clients refuse CR/LF in header values and
invalid methods) and checks every answer; it collects every kind of bad answer instead of
stopping at the first, so one run shows all of them.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from testkit.http import CHAT, Answer, build, exchange, openai_error
from testkit.metrics import value
from testkit.policies import MAX_BODY, hostile_input_policy
from testkit.processes import ENVOY, WORKER, child_pid

pytestmark = pytest.mark.integration

EXAMPLES = 300


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(hostile_input_policy())


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
        (b"x-fairlane-request-id", b"forged"),  # nor the id its slot is kept under
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
    worker = child_pid(stack, WORKER)
    envoy = child_pid(stack, ENVOY)
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
    assert child_pid(stack, WORKER) == worker, "the worker restarted"
    assert child_pid(stack, ENVOY) == envoy, "Envoy restarted"
    assert log.problems == {}, "\n".join(log.problems)
