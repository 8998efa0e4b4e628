"""distill: knowledge distillation for PyTorch."""

from .config import RunConfig, load_config  # noqa: E402
from .distiller import Distiller, Outputs  # noqa: E402
from .engine import evaluate, fit  # noqa: E402
from .losses import KD, LOSSES, kd_loss  # noqa: E402
from .models import create_model  # noqa: E402
from .stages import run  # noqa: E402
from .tutorial import train_knowledge_distillation  # noqa: E402
from .version import __version__  # noqa: F401

__all__ = [
    "KD", "LOSSES", "Distiller", "Outputs", "RunConfig", "create_model", "evaluate", "fit",
    "kd_loss", "load_config", "run", "train_knowledge_distillation",
]
