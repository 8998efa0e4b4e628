"""Text data for language-model runs: examples read from local files, tokenized, packed or padded.

Sources (`data.name`):
- `pydoc`: built in, offline. The Python language reference's topics that ship with Python
  itself (`pydoc_data.topics`, about 465 KB of text in 79 topics), one example per topic.
- `text`: a .txt file, or a folder of them; one example per paragraph (blank-line separated).
- `jsonl`: one JSON object per line with a `text` field, or `prompt` and `completion` fields.

Examples are split into train / validation / test (seeded by `data.split_seed`) before they
are cut, so no text is shared between splits. Each row of a split is `max_length` token ids
plus a target mask: mask[t] = 1 when token t is a target, i.e. counted in the loss as the
prediction made at position t - 1. Position 0 is never a target; padding never is; with
`mask_prompt` (default), prompt tokens are not either. With `packing` (the default for text,
unless the teacher has its own tokenizer: distill.lm.cross_tokenizer), a split's examples are
joined by <eos> into one stream cut into rows that overlap by one token, so every token but the
first is a target exactly once; otherwise each example is one row, truncated or right-padded.

Right padding needs no attention mask: under causal attention a real token only sees earlier
positions, never the padding after it, and padded positions are never counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.loader import TensorLoader
from ..errors import DistillError, short
from .tokenizer import load_tokenizer

SOURCES = ("pydoc", "text", "jsonl")


@dataclass
class Example:
    prompt: str
    completion: str  # the text that is trained on (all of it, for plain text)


@dataclass
class LMData:
    teacher_train: TensorLoader
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader
    tokenizer: object
    counts: dict[str, int]
    # unpacked rows only: each split's example number (in read_examples' order) per row, so
    # that a teacher with its own tokenizer can tokenize the same texts (distill.lm.cross_tokenizer)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    teacher_tokens: object = None  # that teacher's rows: a cross_tokenizer.TeacherTokens, or None


def read_examples(name: str, path: str | None) -> list[Example]:
    if name == "pydoc":
        from pydoc_data.topics import topics

        return [Example("", topics[k]) for k in sorted(topics)]
    if name not in SOURCES:
        raise DistillError(f"data.name for a language_model run must be one of {', '.join(SOURCES)}; "
                           f"got {short(name)}.")
    if not path or not Path(path).exists():
        raise DistillError(f"data.name={name} reads data.path, which {'is not set' if not path else repr(path) + ' does not exist'}. "
                           f"Point data.path to a {'.txt file or folder' if name == 'text' else '.jsonl file'}.")
    return _read_text(Path(path)) if name == "text" else _read_jsonl(Path(path))


def _read_text(path: Path) -> list[Example]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DistillError(f"'{path}' holds no .txt files.")
    out = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        out += [Example("", p.strip()) for p in text.split("\n\n") if p.strip()]
    return out


def _read_jsonl(path: Path) -> list[Example]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DistillError(f"{path}, line {n}: not valid JSON ({e}). Write one object per line.") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            out.append(Example("", row["text"]))
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            out.append(Example(row["prompt"], row["completion"]))
        else:
            raise DistillError(f"{path}, line {n}: each line needs a string 'text' field, or string "
                               "'prompt' and 'completion' fields.")
    return out


def encode(examples: list[Example], tokenizer, mask_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """(ids, target mask) per example: prompt tokens, completion tokens, then <eos>."""
    out = []
    for ex in examples:
        p = tokenizer.encode(ex.prompt) if ex.prompt else []
        c = tokenizer.encode(ex.completion) + [tokenizer.eos_token_id]
        out.append((p + c, [0 if mask_prompt else 1] * len(p) + [1] * len(c)))
    return out


def pack(encoded, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Join examples into one stream; rows of `length` tokens overlapping by one token, so the
    target of every row's first position was the previous row's last (and is counted there)."""
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in encoded])
    mask = np.concatenate([np.asarray(m, dtype=np.int64) for _, m in encoded])
    step = length - 1
    rows = max(1, -(-(len(ids) - 1) // step))
    pad = rows * step + 1 - len(ids)
    ids, mask = np.pad(ids, (0, pad)), np.pad(mask, (0, pad))
    starts = np.arange(rows) * step
    take = starts[:, None] + np.arange(length)
    x, m = ids[take], mask[take]
    m[:, 0] = 0
    return x, m


def pad_rows(encoded, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One example per row, truncated to `length` or right-padded with `pad_id` (mask 0)."""
    x = np.full((len(encoded), length), pad_id, dtype=np.int64)
    m = np.zeros((len(encoded), length), dtype=np.int64)
    for r, (ids, mask) in enumerate(encoded):
        ids, mask = ids[:length], mask[:length]
        x[r, :len(ids)], m[r, :len(mask)] = ids, mask
    m[:, 0] = 0
    return x, m


def _split(n: int, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = max(1, round(n * val)), max(1, round(n * test))
    if n - n_val - n_test < 1:
        raise DistillError(f"{n} examples are too few to split into train, validation and test; "
                           "give more text or lower data.val_fraction / data.test_fraction.")
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


def build_lm_data(cfg, seed: int = 0) -> LMData:
    """Loaders of Batches (inputs = ids, mask = target mask, index) for the train / val / test splits."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    examples = read_examples(cfg.name, cfg.path)
    # a teacher with its own tokenizer needs one example per row (distill.lm.cross_tokenizer)
    packing = cfg.packing if cfg.packing is not None else (
        not any(e.prompt for e in examples) and cfg.teacher_tokenizer is None)
    splits, counts, rows_of = {}, {}, {}
    for split, idx in _split(len(examples), cfg.val_fraction, cfg.test_fraction, cfg.split_seed).items():
        encoded = encode([examples[i] for i in idx], tokenizer, cfg.mask_prompt)
        x, m = pack(encoded, cfg.max_length) if packing else pad_rows(encoded, cfg.max_length, tokenizer.pad_token_id)
        keep = m.sum(1) > 0  # a row whose prompt fills max_length has nothing to learn
        splits[split] = (torch.from_numpy(x[keep]), torch.from_numpy(m[keep]))
        if not packing:
            rows_of[split] = idx[keep]
        counts[split] = int(keep.sum())
        counts[f"{split}_tokens"] = int(m[keep].sum())
        counts[f"{split}_dropped"] = int((~keep).sum())
    if counts["train"] == 0:
        raise DistillError("No training row has a target token: raise data.max_length so that "
                           "completions fit after their prompts.")

    def loader(split, shuffle):
        x, m = splits[split]
        return TensorLoader(x, m, cfg.batch_size, shuffle=shuffle, seed=seed, y_is_mask=True)

    counts["vocab_size"] = tokenizer.vocab_size
    counts["packing"] = int(packing)
    return LMData(loader("train", True), loader("train", True), loader("val", False),
                  loader("test", False), tokenizer, counts, rows_of)

