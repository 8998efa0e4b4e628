"""`task: language_model`: what stages.Run needs to distill causal LMs (see distill.tasks)."""

from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path

from torch import nn

from ..contracts import Selection
from ..distiller import Distiller
from ..errors import DistillError, short
from ..lm import report as lm_report
from ..lm import tools as lm_tools
from ..lm.cross_tokenizer import (
    CrossTokenizerTeacher,
    build_teacher_tokens,
    check_cross_tokenizer,
    cross_terms,
)
from ..lm.data import LMData, build_lm_data
from ..lm.data import fingerprint as lm_fingerprint
from ..lm.distiller import check_vocab, evaluate_lm, lm_distiller
from ..lm.features import check_hidden_terms, token_terms
from ..lm.lora import create_student
from ..lm.models import check_head, create_lm, transformers
from ..lm.offline import open_topk_store
from ..lm.on_policy import OnPolicy
from ..lm.packing import check_isolation
from ..lm.tokenizer import load_tokenizer, vocab_digest
from ..runtime import DTYPES, barrier, is_main, world_size
from ..sharding import check_even_shares, check_precision
from ..stage_plan import is_teacher, spec_of
from ..terms import build_terms
from ..trust import NO_TRUST, Trust


def _model_tokenizer(spec: str):
    """The tokenizer saved beside a local model folder, if any."""
    folder = Path(spec)
    if folder.is_dir() and any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return load_tokenizer(str(folder))
    return None


