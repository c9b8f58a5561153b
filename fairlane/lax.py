"""JSON values as an engine reads them: vLLM's and SGLang's request models are pydantic
models in lax mode, which take ``"64"`` for an int and ``"yes"`` for a bool.

Fairlane reads the fields that size a request (``n``, ``max_tokens``, ``stream``,
``background``) the same way, or a client could send ``"n": "64"`` and hold 64 of the
engine's sequences on one slot. The simulator reads them so too.
"""

from __future__ import annotations

import math

_TRUE_TEXTS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_TEXTS = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(value: object) -> bool | None:
    """A bool field's value (None: the engine refuses it)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        text = value.lower()
        if text in _TRUE_TEXTS:
            return True
        if text in _FALSE_TEXTS:
            return False
    return None


def lax_int(value: object) -> int | None:
    """An int field's value (None: not a number). Takes a little more than pydantic
    (``"1e2"``, Unicode digits): the engine refuses those, so no work comes of them."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)  # whitespace, a sign, underscores between digits
        except ValueError:
            pass
        try:
            value = float(value)  # "64.0"
        except ValueError:
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None
