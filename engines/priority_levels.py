"""Fairlane's engine priorities, as the engine side reads them.

An engine priority (lower runs first) is a level times ``PRIORITY_LEVEL_SPAN`` plus a
rank under it: the slots the tenant held per unit of weight
(``fairlane.extproc.outcomes.engine_priority``). The engine orders its queue by the
whole number; holds compare levels only, so the rank reorders prompts without ever
holding a tenant's own work back behind itself.
"""

from __future__ import annotations

PRIORITY_LEVEL_SPAN = 10_000


def priority_level(priority: int) -> int:
    return priority // PRIORITY_LEVEL_SPAN
