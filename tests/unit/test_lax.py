"""fairlane.lax against pydantic itself, whose lax mode vLLM's request models use."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairlane.lax import lax_bool, lax_int


class Fields(pydantic.BaseModel):
    flag: bool | None = None
    count: int | None = None


def pydantic_reads(field: str, value: object) -> object:
    try:
        return getattr(Fields.model_validate({field: value}), field)
    except pydantic.ValidationError:
        return "refused"


NUMERIC_TEXT = st.text(alphabet=" \t\n+-_.0123456789eE", max_size=8)
VALUES = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    NUMERIC_TEXT,
    st.sampled_from(["yes", "No", "ON", "off", "t", "F", "y", "n", "true", "FALSE", "", "2"]),
    st.text(max_size=6),
)


@given(VALUES)
def test_a_bool_reads_as_pydantic_reads_it(value: object) -> None:
    read = lax_bool(value)
    assert pydantic_reads("flag", value) == ("refused" if read is None else read)


@given(VALUES)
def test_a_count_pydantic_takes_reads_the_same(value: object) -> None:
    """Counts of 1 and more, the ones that make work (pydantic also reads "0-0" as 0)."""
    expected = pydantic_reads("count", value)
    if isinstance(expected, int) and expected >= 1:
        assert lax_int(value) == expected


@pytest.mark.parametrize(
    ("value", "read"),
    [("64", 64), (" +6_4\n", 64), ("64.00", 64), (64.0, 64), (True, 1), ("1e2", 100),
     ("64.5", None), (64.5, None), ("inf", None), (float("nan"), None), ("x", None),
     (None, None), ([64], None)],
)  # fmt: skip
def test_int_examples(value: object, read: int | None) -> None:
    assert lax_int(value) == read
