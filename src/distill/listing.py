"""`distill losses` and `distill models`: what a config can name, with its defaults and shapes."""

from __future__ import annotations

import inspect

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DistillError


def _defaults(cls) -> str:
    params = inspect.signature(cls.__init__).parameters.values()
    return ", ".join(
        f"{p.name}={p.default}" for p in params
        if p.default is not inspect.Parameter.empty and p.name not in ("student", "teacher")
    ) or "-"


def cmd_losses(args) -> int:
    """List every registered loss with its citation, defaults and the layers it needs."""
    from .losses import LOSSES
    from .losses.lm import LM_LOSSES

    table = Table(title="distillation losses (use as loss.<name>.<key>=value)")
    for col in ("name", "paper", "defaults", "layers"):
        table.add_column(col)
    table.add_row("ce", "cross-entropy on the labels", "weight", "-")
    for name, cls in LOSSES.items():
        layers = "student, teacher" if "student" in inspect.signature(cls.__init__).parameters else "-"
        table.add_row(name, getattr(cls, "cite", ""), _defaults(cls), layers)
    Console().print(table)
    lm = Table(title="token and hidden-state losses for task: language_model (per counted target token)")
    for col in ("name", "paper", "defaults"):
        lm.add_column(col)
    lm.add_row("ce", "next-token cross-entropy on the data", "weight")
    for name, cls in LM_LOSSES.items():
        lm.add_row(name, getattr(cls, "cite", ""), _defaults(cls))
    Console().print(lm)
    return 0


def cmd_models(args) -> int:
    """List the model zoo with parameters (and, with --flops, FLOPs) at each model's usual input
    shape. Models are built on the meta device without initialisation: shapes, not values."""
    from .models import MODELS, count_flops, count_parameters, create_skeleton, default_shape

    table = Table(title="models (teacher.model / student.model; or package.module:function)",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    cols = ("name", "input", "classes", "params", *(("MFLOPs",) if args.flops else ()), "hookable paths")
    for col in cols:
        table.add_column(col, justify="right" if col in ("classes", "params", "MFLOPs") else "left",
                         no_wrap=col != "hookable paths")
    for name in MODELS:
        shape, classes = default_shape(name)
        try:
            model = create_skeleton(name, classes, shape)
        except DistillError as e:  # hf_image without the optional transformers package
            table.add_row(name, "x".join(map(str, shape)), str(classes), "-", *(("-",) if args.flops else ()), escape(str(e)))
            continue
        paths = getattr(model, "hook_paths", None) or [n for n, _ in model.named_children()]
        flops = (f"{count_flops(model, shape) / 1e6:,.2f}",) if args.flops else ()
        table.add_row(name, "x".join(map(str, shape)), str(classes), f"{count_parameters(model):,}", *flops,
                      ", ".join(paths))
    Console().print(table)
    return 0
