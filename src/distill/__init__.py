"""distill: knowledge distillation for PyTorch."""

from .config import RunConfig, load_config
from .contracts import Batch, Selection, StepOutput
from .distiller import Distiller, Outputs
from .engine import evaluate, fit
from .losses import KD, LOSSES, kd_loss
from .models import create_model
from .stages import run
from .tune_search import tune
from .tutorial import train_knowledge_distillation
from .version import __version__

__all__ = [
    "KD", "LOSSES", "Batch", "Distiller", "Outputs", "RunConfig", "Selection", "StepOutput",
    "__version__", "create_model", "evaluate", "fit", "kd_loss", "load_config", "run",
    "train_knowledge_distillation", "tune",
]
