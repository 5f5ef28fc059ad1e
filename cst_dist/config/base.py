"""What every config section shares: strict models (unknown keys are errors) and the one config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from cst_dist.errors import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the key to change."""


class StrictModel(BaseModel):
    # Unknown keys are errors: a typo in a 7B run's config must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
