"""identify → validate → route: the pure, synchronous part of a decision.

Returns either a Rejection or a Ticket describing what to admit. Rate limits and the
queue come after this, in the gateway, because they hold state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from fairlane.envoy.common import DECOMPRESSORS
from fairlane.extproc.errors import Reason, Rejection, model_not_found
from fairlane.extproc.request import Api, RequestInfo, is_encoded
from fairlane.extproc.runtime import TENANT_ID, Runtime, TenantProfile
from fairlane.lax import lax_int

# vLLM (with its response store on) answers a background response at once and generates
# it afterwards, where Fairlane's slot, queue and limits no longer see it.
BACKGROUND_REFUSED = (
    "`background` responses are not served here: the engine would generate them after "
    "the request ends, outside the fair queue; send the request without it (stream it "
    "to see the answer as it comes)"
)


# Also the answer to a `model` that is a list, an object or null: Envoy's json_to_metadata
# reads those as missing (checking the type on every request would cost a Lua filter).
MISSING_MODEL = "request body must be a JSON object with a string `model`"


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request that passed validation: who, what, where and its estimated cost."""

    tenant: TenantProfile
    tenant_id: str  # as identified (for logs); tenant.name is the state key
    model: str
    pool: str  # the replica group serving the model
    prompt_tokens: int  # estimate from the body size; corrected from usage later
    max_tokens: int  # per sequence (0 for pooling)
    sequences: int  # generated at once (prompts x `n`): engine slots the request holds
    # (0: the engine's tokenizer only, routed without a slot)
    cost: float
    # A stream whose first byte is its first token, so Envoy's time to first byte is
    # its TTFT: chat, completions and messages (vLLM's `message_start` comes with the
    # first token; a Responses stream opens with events before it).
    first_byte_is_token: bool
    request_id: str  # Envoy's id of the request (RequestInfo.request_id)

    @property
    def completion_budget(self) -> int:
        """The most completion tokens the request can produce: the charge at admission."""
        return self.max_tokens * self.sequences


def identify(info: RequestInfo, runtime: Runtime) -> str | Rejection:
    """The tenant id: from a client certificate a tenant lists, else from the API key
    when keys are on, else the trusted header."""
    by_certificate = _certificate_tenant(info.client_names, runtime)
    if by_certificate is not None:
        return by_certificate
    if runtime.api_keys_enabled:
        token = _bearer(info.authorization) or _bare(info.api_key)
        if token is None:
            return Rejection(
                Reason.INVALID_API_KEY,
                "missing API key: send Authorization: Bearer <key> (or x-api-key: <key>)",
            )
        digest = hashlib.sha256(token.encode()).hexdigest()
        # Looking up the sha256 digest, not the key, keeps the comparison timing-safe: an
        # attacker controls the key, not which digest bits a near-miss would share.
        tenant = runtime.key_to_tenant.get(digest)
        if tenant is None:
            return Rejection(Reason.INVALID_API_KEY, "invalid API key")
        return tenant
    header = info.tenant_header
    if header is None or not runtime.policy.trust_tenant_header:
        if runtime.policy.default_tenant is not None:
            return runtime.policy.default_tenant
        if not (info.client_names and runtime.certificate_to_tenant):
            return Rejection(Reason.MISSING_TENANT, "missing X-Tenant-ID header")
        unlisted = (
            f"no tenant lists this client certificate ({_shown(info.client_names)}) in "
            "its client_certificates"
        )
        if not runtime.policy.trust_tenant_header:
            return Rejection(Reason.UNKNOWN_TENANT, unlisted)
        return Rejection(Reason.MISSING_TENANT, f"missing X-Tenant-ID header, and {unlisted}")
    if "," in header:
        return Rejection(Reason.INVALID_TENANT, "X-Tenant-ID must be sent once")
    if not TENANT_ID.fullmatch(header):
        return Rejection(
            Reason.INVALID_TENANT,
            "X-Tenant-ID must be 1-128 characters of letters, digits and . _ : @ / -",
        )
    return header


def _certificate_tenant(names: tuple[str, ...], runtime: Runtime) -> str | Rejection | None:
    """The tenant whose client_certificates hold a name of the client's certificate."""
    if not names or not runtime.certificate_to_tenant:
        return None
    tenants = {runtime.certificate_to_tenant.get(name) for name in names} - {None}
    if len(tenants) > 1:
        return Rejection(
            Reason.AMBIGUOUS_CERTIFICATE,
            f"the client certificate ({_shown(names)}) is listed by tenants "
            f"{', '.join(sorted(t for t in tenants if t))}: it may name only one",
        )
    return tenants.pop() if tenants else None