class LanguageModelTask:
    name = "language_model"
    metrics = ("ppl", "loss", "acc")  # perplexity, next-token NLL (nats), next-token accuracy %
    selection = Selection("ppl", lower_is_better=True)  # the best epoch: lowest perplexity

    def __init__(self, cfg, trust_checkpoint: bool = False):
        self.cfg = cfg
        self.trust_checkpoint = trust_checkpoint  # a model folder's pickled weights may be loaded
        self.tokenizer = None  # the data's, once built: on-policy sampling needs its special ids
        self.teacher_tokens = None  # with data.teacher_tokenizer: the teacher's rows (lm.cross_tokenizer)
        self.splits = ()  # (val, test) loaders of the student's tokens
        self.own_tokens = weakref.WeakSet()  # models built on the teacher's tokenizer
        transformers()  # a clear error now if the extra is not installed

    def build_data(self, seed: int) -> LMData:
        data = build_lm_data(self.cfg.data, seed=seed)
        if self.cfg.data.teacher_tokenizer is not None:
            data.teacher_tokens = build_teacher_tokens(self.cfg.data, data)
        self.tokenizer, self.teacher_tokens = data.tokenizer, data.teacher_tokens
        self.splits = (data.val, data.test)
        return data

    @staticmethod
    def _tokenizer(role: str, data: LMData):
        """The tokenizer a role's model reads: the teacher's own, if declared, else the data's."""
        own = role == "teacher" and data.teacher_tokens is not None
        return data.teacher_tokens.tokenizer if own else data.tokenizer

    def build_terms(self) -> tuple[dict, float]:
        terms, ce_weight = build_terms(self.cfg)
        return cross_terms(self.cfg, terms), ce_weight

    def create_model(self, role: str, data: LMData) -> nn.Module:
        """The model of a role or a stage (teacher; student, scratch, distill)."""
        role = "teacher" if is_teacher(role) else "student"
        spec, tokenizer = spec_of(self.cfg, role), self._tokenizer(role, data)
        if role == "student":  # with student.lora: a frozen base and its adapters (distill.lm.lora)
            return create_student(self.cfg.student, tokenizer.vocab_size, tokenizer,
                                  self.cfg.seed, self.trust_checkpoint)
        model = create_lm(spec.model, spec.kwargs, tokenizer.vocab_size, tokenizer,
                          role=role, trust_checkpoint=self.trust_checkpoint)
        if tokenizer is not data.tokenizer:
            self.own_tokens.add(model)  # evaluated on the teacher's rows (`evaluate`)
        return model

    def pretrained_teacher(self) -> str | None:
        """teacher.checkpoint, or a teacher folder when no teacher stage is asked for (with
        one, the teacher stage fine-tunes the folder's model on the data first)."""
        t = self.cfg.teacher
        folder = Path(t.model).is_dir() and "teacher" not in self.cfg.stages
        return t.checkpoint or (t.model if folder else None)

    def preflight(self, data: LMData, terms: dict, has_teacher: bool) -> None:
        cfg = self.cfg
        check_cross_tokenizer(cfg, terms)
        on_policy = cfg.lm.on_policy.fraction > 0
        if on_policy and cfg.cache.topk:
            raise DistillError("On-policy batches need the online teacher to score the student's "
                               "samples; set lm.on_policy.fraction=0 or cache.topk=null.")
        if cfg.cache.topk and cfg.cache.mode not in ("memory", "disk"):
            raise DistillError(f"cache.topk stores an offline teacher: set cache: disk (or memory); "
                               f"cache.mode is {short(cfg.cache.mode)}.")
        if cfg.cache.topk and cfg.lm.shared_vocab:
            raise DistillError("An offline top-k teacher stores probabilities over the teacher's "
                               "whole vocabulary; with lm.shared_vocab use the online teacher "
                               "(cache.topk=null).")
        temps = {term.T for term, _ in token_terms(terms).values()}
        if cfg.cache.topk and len(temps) > 1:
            raise DistillError(f"An offline top-k teacher is stored at one temperature; the loss "
                               f"terms use several ({sorted(temps)}). Give them the same T.")
        if cfg.train.parallel == "fsdp" and world_size() > 1:
            if on_policy:
                raise DistillError("On-policy batches are generated outside the sharded forward; with "
                                   "train.parallel=fsdp set lm.on_policy.fraction=0 (or use parallel=ddp).")
            check_even_shares(data.counts, cfg.data.batch_size, cfg.train.accumulate, world_size())
            check_precision(cfg.train.precision)
        roles = ["student"] + (["teacher"] if has_teacher else [])
        models = {role: self.create_model(role, data) for role in roles}
        packed = data.val.positions  # position ids of packed rows, else None
        for role, model in models.items():
            self._check_tokens(role, model, data)
            own = model in self.own_tokens
            # unsharded: a process's share of a batch can be empty
            check_head(model, role, (data.teacher_tokens.val if own else data.val).x[:2],
                       None if packed is None else packed[:2])
            if packed is not None:  # documents must not see each other
                check_isolation(model, role, data.val.x, packed)
        if "teacher" in models and "distill" in cfg.stages and data.teacher_tokens is None:
            check_vocab(models["teacher"], models["student"], cfg.lm.shared_vocab)
        check_hidden_terms(terms, models["student"], models.get("teacher"), cfg.cache.topk)
        policy, positions = cfg.lm.on_policy, self._positions(models["student"])
        if policy.fraction > 0 and positions and policy.max_new_tokens >= positions:
            raise DistillError(f"lm.on_policy.max_new_tokens={policy.max_new_tokens} leaves no room "
                               f"for a prompt in the student's {positions} positions.")

    def _check_tokens(self, role: str, model: nn.Module, data: LMData) -> None:
        spec, tokenizer = getattr(self.cfg, role).model, self._tokenizer(role, data)
        key = "data.teacher_tokenizer" if tokenizer is not data.tokenizer else "data.tokenizer"
        own = _model_tokenizer(spec)
        if own is not None and vocab_digest(own) != vocab_digest(tokenizer):
            other = (" (or, for a teacher, data.teacher_tokenizer with a cross-tokenizer term "
                     "such as loss.uld)" if role == "teacher" and key == "data.tokenizer" else "")
            raise DistillError(
                f"The {role} in '{spec}' comes with its own tokenizer ({own.vocab_size} tokens), "
                f"which differs from {key} '{tokenizer.name}' ({tokenizer.vocab_size} tokens): its "
                f"token ids would mean other text. Set {key}={spec}{other}, or use models trained "
                "with one tokenizer."
            )
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < tokenizer.vocab_size:
            raise DistillError(f"The {role} has {rows} output tokens but the tokenizer "
                               f"'{tokenizer.name}' ({key}) has {tokenizer.vocab_size}.")
        positions = self._positions(model)
        if positions is not None and positions < self.cfg.data.max_length:
            raise DistillError(f"data.max_length={self.cfg.data.max_length} exceeds the {role}'s "
                               f"{positions} positions; lower it or build the model with more.")

    @staticmethod
    def _positions(model: nn.Module) -> int | None:
        config = model.config
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

    def distiller(self, teacher, student, terms: dict, ce_weight: float) -> Distiller:
        cfg, policy, sampler = self.cfg, self.cfg.lm.on_policy, None
        if terms and policy.fraction > 0:
            tok = self.tokenizer
            sampler = OnPolicy(policy.fraction, policy.temperature, policy.max_new_tokens,
                               policy.prompt_tokens, tok.eos_token_id, tok.pad_token_id, cfg.seed,
                               max_positions=self._positions(student))
        tokens = self.teacher_tokens
        source = partial(CrossTokenizerTeacher, tokens=tokens) if tokens is not None else None
        return lm_distiller(teacher, student, terms, ce_weight, cfg.lm.shared_vocab, cfg.lm.chunk,
                            sampler, source)

    def evaluate(self, model: nn.Module, loader, device) -> dict:
        """A model on the teacher's tokenizer is evaluated on its own rows of the same split."""
        if model in self.own_tokens:
            loader = self._own_rows(loader)
        return evaluate_lm(model, loader, device, self.cfg.lm.chunk)

    def _own_rows(self, loader):
        """The teacher's rows of the split that `loader` (the student's rows) holds."""
        tokens = self.teacher_tokens
        for student, own in zip(self.splits, (tokens.val, tokens.test), strict=True):
            if loader is student:
                return own
        raise DistillError("A teacher with its own tokenizer is evaluated on its own rows of the "
                           "run's validation and test splits only.")

    def ready_teacher(self, teacher: nn.Module, device) -> nn.Module:
        return teacher.to(device, DTYPES[self.cfg.train.teacher_dtype]).eval()

    def open_cache(self, distiller: Distiller, data: LMData, default_dir: Path, quiet: bool) -> str:
        """With cache.topk: store the teacher's top-k once, then train without the teacher.
        Otherwise off: a full-vocabulary cache would take 4V bytes per token."""
        cfg = self.cfg
        if not cfg.cache.topk:
            return "off: language models use an offline teacher only with cache.topk (top-k per token)"
        T = next(iter(distiller.terms.values())).T
        device = next(distiller.student.parameters()).device
        path = Path(cfg.cache.dir) if cfg.cache.dir else default_dir
        for builder in (True, False):  # under torchrun, rank 0 builds a disk store, then the rest reuse it
            if is_main() == builder or cfg.cache.mode == "memory":
                store, why = open_topk_store(distiller.teacher, data.train, k=cfg.cache.topk, T=T,
                                             storage=cfg.cache.mode, path=path, device=device, quiet=quiet)
            if cfg.cache.mode == "memory":
                break
            barrier()
        distiller.attach_source(store)
        distiller.drop_teacher()  # the student trains from the store alone
        return why

    def describe(self, data: LMData) -> list[str]:
        c, cfg = data.counts, self.cfg
        return [
            f"[bold]{cfg.name}[/bold] on {cfg.data.name}: {c['train']} training rows of "
            f"{cfg.data.max_length} tokens ({c['train_tokens']:,} target tokens), {c['val']} "
            f"validation ({c['val_tokens']:,}), {c['test']} test ({c['test_tokens']:,}); tokenizer "
            f"{data.tokenizer.name} ({data.tokenizer.vocab_size} tokens), "
            f"{'packed' if c['packing'] else 'padded'} rows."
            + (f" The teacher reads its own tokenizer {data.teacher_tokens.tokenizer.name} "
               f"({data.teacher_tokens.tokenizer.vocab_size} tokens); its perplexity is per teacher token."
               if data.teacher_tokens is not None else "")
        ]

    def data_summary(self, data: LMData) -> dict:
        own = {"teacher_tokenizer": data.teacher_tokens.tokenizer.name} if data.teacher_tokens is not None else {}
        return {"tokenizer": data.tokenizer.name, **own, **data.counts, "sha256": lm_fingerprint(data)}

    # ---------------------------------------------------------------- a run folder read back

    export_formats = lm_tools.FORMATS

    def load_run(self, run_dir: Path, stage: str, trust: Trust = NO_TRUST, data: LMData | None = None,
                 last: bool = False) -> tuple[nn.Module, LMData]:
        """A stage's causal LM with its weights, and the run's LMData (distill.lm.tools)."""
        return lm_tools.load_run(run_dir, stage, trust, data, last)

    def evaluate_run(self, target: Path, overrides=(), split: str = "test", trust: Trust = NO_TRUST) -> dict:
        """Perplexity, NLL and next-token accuracy of the saved models (no data overrides)."""
        return lm_tools.evaluate_run(target, overrides, split, trust)

    def evaluation_table(self, evaluation: dict):
        return lm_tools.evaluation_table(evaluation)

    def export(self, run_dir: Path, fmt: str, out: Path | None = None, stage: str = "distill",
               trust: Trust = NO_TRUST, quantize: str | None = None) -> dict:
        """A Hugging Face folder, loaded back by transformers and checked against the logits."""
        if quantize is not None:
            raise DistillError(f"'{run_dir}' is a language-model run, exported as a Hugging Face folder; "
                               "--quantize makes int8 ONNX classifiers only. Remove --quantize.")
        return lm_tools.export(run_dir, fmt, out, stage, trust)

    def write_report(self, run_dir: Path, trust: Trust = NO_TRUST) -> Path:
        """report.md and curves.png from summary.json and metrics.jsonl (distill.lm.report):
        nothing is rebuilt, so no code is imported and `trust` is not needed."""
        return lm_report.write_report(run_dir)
