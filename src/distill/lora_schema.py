"""`student.lora` of `task: language_model` runs: the schema of a LoRA student (distill.lm.lora).

Only a language model's student takes it: LanguageModelConfig's student is `LMStudentConfig`,
while every other model section stays a plain `ModelConfig`, so `student.lora` on a classifier
(or `teacher.lora` anywhere) is an unknown key like a typo.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .schema_base import ModelConfig, Strict

ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output layer


class LoraConfig(Strict):
    """Low-rank adapters (Hu et al. 2021, "LoRA"): each adapted layer W x becomes
    W x + (alpha / r) B A x with A [r, in] and B [out, r] trained and W frozen."""

    r: int = Field(8, gt=0)  # the rank of B A
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input
    # names of the layers to adapt (a module whose path is the name or ends with ".<name>"),
    # or all-linear: every linear layer but the output layer
    target_modules: list[str] | Literal["all-linear"] = ALL_LINEAR

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str) and value != ALL_LINEAR:
            raise ValueError(f"give a list of layer names, e.g. [c_attn] or [q_proj, v_proj], or "
                             f"'{ALL_LINEAR}' (got the string {value!r})")
        if isinstance(value, list):
            if not value:
                raise ValueError(f"name at least one layer to adapt, e.g. [q_proj, v_proj], or use '{ALL_LINEAR}'")
            bad = [v for v in value if not isinstance(v, str) or not v.strip()]
            if bad:
                raise ValueError(f"layer names must be non-empty strings (got {bad[0]!r})")
        return value


class LMStudentConfig(ModelConfig):
    """A language model's student: a model spec, optionally adapted with LoRA."""

    lora: LoraConfig | None = None  # train low-rank adapters on a frozen base (student.model)

    @model_validator(mode="after")
    def _base_is_the_model(self) -> LMStudentConfig:
        if self.lora is not None and self.checkpoint:
            raise ValueError("a LoRA student adapts the base named by student.model (a folder saved "
                             "with save_pretrained, or an architecture built from student.kwargs); "
                             "student.checkpoint would replace that base. Save the base as a folder "
                             "and set student.model to it, and remove student.checkpoint")
        return self