def _shown(names: tuple[str, ...]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def visible_models(info: RequestInfo, runtime: Runtime) -> list[str] | Rejection:
    """The models GET /v1/models shows this caller: those it may use, identified as its
    requests are. With API keys on, a key is needed (as vLLM's `--api-key` asks for
    one there too). Without keys nothing is secret, so a caller that names no tenant
    sees every model, as a listing by hand (`curl .../v1/models`) expects."""
    tenant_id = identify(info, runtime)
    if isinstance(tenant_id, Rejection):
        if tenant_id.reason is Reason.MISSING_TENANT and not runtime.api_keys_enabled:
            return sorted(runtime.model_to_pool)
        return tenant_id
    profile = runtime.profile_for(tenant_id)
    if profile is None:
        return _not_allowed(tenant_id)
    allowed = profile.allowed_models
    return sorted(m for m in runtime.model_to_pool if allowed is None or m in allowed)


def evaluate(info: RequestInfo, runtime: Runtime) -> Ticket | Rejection:
    tenant_id = identify(info, runtime)
    if isinstance(tenant_id, Rejection):
        return tenant_id
    profile = runtime.profile_for(tenant_id)
    if profile is None:
        return _not_allowed(tenant_id)
    if is_encoded(info.content_encoding):
        return labelled(profile, Rejection(Reason.UNSUPPORTED_ENCODING, _unsupported(info)))
    if not info.body_is_json:
        return labelled(profile, Rejection(Reason.INVALID_JSON, "request body is not valid JSON"))
    model = info.model
    if model is None:
        return labelled(
            profile,
            Rejection(Reason.MISSING_MODEL, MISSING_MODEL),
        )
    if not isinstance(model, str):
        return labelled(profile, Rejection(Reason.INVALID_MODEL, "`model` must be a string"))
    pool = runtime.model_to_pool.get(model)
    if pool is None:
        return labelled(profile, Rejection(Reason.MODEL_NOT_FOUND, model_not_found(model)))
    if profile.allowed_models is not None and model not in profile.allowed_models:
        return labelled(
            profile,
            Rejection(Reason.MODEL_NOT_ALLOWED, f"tenant {tenant_id!r} may not use `{model}`"),
        )
    if info.background:
        return labelled(profile, Rejection(Reason.UNSUPPORTED_PARAMETER, BACKGROUND_REFUSED))
    cost = runtime.policy.cost
    if info.api is Api.TOKENIZER:
        # The engine's tokenizer, not its batch: no slot, nothing to charge.
        max_tokens, sequences, prompt_tokens = 0, 0, 0
    else:
        if info.api is Api.POOLING:
            max_tokens = 0  # the prompt's one pass is the whole answer
        else:
            max_tokens = _positive_int(info.max_tokens, cost.default_max_tokens)
        # Each of `n` choices (`best_of` candidates) of each prompt of a batch is a
        # sequence of its own in the engine's batch; a prompt is prefilled once for its
        # choices.
        per_prompt = max(_positive_int(info.choices, 1), _positive_int(info.best_of, 1))
        sequences = _positive_int(info.prompts, 1) * per_prompt
        # Media are counted per item, not per byte: base64 and links are not prompt text.
        text_bytes = max(0, info.content_length - info.media_bytes)
        prompt_tokens = max(1, int(text_bytes / cost.chars_per_token))
        prompt_tokens += info.media_items * cost.media_tokens
        widest = runtime.widest_requests[pool]
        if sequences > widest and info.api is not Api.POOLING:
            return labelled(
                profile, Rejection(Reason.TOO_MANY_SEQUENCES, _too_wide(sequences, widest))
            )
    return Ticket(
        tenant=profile,
        tenant_id=tenant_id,
        model=model,
        pool=pool,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        sequences=sequences,
        cost=cost.input_weight * prompt_tokens + cost.output_weight * max_tokens * sequences,
        first_byte_is_token=info.stream and info.api is not Api.RESPONSES,
        request_id=info.request_id,
    )


def _unsupported(info: RequestInfo) -> str:
    """Names the header as sent: a decompressor takes its own token out of a list, so
    what it left ("gzip" of "gzip, gzip") can be one Envoy undoes."""
    sent = info.sent_encoding or info.content_encoding
    known = ", ".join(DECOMPRESSORS)
    return f"Content-Encoding {sent!r} is not supported; send one of {known} or none"


def _too_wide(sequences: int, widest: int) -> str:
    """Wider than an engine, a generation would run in waves, each blocking every other
    tenant until its longest answer ends: one request could hold the engine for minutes.
    (A pooling request's items are single passes; it is admitted and overfills.)"""
    return (
        f"this request asks for {sequences} sequences at once (`n` choices of each "
        f"prompt); the engine serving its model takes at most {widest} of one request "
        f"here (its max_inflight less its headroom): send at most {widest} per request"
    )


def _not_allowed(tenant_id: str) -> Rejection:
    return Rejection(Reason.UNKNOWN_TENANT, f"tenant {tenant_id!r} is not allowed")


def labelled(profile: TenantProfile, rejection: Rejection) -> Rejection:
    """Label a rejection with the tenant it was for (named tenants only: bounded)."""
    return replace(rejection, tenant=profile.name if profile.named else None)


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _bare(value: str | None) -> str | None:
    token = value.strip() if value is not None else ""
    return token or None


def _positive_int(value: object, default: int) -> int:
    """A count as sent (max_tokens, n), read as the engine reads it (``"8"`` is 8); the
    engine validates it, we only need a sane estimate."""
    count = lax_int(value)
    if count is None:
        return default
    # Clamp so a hostile 1e300 cannot blow up a tenant's counter.
    return min(max(count, 1), 1_000_000)
