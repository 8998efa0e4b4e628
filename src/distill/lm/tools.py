"""`distill eval` and `distill export` for language-model run folders."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import load_config
from ..errors import DistillError
from ..io import load_weights
from ..trust import require_trust
from .data import build_lm_data
from .distiller import evaluate_lm
from .models import create_lm

STAGES = ("teacher", "scratch", "distill")


def is_lm_run(path: str | Path) -> bool:
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / "config.yaml"
    return config.is_file() and load_config(config).task == "language_model"


def load_lm(run_dir: Path, weights: Path, stage: str, data=None, trust_code: bool = False):
    cfg = load_config(run_dir / "config.yaml")
    require_trust(cfg, run_dir, trust_code)  # refused before anything is built
    data = data or build_lm_data(cfg.data, seed=cfg.seed)
    spec = cfg.teacher if stage == "teacher" else cfg.student
    model = create_lm(spec.model, spec.kwargs, data.tokenizer.vocab_size, data.tokenizer)
    load_weights(model, weights)
    return cfg, model.eval(), data


def evaluate_lm_run(target: str | Path, split: str = "test", trust_code: bool = False) -> dict:
    """Perplexity, NLL and next-token accuracy of every saved model of a run (or one file)."""
    target = Path(target)
    run_dir = target if target.is_dir() else target.parent
    files = sorted(run_dir.glob("*.safetensors")) if target.is_dir() else [target]
    rows, data = {}, None
    for f in files:
        stem = f.name.removesuffix(".safetensors")
        stage = stem.removesuffix("-last")
        if stage not in STAGES:
            continue
        cfg, model, data = load_lm(run_dir, f, stage, data, trust_code)
        loader = {"test": data.test, "val": data.val, "train": data.train}[split]
        rows[stem] = evaluate_lm(model, loader, "cpu", cfg.lm.chunk)
    if not rows:
        raise DistillError(f"'{target}' holds no teacher/scratch/distill weights of a language-model run.")
    return {"split": split, "models": rows}


def lm_evaluation_table(evaluation: dict):
    from rich.table import Table

    t = Table(title=f"evaluation on {evaluation['split']} data (next-token, counted tokens only)")
    for col in ("model", "perplexity", "NLL (nats)", "next-token acc %", "tokens"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in evaluation["models"].items():
        t.add_row(name, f"{m['ppl']:.3f}", f"{m['loss']:.4f}", f"{m['acc']:.2f}", f"{m['tokens']:,}")
    return t


def export_hf(run_dir: str | Path, out: str | Path | None = None, stage: str = "distill",
              trust_code: bool = False) -> dict:
    """Write a stage's model as a Hugging Face folder (config.json, model.safetensors and, for a
    local tokenizer, its files) and check that transformers loads it back to the same logits."""
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    weights = run_dir / f"{stage}.safetensors"
    if not weights.is_file():
        raise DistillError(f"'{run_dir}' has no finished '{stage}' stage ({weights.name} is missing).")
    _, model, data = load_lm(run_dir, weights, stage, trust_code=trust_code)
    out = Path(out) if out else run_dir / f"{stage}-hf"
    model.save_pretrained(str(out))
    if hasattr(data.tokenizer, "tok"):
        data.tokenizer.tok.save_pretrained(str(out))
    ids = next(iter(data.test))[0][:2]
    with torch.no_grad():
        expected = model(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()(ids).logits
    return {"path": str(out), "format": "hf", "max_abs_diff": (got - expected).abs().max().item()}
