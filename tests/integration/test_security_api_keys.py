"""API keys: no route reaches an engine without a valid one, the key (not a header)
names the tenant and its models, and no key is written anywhere or passed to an engine.

Keys are made up for the test; the policy holds their sha256 (`fairlane hash-key`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
import time
from typing import Any

import pytest

from testkit.metrics import value
from testkit.security import KEY_A, KEY_B, error_code, hash_key, keyed_policy, request

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
INFERENCE = (CHAT, "/v1/completions")


@pytest.fixture(scope="module")
def stack(stack_factory: Any, fake: Any) -> Any:
    return stack_factory(keyed_policy(fake))


def chat_body(model: str = "model-a") -> bytes:
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(body).encode()


def metric(port: int, name: str, **labels: str) -> float:
    _, _, body = request(port, "GET", "/metrics")
    return value(body.decode(), name, **labels)


BAD_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer sk-wrong"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {KEY_A}"},
    {"Authorization": KEY_A},
    {"Authorization": f"Bearer {KEY_A}x"},
    {"Authorization": f"Bearer {KEY_A[:-1]}"},
    {"Authorization": f"Bearer {hashlib.sha256(KEY_A.encode()).hexdigest()}"},  # the stored hash
    {"X-Api-Key": "sk-wrong"},
    {"X-Api-Key": f"Bearer {KEY_A}"},  # the header holds the bare key
    {"Authorization": "Bearer sk-wrong", "X-Api-Key": KEY_A},  # the Bearer one is read
    {"X-Tenant-ID": "alice"},
    {"X-Tenant-ID": "alice", "Authorization": "Bearer sk-wrong"},
]


def test_no_route_reaches_an_engine_without_a_valid_key(stack: Any, fake: Any) -> None:
    reached = fake.stats()["requests"]
    served = metric(stack.port, "fairlane_requests_total")
    for path in INFERENCE:
        for model in ("model-a", "fake-echo"):
            for headers in BAD_CREDENTIALS:
                headers = {"Content-Type": "application/json", **headers}
                status, got, body = request(stack.port, "POST", path, headers, chat_body(model))
                assert status == 401, (path, headers, status, body)
                assert error_code(status, got, body) == "invalid_api_key"
    assert fake.stats()["requests"] == reached
    assert metric(stack.port, "fairlane_requests_total") == served
    assert metric(stack.port, "fairlane_rejected_total", reason="invalid_api_key") >= 4 * len(
        BAD_CREDENTIALS
    )


def test_tenant_header_cannot_override_the_key(stack: Any, fake: Any) -> None:
    before = {t: metric(stack.port, "fairlane_requests_total", tenant=t) for t in ("alice", "bob")}
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY_A}",
        "X-Tenant-ID": "bob",
    }
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert status == 200, body
    seen = fake.stats()["headers"][-1]
    assert seen["x-tenant-id"] == "alice"  # rewritten from the key
    assert "authorization" not in seen  # the key never reaches the engine
    assert KEY_A not in json.dumps(seen)
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("model-a"))
    assert status == 200, body

    deadline = time.monotonic() + 5
    while metric(stack.port, "fairlane_requests_total", tenant="alice") < before["alice"] + 2:
        assert time.monotonic() < deadline, "the requests were not counted for alice"
        time.sleep(0.05)
    assert metric(stack.port, "fairlane_requests_total", tenant="bob") == before["bob"]
    entries = stack.access_log(lambda e: e["path"] == CHAT and e["status"] == 200, 2)
    assert {e["tenant"] for e in entries} == {"alice"}


def test_anthropics_x_api_key_header_is_a_key_too(stack: Any, fake: Any) -> None:
    """Anthropic's SDKs send the key as `x-api-key`: it names the tenant as a Bearer key
    does, and is removed before the engine as well."""
    headers = {"Content-Type": "application/json", "X-Api-Key": KEY_B, "X-Tenant-ID": "alice"}
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("model-a"))
    assert status == 200, body
    status, got, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert (status, error_code(status, got, body)) == (403, "model_not_allowed")  # bob's key
    headers["X-Api-Key"] = KEY_A
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert status == 200, body
    seen = fake.stats()["headers"][-1]
    assert seen["x-tenant-id"] == "alice" and "x-api-key" not in seen
    assert KEY_A not in json.dumps(seen)


def test_keys_never_written_anywhere(stack: Any) -> None:
    for key in (KEY_A, KEY_B):
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        assert request(stack.port, "POST", CHAT, headers, chat_body())[0] == 200
        bad = {"Content-Type": "application/json", "Authorization": f"Bearer {key}-not"}
        assert request(stack.port, "POST", CHAT, bad, chat_body())[0] == 401
    stack.access_log(lambda e: e["status"] == 401, 2)  # flushed past those requests
    texts = {
        str(path): path.read_bytes().decode("utf-8", "replace")
        for path in stack.run_dir.parent.rglob("*")
        if path.is_file() and not stat.S_ISSOCK(path.stat().st_mode)
    }
    control = stack.policy["listener"]["control_port"]
    texts["/metrics"] = request(stack.port, "GET", "/metrics")[2].decode()
    texts["control /status"] = request(control, "GET", "/status")[2].decode()
    assert any("access.log" in name for name in texts)
    for key in (KEY_A, KEY_B):
        for name, text in texts.items():
            assert key not in text, f"an API key is written in {name}"
            assert key[: len(key) // 2] not in text, f"part of an API key is in {name}"


def test_every_answer_names_the_request_the_access_log_records(stack: Any) -> None:
    agent = {"Content-Type": "application/json", "User-Agent": "probe/1.0"}
    good = {**agent, "Authorization": f"Bearer {KEY_A}"}
    bad = {**agent, "Authorization": "Bearer not-a-key"}
    ids = {}
    for headers, path, model in (
        (good, CHAT, "model-a"),
        (good, CHAT, "nope"),  # refused by Fairlane, after it knew whose request it was
        (bad, CHAT, "model-a"),
        (good, "/v1/nothing", "model-a"),
    ):
        status, reply, _ = request(stack.port, "POST", path, headers, chat_body(model))
        ids[reply["x-request-id"]] = (path, status)
    assert sorted(ids.values()) == [
        (CHAT, 200),
        (CHAT, 401),
        (CHAT, 404),
        ("/v1/nothing", 404),
    ]
    logged = stack.access_log(lambda e: e["request_id"] in ids, len(ids))
    assert {e["request_id"]: (e["path"], e["status"]) for e in logged} == ids
    assert {(e["client"], e["user_agent"]) for e in logged} == {("127.0.0.1", "probe/1.0")}
    tenants = {(e["path"], e["status"]): e["tenant"] for e in logged}
    assert tenants == {
        (CHAT, 200): "alice",
        (CHAT, 404): "alice",
        (CHAT, 401): None,  # no valid key: nobody
        ("/v1/nothing", 404): None,  # answered by Envoy's route, never identified
    }


def test_each_key_lists_the_models_its_tenant_may_use(stack: Any, fake: Any) -> None:
    def get(path: str, key: str | None) -> tuple[int, dict[str, str], bytes]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return request(stack.port, "GET", path, headers)

    for key in (None, "sk-wrong", KEY_A + "x"):
        for path in ("/v1/models", "/v1/models/model-a"):
            status, headers, body = get(path, key)
            assert (status, error_code(status, headers, body)) == (401, "invalid_api_key")
    everything = {"model-a", *fake.MODELS}
    for key, allowed in ((KEY_A, everything), (KEY_B, {"model-a"})):
        status, _, body = get("/v1/models", key)
        assert status == 200
        assert {m["id"] for m in json.loads(body)["data"]} == allowed
        for model in sorted(everything):
            status, headers, body = get(f"/v1/models/{model}", key)
            if model in allowed:
                assert (status, json.loads(body)["id"]) == (200, model)
            else:  # as if it did not exist: no way to learn what others may use
                assert (status, error_code(status, headers, body)) == (404, "model_not_found")


ENGINE_KEY = "sk-engine-" + secrets.token_hex(16)


def test_an_engine_with_its_own_key_gets_it_in_place_of_the_clients(
    stack_factory: Any, fake: Any
) -> None:
    """vLLM started with --api-key behind Fairlane's own keys: the client's key stays at
    the gateway, the engine's (from serve's environment) goes to the engine, and neither
    is written anywhere."""
    engine = {**fake.engine_config(), "api_key_env": "FAIRLANE_TEST_ENGINE_KEY"}
    policy = {
        "version": 1,
        "tenants": {"alice": {"api_keys": [hash_key(KEY_A)]}},
        "engines": {"fake": engine},
    }
    keyed = stack_factory(policy, env={"FAIRLANE_TEST_ENGINE_KEY": ENGINE_KEY})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY_A}"}
    for _ in range(2):  # the second one takes the worker's cached header mutation
        status, _, body = request(keyed.port, "POST", CHAT, headers, chat_body("fake-echo"))
        assert status == 200, body
        seen = fake.stats()["headers"][-1]
        assert seen["authorization"] == f"Bearer {ENGINE_KEY}"
        assert KEY_A not in json.dumps(seen)
    keyed.access_log(lambda e: e["path"] == CHAT and e["status"] == 200, 2)
    for path in keyed.run_dir.parent.rglob("*"):
        if path.is_file() and not stat.S_ISSOCK(path.stat().st_mode):
            text = path.read_bytes().decode("utf-8", "replace")
            assert ENGINE_KEY[10:26] not in text, f"the engine's key is written in {path}"
            assert KEY_A[9:25] not in text, f"a client key is written in {path}"
