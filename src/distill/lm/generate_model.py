"""The model `distill generate` decodes with, and its tokenizer: a run folder's stage, a local
Hugging Face model folder, or a module handed to the Python API."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import DistillError
from ..io import load_weights
from ..run_reader import require_stage, run_config, weights_file
from ..stage_plan import is_teacher, spec_of
from ..trust import Trust
from .lora import create_student
from .models import create_lm
from .tokenizer import load_tokenizer


def positions(model: nn.Module) -> int | None:
    """The model's position limit (GPT-2's n_positions, Llama's max_position_embeddings), if any."""
    config = model.config  # a transformers config: the field's name varies by architecture
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _run_model(run_dir: Path, stage: str, trust: Trust) -> tuple[nn.Module, object]:
    """A run's stage with its validation-selected weights and the run's tokenizer (the data is
    not rebuilt: only data.tokenizer is read). A teacher the run did not train (teacher.checkpoint,
    or a model folder) is loaded from where the run read it."""
    cfg = run_config(run_dir, trust=trust)  # a config naming code: refused before anything is built
    if cfg.task != "language_model":
        raise DistillError(f"'{run_dir}' is a task={cfg.task} run; distill generate needs a "
                           "language-model run (task: language_model) or a model folder.")
    require_stage(run_dir, stage)
    spec = spec_of(cfg, stage)
    weights = weights_file(run_dir, stage)
    if weights is None and is_teacher(stage):
        weights = spec.checkpoint
    if weights is None and not (is_teacher(stage) and Path(spec.model).is_dir()):
        raise DistillError(f"'{run_dir}' has no finished '{stage}' stage ({stage}.safetensors is "
                           "missing); finish it with `distill run --resume` or pick another --stage.")
    teacher = is_teacher(stage)
    # a teacher with its own tokenizer (distill.lm.cross_tokenizer) writes in its own tokens
    own = cfg.data.teacher_tokenizer if teacher else None
    tokenizer = load_tokenizer(own or cfg.data.tokenizer)
    if teacher:
        model = create_lm(spec.model, spec.kwargs, tokenizer.vocab_size, tokenizer, role=stage,
                          trust_checkpoint=trust.checkpoint)
    else:  # a LoRA student: its base rebuilt, then its adapters loaded (distill.lm.lora)
        model = create_student(cfg.student, tokenizer.vocab_size, tokenizer, cfg.seed, trust.checkpoint)
    if weights is not None:
        load_weights(model, weights, trust=trust.checkpoint)
    return model, tokenizer


def _folder_model(folder: Path, tokenizer, trust: Trust) -> tuple[nn.Module, object]:
    has_own = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    if tokenizer is None and not has_own:
        raise DistillError(f"The model folder '{folder}' has no tokenizer files; give --tokenizer "
                           "(byte, or a local folder with the tokenizer the model was trained with).")
    tokenizer = load_tokenizer(str(folder) if tokenizer is None else str(tokenizer))
    model = create_lm(str(folder), {}, tokenizer.vocab_size, tokenizer, role="model",
                      trust_checkpoint=trust.checkpoint)
    return model, tokenizer


def load_model(source, stage: str, tokenizer, trust: Trust) -> tuple[nn.Module, object]:
    """(causal LM in eval mode, tokenizer) from a run folder, a model folder or a module."""
    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise DistillError("generate(model=<module>) needs tokenizer=: a distill tokenizer, "
                               "'byte', or a local tokenizer folder.")
        tok = load_tokenizer(str(tokenizer)) if isinstance(tokenizer, (str, Path)) else tokenizer
        return source.eval(), tok
    folder = Path(source)
    if (folder / "config.yaml").is_file():
        if tokenizer is not None:
            raise DistillError("A run folder generates with its own tokenizer (data.tokenizer); drop --tokenizer.")
        model, tok = _run_model(folder, stage, trust)
    elif (folder / "config.json").is_file():
        model, tok = _folder_model(folder, tokenizer, trust)
    else:
        raise DistillError(f"'{source}' is neither a run folder (config.yaml) nor a Hugging Face model "
                           "folder (config.json, as save_pretrained writes); nothing is downloaded.")
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < tok.vocab_size:
        raise DistillError(f"The model has {rows} output tokens but its tokenizer has {tok.vocab_size}: "
                           "give the tokenizer it was trained with (--tokenizer).")
    return model.eval(), tok
