"""Text data for language-model runs: examples read from local files, tokenized, packed or padded.

Sources (`data.name`: pydoc, text, jsonl, hf) are read by distill.lm.sources; chat examples
(`messages`) are rendered by the tokenizer's chat template (distill.lm.chat).

Examples are split into train / validation / test (seeded by `data.split_seed`, unless the
source has its own splits) before they are cut, so no text is shared between splits. Each row
of a split is `max_length` token ids plus a target mask: mask[t] = 1 when token t is a target,
i.e. counted in the loss as the prediction made at position t - 1. Position 0 is never a
target; padding never is; with `mask_prompt` (default), prompt tokens are not either, nor a
chat's system/user turns and template scaffolding. A text or prompt/completion example ends
with <eos> (a target); a chat ends where its template ends the last turn.

With `packing` (the default for plain text), a split's examples are packed document-aware
(distill.lm.packing): one stream cut into rows that overlap by one token, with position ids
restarting at 0 at each document and attention never crossing a document boundary; a
document's first token is not a target. Otherwise each example is one row, truncated or
right-padded, with no position ids (0..L-1). Right padding needs no attention mask: under causal
attention a real token only sees earlier positions, never the padding after it, and padded
positions are never counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.loader import TensorLoader
from ..errors import DistillError
from .chat import encode_chat
from .packing import pack
from .sources import Example, read_examples, read_parts
from .tokenizer import load_tokenizer

__all__ = ["Example", "LMData", "build_lm_data", "encode", "fingerprint", "pack", "pad_rows", "read_examples"]


@dataclass
class LMData:
    teacher_train: TensorLoader
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader
    tokenizer: object
    counts: dict[str, int]
    # unpacked rows only: each split's example per row, so that a teacher with its own
    # tokenizer can tokenize the same texts (distill.lm.cross_tokenizer)
    examples: dict[str, list[Example]] = field(default_factory=dict)
    teacher_tokens: object = None  # that teacher's rows: a cross_tokenizer.TeacherTokens, or None


def encode(examples: list[Example], tokenizer, mask_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """(ids, target mask) per example: prompt tokens, completion tokens, then <eos>; a chat's
    tokens as its template renders them (distill.lm.chat)."""
    out = []
    for ex in examples:
        if ex.messages is not None:
            out.append(encode_chat(ex.messages, tokenizer, mask_prompt))
            continue
        p = tokenizer.encode(ex.prompt) if ex.prompt else []
        c = tokenizer.encode(ex.completion) + [tokenizer.eos_token_id]
        out.append((p + c, [0 if mask_prompt else 1] * len(p) + [1] * len(c)))
    return out


def pad_rows(encoded, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One example per row, truncated to `length` or right-padded with `pad_id` (mask 0)."""
    x = np.full((len(encoded), length), pad_id, dtype=np.int64)
    m = np.zeros((len(encoded), length), dtype=np.int64)
    for r, (ids, mask) in enumerate(encoded):
        ids, mask = ids[:length], mask[:length]
        x[r, :len(ids)], m[r, :len(mask)] = ids, mask
    m[:, 0] = 0
    return x, m


def assign_splits(parts: dict[str, list[Example]], val: float, test: float, seed: int) -> dict[str, list[Example]]:
    """Train / val / test examples: a source's own val and test splits as they are, the missing
    ones carved out of train by a seeded permutation (val first, then test)."""
    pool = parts["train"]
    n = len(pool)
    order = np.random.default_rng(seed).permutation(n)
    sizes = {"val": max(1, round(n * val)), "test": max(1, round(n * test))}
    out, at = {}, 0
    for split in ("val", "test"):
        if split in parts:
            out[split] = parts[split]
        else:
            out[split], at = [pool[i] for i in order[at:at + sizes[split]]], at + sizes[split]
    if n - at < 1:
        raise DistillError(f"{n} examples are too few to split into train, validation and test; "
                           "give more text or lower data.val_fraction / data.test_fraction.")
    return {"train": [pool[i] for i in order[at:]], **out}


def _rows(examples: list[Example], tokenizer, cfg, packing: bool):
    """(ids, target mask, position ids or None) of a split's rows, rows without targets dropped,
    and which rows were kept."""
    encoded = encode(examples, tokenizer, cfg.mask_prompt)
    if packing:
        x, m, p = pack(encoded, cfg.max_length)
    else:
        (x, m), p = pad_rows(encoded, cfg.max_length, tokenizer.pad_token_id), None
    keep = m.sum(1) > 0  # a row whose prompt fills max_length has nothing to learn
    p = None if p is None else torch.from_numpy(p[keep])
    return torch.from_numpy(x[keep]), torch.from_numpy(m[keep]), p, keep


def build_lm_data(cfg, seed: int = 0) -> LMData:
    """Loaders of Batches (inputs = ids, mask = target mask, index; positions for packed rows)
    for the train / val / test splits."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    parts = read_parts(cfg.name, cfg.path)
    examples = [e for part in parts.values() for e in part]
    plain = not any(e.prompt or e.messages is not None for e in examples)
    # a teacher with its own tokenizer needs one example per row (distill.lm.cross_tokenizer)
    packing = cfg.packing if cfg.packing is not None else plain and cfg.teacher_tokenizer is None
    splits, counts, rows_of = {}, {}, {}
    for split, chosen in assign_splits(parts, cfg.val_fraction, cfg.test_fraction, cfg.split_seed).items():
        x, m, p, keep = _rows(chosen, tokenizer, cfg, packing)
        splits[split] = (x, m, p)
        if not packing:
            rows_of[split] = [ex for ex, kept in zip(chosen, keep, strict=True) if kept]
        counts[split], counts[f"{split}_tokens"], counts[f"{split}_dropped"] = len(x), int(m.sum()), int((~keep).sum())
    if counts["train"] == 0:
        raise DistillError("No training row has a target token: raise data.max_length so that "
                           "completions fit after their prompts.")

    def loader(split, shuffle):
        x, m, p = splits[split]
        return TensorLoader(x, m, cfg.batch_size, shuffle=shuffle, seed=seed, y_is_mask=True, positions=p)

    counts["vocab_size"] = tokenizer.vocab_size
    counts["packing"] = int(packing)
    return LMData(loader("train", True), loader("train", True), loader("val", False),
                  loader("test", False), tokenizer, counts, rows_of)


def fingerprint(data: LMData) -> str:
    """sha256 over every split's ids, target mask and position ids: a checkpoint records it and
    refuses to resume on other data, rows packed or masked otherwise included."""
    h = hashlib.sha256()
    for loader in (data.train, data.val, data.test):
        for t in (loader.x, loader.y, loader.positions):
            if t is None:
                h.update(b"none")
                continue
            t = t.cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()
