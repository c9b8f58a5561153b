"""What every section of the policy is built from (``fairlane.policy``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    """Unknown keys are errors (a typo never falls back to a default); frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
