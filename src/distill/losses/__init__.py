"""Distillation loss terms, one method per file, registered by name in LOSSES.

A term is an nn.Module with `forward(student: Outputs, teacher: Outputs, batch) -> scalar`.
It never applies its own weight (the Distiller does). A user's own term is named in the
config as `package.module:Class`.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..naming import resolve
from .at import AT
from .cc import CC
from .cosine import Cosine
from .crd import CRD
from .dist import DIST
from .dkd import DKD
from .fitnet import FitNet
from .kd import KD, kd_loss
from .minilm import MiniLMAttention, MiniLMValue
from .nst import NST
from .pkt import PKT
from .regressor import Regressor
from .rkd import RKD
from .sp import SP
from .tinybert import TinyBERTEmbedding, TinyBERTHidden
from .vid import VID

LOSSES: dict[str, type[nn.Module]] = {
    # logit methods
    "kd": KD,
    "dkd": DKD,
    "dist": DIST,
    # feature methods (need student= and teacher= layer paths)
    "fitnet": FitNet,
    "at": AT,
    "sp": SP,
    "rkd": RKD,
    "pkt": PKT,
    "vid": VID,
    "crd": CRD,
    "nst": NST,
    "cc": CC,
    "cosine": Cosine,
    "regressor": Regressor,
    # transformer methods (task: text_classification, which maps their layers to the models'
    # depths: losses.transformer)
    "tinybert_hidden": TinyBERTHidden,
    "tinybert_embedding": TinyBERTEmbedding,
    "minilm_attention": MiniLMAttention,
    "minilm_value": MiniLMValue,
}


def resolve_loss(name: str) -> type[nn.Module]:
    """Return the loss class for a registry name or a `package.module:Class` path."""
    return resolve(name, LOSSES, "loss", "package.module:Class", ConfigError)


__all__ = ["LOSSES", "KD", "kd_loss", "resolve_loss"]  # the classes: distill.losses.<file>
