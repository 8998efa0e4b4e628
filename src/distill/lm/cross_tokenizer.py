"""A teacher with its own tokenizer (`data.teacher_tokenizer`): its rows, its source, the checks.

Every example is tokenized twice: by the student's tokenizer (the run's data, unchanged) and by
the teacher's, one example per row (`TeacherTokens`: row r of the teacher's training rows is
the same text as the student's training row r). The teacher reaches its rows through the
batch's `index` (`CrossTokenizerTeacher`, a `contracts.TeacherSource`), so the student's data
path, accumulation and DDP sharding are those of any LM run.

Alignment (as in the ULD paper's reference code, Boizard et al. 2024): per example, the i-th
target token under the student's tokenizer is paired with the i-th target token under the
teacher's, for i below the smaller of the two counts. A student target without a teacher partner
contributes 0 to the term, and the term is still averaged over all the student's target tokens
(the unit of every LM mean here), so accumulation and process counts do not change the update.

Packing joins examples into one stream cut at the student's token boundaries, so a row is no
longer one text under the teacher's tokenizer: packing is refused (and is off by default with a
teacher tokenizer). The teacher is never trained on its own tokenization here (no teacher
stage): it comes from a local folder (teacher.model) or teacher.checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..contracts import Batch
from ..data.loader import TensorLoader
from ..errors import DistillError, short
from ..losses.lm import CROSS_TOKENIZER_TERMS, TOKEN_LOSSES
from ..runtime import rank, world_size
from .chunked import Head, TeacherRows
from .data import LMData, encode, pad_rows
from .models import hidden_states
from .tokenizer import load_tokenizer


@dataclass
class TeacherTokens:
    """The teacher's tokenization of the run's examples: training rows by the student's row
    index, and validation / test loaders (the teacher's own metrics are taken on its tokens)."""

    tokenizer: object
    train_x: torch.Tensor  # [student training rows, max_length] teacher ids
    train_m: torch.Tensor  # the teacher's target mask of those rows
    val: TensorLoader
    test: TensorLoader


def build_teacher_tokens(cfg, data: LMData) -> TeacherTokens:
    """The teacher's rows for `data` (unpacked: `data.examples` holds each row's example)."""
    if not data.examples:
        raise DistillError("data.teacher_tokenizer needs one example per row; set data.packing=false.")
    tokenizer = load_tokenizer(cfg.teacher_tokenizer)
    rows = {}
    for split, examples in data.examples.items():
        encoded = encode(examples, tokenizer, cfg.mask_prompt)
        x, m = pad_rows(encoded, cfg.max_length, tokenizer.pad_token_id)
        rows[split] = (torch.from_numpy(x), torch.from_numpy(m))

    def loader(split):
        return TensorLoader(*rows[split], cfg.batch_size, y_is_mask=True).shard(rank(), world_size())

    return TeacherTokens(tokenizer, *rows["train"], loader("val"), loader("test"))


def align(student_target: torch.Tensor, teacher_target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pair the student's counted positions with the teacher's, example by example.

    student_target [B, Ls] and teacher_target [B, Lt] are the target masks of the prediction
    positions (mask[:, 1:]). For the student's rows in `[student_target]` order (row-major: each
    example's targets in order), returns (example [M], teacher position [M], valid [M]): row j,
    the i-th target of example b, is paired with the position of the i-th teacher target of b;
    valid is False where b has at most i teacher targets (the position is then a placeholder)."""
    s, t = student_target.bool(), teacher_target.bool()
    example = torch.arange(len(s), device=s.device)[:, None].expand_as(s)[s]
    rank_s = (s.cumsum(1) - 1)[s]  # i: which target of its example each student row is
    # the teacher's target positions first, in order (a stable sort of "not a target")
    positions = torch.sort((~t).to(torch.int8), dim=1, stable=True).indices
    valid = rank_s < t.sum(1)[example]
    pos = positions[example, rank_s.clamp(max=t.shape[1] - 1)]
    return example, pos, valid


class CrossTokenizerTeacher:
    """The teacher run on its own tokenization of the batch's rows (a `contracts.TeacherSource`):
    its final hidden states at the teacher positions aligned with the student's targets (`align`);
    the chunked loss applies its output layer chunk by chunk."""

    def __init__(self, teacher: nn.Module, tokens: TeacherTokens):
        self.teacher, self.tokens = teacher, tokens

    @torch.no_grad()
    def targets(self, batch: Batch) -> TeacherRows:
        if batch.index is None:
            raise DistillError("A teacher with its own tokenizer reads its rows by the batch's "
                               "index; this batch has none (on-policy samples are refused with "
                               "data.teacher_tokenizer).")
        device = batch.inputs.device
        rows = batch.index.to(self.tokens.train_x.device)
        ids, mask = self.tokens.train_x[rows].to(device), self.tokens.train_m[rows].to(device)
        example, pos, valid = align(batch.mask[:, 1:], mask[:, 1:])
        hidden = hidden_states(self.teacher, ids)[:, :-1][example, pos]
        return TeacherRows(hidden=hidden, head=Head.of(self.teacher), valid=valid)

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here."""

    def reference(self) -> None:
        return None


def cross_terms(cfg, terms: dict) -> dict:
    """With data.teacher_tokenizer, the terms switched off by weight 0 that compare token ids
    (the LM default's forward_kl, after loss.forward_kl.weight=0) are left out: they would need
    one vocabulary. Those with a weight are refused by `check_cross_tokenizer`."""
    if cfg.data.teacher_tokenizer is None:
        return terms
    return {name: (term, w) for name, (term, w) in terms.items() if w or isinstance(term, CROSS_TOKENIZER_TERMS)}


def check_cross_tokenizer(cfg, terms: dict) -> None:
    """Refuse what a teacher with its own tokenizer cannot do (cfg: a LanguageModelConfig)."""
    cross = [name for name, (term, _) in terms.items() if isinstance(term, CROSS_TOKENIZER_TERMS)]
    if cross and cfg.cache.topk:
        raise DistillError(f"loss.{cross[0]} sorts each model's whole next-token distribution, but "
                           "an offline top-k teacher keeps k of the teacher's tokens only (and the "
                           "student's probabilities at those ids are not its own top k). Use the "
                           "online teacher: cache.topk=null.")
    if cfg.data.teacher_tokenizer is None:
        return
    same = [name for name, (term, _) in terms.items() if not isinstance(term, CROSS_TOKENIZER_TERMS)]
    if same:
        cross = [k for k, v in TOKEN_LOSSES.items() if issubclass(v, CROSS_TOKENIZER_TERMS)]
        raise DistillError(
            f"loss.{same[0]} compares the two models' probabilities token id by token id, but with "
            f"data.teacher_tokenizer the teacher's ids mean other text than the student's. Use a "
            f"cross-tokenizer term instead (type: {', '.join(cross)}), e.g. "
            f"loss.{same[0]}.type={cross[0]}, or remove data.teacher_tokenizer."
        )
    refusals = [
        ("teacher" in cfg.stages, "stages has 'teacher', but a teacher with its own tokenizer is not "
         "trained here: give a trained one (teacher.model=<local folder> or teacher.checkpoint) and "
         "set stages=[scratch, distill]"),
        (cfg.data.packing is True, "data.packing=true joins examples at the student's token "
         "boundaries, so a row is no text of its own for the teacher's tokenizer: set data.packing=false"),
        (bool(cfg.cache.topk), "cache.topk stores the teacher's top-k over the student's rows; "
         "use the online teacher (cache.topk=null)"),
        (cfg.lm.on_policy.fraction > 0, "on-policy samples are the student's tokens, which the "
         "teacher cannot read: set lm.on_policy.fraction=0"),
        (cfg.lm.shared_vocab is not None, "lm.shared_vocab slices one vocabulary shared by both "
         "models, which two tokenizers do not have: remove lm.shared_vocab"),
    ]
    for refused, why in refusals:
        if refused:
            raise DistillError(f"data.teacher_tokenizer={short(cfg.data.teacher_tokenizer)}: {why}.")
