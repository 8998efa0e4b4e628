"""The two schema pieces every section builds on: `Strict` (unknown keys and NaN refused) and
`ModelConfig` (a model spec). Split from config_schema so the method sections
(method_schema.py) can use them without an import cycle."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # allow_inf_nan=False: every float setting is finite (lr=inf, weight_decay=nan pass `gt`/`ge`
    # checks, or fail them with a misleading message, and train nothing but NaN)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelConfig(Strict):
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)  # teacher only: train.* keys it trains with instead
