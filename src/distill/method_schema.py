"""The config sections of the ways to distill beyond one teacher (distill.stage_plan runs them):
several teachers, their ensemble, born-again generations and mutual learning."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from .schema_base import ModelConfig, Strict

RESERVED = frozenset(dir(nn.Module()))  # "training", "forward", "eval", ...

TEACHER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class TeacherEntry(ModelConfig):
    """One of several teachers (`teachers:`): its model (trained by the teacher stage, or a
    checkpoint or save_pretrained folder), a name (its stage teacher-<name>, and the prefix of
    its module paths in feature terms) and its weight in the ensemble."""

    name: str
    weight: float = Field(1.0, gt=0)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if name in RESERVED:
            raise ValueError(f"'{name}' is taken by torch.nn.Module (the teachers become submodules "
                             "of their ensemble under their names); choose another name")
        if not TEACHER_NAME.fullmatch(name):
            raise ValueError("a teacher's name is its stage (teacher-<name>) and the first part of its "
                             "module paths: lower-case letters, digits and '_', starting with a letter, "
                             "at most 32 characters (e.g. cnn, wide_mlp)")
        return name


class EnsembleConfig(Strict):
    """How several teachers make the KD targets (distill.ensemble)."""

    # average: one target, the weighted mean of the teachers' probabilities at T;
    # per_teacher: every logit term once per teacher (weight x the teacher's share)
    targets: Literal["average", "per_teacher"] = "average"
    T: float | None = Field(None, ge=1e-3)  # the averaging temperature; null: loss.kd.T


class SelfDistillConfig(Strict):
    """Born-again networks: generations of the teacher's architecture, each taught by the last."""

    generations: int = Field(0, ge=0, le=20)  # 0: off


class MutualConfig(Strict):
    """Deep mutual learning: the student and these peers learn together, without a teacher."""

    peers: list[ModelConfig] = Field(default_factory=list)
