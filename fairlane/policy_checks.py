"""Checks across policy sections that pydantic's per-field validation cannot see:
unknown priority classes and models, clashing engines, ports used twice."""

from __future__ import annotations

from fairlane.policy import Policy

Problem = tuple[tuple[str, ...], str]  # key path, message
# Engine settings of the one queue that replicas of a model share.
_POOL_SETTINGS = ("scheduler", "queue", "headroom", "linger_s")


def cross_reference_problems(policy: Policy) -> list[Problem]:
    """Every inconsistency between sections, each with the key path it is about."""
    problems: list[Problem] = []
    classes = set(policy.priority_classes)
    served = policy.served_models()
    for name, tenant in policy.tenants.items():
        if tenant.priority is not None and tenant.priority not in classes:
            problems.append(
                (
                    ("tenants", name, "priority"),
                    f"unknown priority class {tenant.priority!r} "
                    f"(priority_classes: {', '.join(policy.priority_classes)})",
                )
            )
        for model in tenant.models or ():
            if model not in served:
                problems.append((("tenants", name, "models"), f"{model!r} is served by no engine"))
    up = policy.unknown_tenants.priority
    if up is not None and up not in classes:
        problems.append((("unknown_tenants", "priority"), f"unknown priority class {up!r}"))
    if policy.default_tenant is not None and policy.default_tenant not in policy.tenants:
        problems.append((("default_tenant",), f"{policy.default_tenant!r} is not in tenants"))
    problems += _credential_problems(policy)
    problems += _engine_problems(policy)
    problems += _port_problems(policy)
    return problems


def _credential_problems(policy: Policy) -> list[Problem]:
    """An API key or certificate name can name one tenant only, and a certificate name
    needs the listener to ask clients for certificates."""
    problems: list[Problem] = []
    mutual = policy.listener.mutual_tls
    for field in ("api_keys", "client_certificates"):
        owner: dict[str, str] = {}
        for name, tenant in policy.tenants.items():
            values: tuple[str, ...] = getattr(tenant, field)
            if field == "client_certificates" and values and not mutual:
                problems.append(
                    (
                        ("tenants", name, field),
                        "needs listener.tls.client_ca_file: without it clients show no certificate",
                    )
                )
            for value in values:
                other = owner.setdefault(value, name)
                if other != name:
                    shown = value if field == "client_certificates" else value[:12] + "..."
                    problems.append(((("tenants", name, field)), f"{shown!r} is also {other}'s"))
    return problems


def queue_timeout_problems(
    policy: Policy, idle_timeout_s: float, limit: str = "listener.stream_idle_timeout_s"
) -> list[Problem]:
    """Queue timeouts at or above Envoy's stream idle timeout (named ``limit``): a queued
    request is an idle stream to Envoy, so it would end in a 504 first."""
    return [
        (("engines", name, "queue", "timeout_s"), f"must be below {limit} ({idle_timeout_s:g})")
        for name, engine in policy.engines.items()
        if engine.queue.timeout_s >= idle_timeout_s
    ]


def _engine_problems(policy: Policy) -> list[Problem]:
    problems = queue_timeout_problems(policy, policy.listener.stream_idle_timeout_s)
    seen: dict[str, str] = {}
    for name, engine in policy.engines.items():
        for model in engine.served:
            other = seen.setdefault(model, name)
            # Replicas serve the same models and share one fair queue.
            if other != name and set(policy.engines[other].served) != set(engine.served):
                problems.append(
                    (
                        ("engines", name, "models"),
                        f"{model!r} is also served by {other}; replicas of a model "
                        "must serve the same models",
                    )
                )
            first = policy.engines[other]
            path = engine.adapters.get(model)
            if other != name and path is not None and first.adapters.get(model, path) != path:
                problems.append(
                    (
                        ("engines", name, "adapters", model),
                        f"{other} loads it from {first.adapters[model]}; replicas answer "
                        "for an adapter alike only if they load the same one",
                    )
                )
            if other != name and any(
                getattr(first, key) != getattr(engine, key) for key in _POOL_SETTINGS
            ):
                problems.append(
                    (
                        ("engines", name),
                        f"replicas of {other} need the same {', '.join(_POOL_SETTINGS)}",
                    )
                )
    budget = policy.gpu_memory_budget_gb
    if budget is not None:
        for name, engine in policy.engines.items():
            if engine.gpu_memory_gb > budget:
                problems.append(
                    (
                        ("engines", name, "gpu_memory_gb"),
                        f"{engine.gpu_memory_gb:g} exceeds gpu_memory_budget_gb ({budget:g})",
                    )
                )
        at_boot = sum(e.gpu_memory_gb for e in policy.engines.values() if not e.lazy)
        if at_boot > budget:
            problems.append(
                (
                    ("gpu_memory_budget_gb",),
                    f"the engines started at boot (not lazy) need {at_boot:g} GB",
                )
            )
    return problems


def _port_problems(policy: Policy) -> list[Problem]:
    problems: list[Problem] = []
    owners: dict[int, str] = {}
    listener = policy.listener
    ports: list[tuple[tuple[str, ...], int]] = [
        (("listener", "port"), listener.port),
        (("listener", "admin_port"), listener.admin_port),
        (("listener", "control_port"), listener.control_port),
    ]
    ports += [(("engines", n, "port"), e.port) for n, e in policy.engines.items() if e.port]
    for path, port in ports:
        key = ".".join(path)
        if port in owners:
            problems.append((path, f"{port} is also {owners[port]}"))
        else:
            owners[port] = key
    return problems
