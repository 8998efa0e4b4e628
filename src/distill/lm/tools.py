"""A language-model run rebuilt from its folder (`LanguageModelTask.load_run`), evaluated
(`distill eval`) and exported as a Hugging Face folder (`distill export --format hf`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError
from ..io import load_weights
from ..run_folder import check, claim, require
from ..run_reader import eval_target, require_stage, run_config, saved_models, weights_file
from ..tables import narrow_table
from ..trust import NO_TRUST, Trust
from .data import LMData, build_lm_data
from .distiller import evaluate_lm
from .lora import create_student, merge
from .models import create_lm
from .tokenizer import HFTokenizer

FORMATS = ("hf",)


def load_run(run_dir: str | Path, stage: str, trust: Trust = NO_TRUST, data: LMData | None = None,
             last: bool = False) -> tuple[nn.Module, LMData]:
    """(the stage's model in eval mode with its validation-selected weights, or the last
    epoch's with `last`; the run's LMData, rebuilt unless `data` is given)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, trust=trust)  # a config naming code: refused before anything is built
    require_stage(run_dir, stage)
    weights = weights_file(run_dir, stage, last)
    if weights is None:
        name = f"{stage}{'-last' if last else ''}.safetensors"
        raise DistillError(f"'{run_dir}' has no finished '{stage}' stage ({name} is missing).")
    data = data or build_lm_data(cfg.data, seed=cfg.seed)
    vocab = data.tokenizer.vocab_size
    if stage == "teacher":
        model = create_lm(cfg.teacher.model, cfg.teacher.kwargs, vocab, data.tokenizer)
    else:  # a LoRA student: its base rebuilt, then its adapters loaded (distill.lm.lora)
        model = create_student(cfg.student, vocab, data.tokenizer, cfg.seed)
    load_weights(model, weights)
    return model.eval(), data


def evaluate_run(target: str | Path, overrides: Sequence[str] = (), split: str = "test",
                 trust: Trust = NO_TRUST) -> dict:
    """Perplexity, NLL and next-token accuracy of every saved model of a run (or one weights
    file): {"split", "models": {"<stage>[-last]": evaluate_lm's dict}}."""
    if overrides:
        raise DistillError("distill eval of a language-model run takes no --data or overrides.")
    if split not in ("test", "val"):
        raise DistillError(f"Unknown split '{split}'. Use 'test' or 'val'.")
    run_dir, only = eval_target(target)
    cfg = run_config(run_dir, trust=trust)
    rows, data = {}, None
    for stage, key in saved_models(run_dir, only):
        model, data = load_run(run_dir, stage, trust, data, last=key == "last")
        loader = data.test if split == "test" else data.val
        rows[stage + ("-last" if key == "last" else "")] = evaluate_lm(model, loader, "cpu", cfg.lm.chunk)
    if not rows:
        raise DistillError(f"'{target}' holds no teacher/scratch/distill weights of a language-model run.")
    return {"split": split, "models": rows}


def evaluation_table(evaluation: dict):
    """A rich Table of `evaluate_run`'s output, for `distill eval`."""
    t = narrow_table(f"evaluation on {evaluation['split']} data (next-token, counted tokens only)")
    for col in ("model", "perplexity", "NLL (nats)", "next-token acc %", "tokens"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in evaluation["models"].items():
        t.add_row(name, f"{m['ppl']:.3f}", f"{m['loss']:.4f}", f"{m['acc']:.2f}", f"{m['tokens']:,}")
    return t


def export(run_dir: str | Path, fmt: str = "hf", out: str | Path | None = None, stage: str = "distill",
           trust: Trust = NO_TRUST) -> dict:
    """Write a stage's model as a Hugging Face folder (config.json, model.safetensors and, for a
    local tokenizer, its files) and check that transformers loads it back to the same logits."""
    from transformers import (
        AutoModelForCausalLM,  # the extra: LanguageModelTask checked it is there
    )

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise DistillError(f"'{run_dir}' is a task=language_model run, which exports as a Hugging "
                           f"Face folder: --format hf (not {fmt}).")
    if not out:  # the default <stage>-hf/ lands in the run folder: only one distill wrote
        require(run_dir, "run", "distill export")
    folder, default = (Path(out), False) if out else (run_dir / f"{stage}-hf", True)
    # distill overwrites only what it wrote: a user's --out folder with files is refused (the
    # default one inside a run folder distill owns is its own, marked or from before markers)
    check(folder, "export", "distill export --out", adopt=default)
    model, data = load_run(run_dir, stage, trust)
    ids = next(iter(data.test)).inputs[:2]
    with torch.no_grad():
        expected = model(ids).logits  # a LoRA student's: the adapted model, before merging
    if stage != "teacher" and run_config(run_dir, trust=trust).student.lora is not None:
        model = merge(model)  # a plain transformers model: the adapters folded into the base
    claim(folder, "export", "distill export --out", adopt=default)
    model.save_pretrained(str(folder))
    if isinstance(data.tokenizer, HFTokenizer):  # the byte tokenizer has no files
        data.tokenizer.tok.save_pretrained(str(folder))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()(ids).logits
    return {"path": str(folder), "format": "hf", "max_abs_diff": (got - expected).abs().max().item()}
