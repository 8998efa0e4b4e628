"""Exporting a text classifier (`TextClassificationTask.export`): the student as a graph of
(input_ids, attention_mask) int64 -> logits, with the tokenizer beside it.

The export folder is distill.export's (model, labels.json, preprocess.json), plus, for a
Hugging Face tokenizer, `tokenizer.json` (the fast tokenizer's own file). preprocess.json
says how text becomes the two inputs: the tokenizer (built-in hashed words with its settings,
or "hf", that file and its padding and truncation sides), max_length, padding with pad_id, and the mask
(1 for real tokens). `tokenize(texts, record, folder)` does exactly that, for `distill predict`.
Dynamic int8 quantizes the transformer's linear layers (a graph without convolutions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..classifier_run import load_run, rebuild
from ..errors import DistillError
from ..export import CALIBRATION_SAMPLES, ExportBundle
from .tokenizer import WordTokenizer

TOKENIZER_FILE = "tokenizer.json"


class RawText(nn.Module):
    """(input_ids, attention_mask) -> logits of a TextClassifier (kept as `model`, so int8
    quantization finds the student's nodes under /model/)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


def text_record(cfg, data) -> tuple[dict, dict[str, str]]:
    """(preprocess record, extra files) of a text run."""
    s = data.stats
    tokenizer = dict(s["tokenizer"])
    files = {}
    if tokenizer["kind"] == "hf":
        from .tokenizer import HFTextTokenizer

        tok = HFTextTokenizer(cfg.data.tokenizer).tok
        if not tok.is_fast:
            raise DistillError(f"The tokenizer in '{cfg.data.tokenizer}' is a slow (Python) tokenizer, which an "
                               "export cannot carry; save a fast tokenizer (tokenizer.json) and train with it.")
        files[TOKENIZER_FILE] = tok.backend_tokenizer.to_str()
        # tokenizer.json does not carry these (they live in tokenizer_config.json)
        tokenizer = {"kind": "hf", "file": TOKENIZER_FILE, "padding_side": tok.padding_side,
                     "truncation_side": tok.truncation_side}
    record = {"kind": "text", "num_classes": data.num_classes, "max_length": s["max_length"],
              "pad_id": s["pad_id"], "vocab_size": s["vocab_size"], "tokenizer": tokenizer,
              "text": {"truncation": "to max_length, [CLS]/[SEP] (or the tokenizer's own specials) kept",
                       "padding": f"{tokenizer.get('padding_side', 'right')}, with pad_id, to max_length",
                       "attention_mask": "1 for real tokens, 0 for padding"}}
    return record, files


def _int(record: dict, key: str, low: int) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DistillError(f"preprocess.json's {key} is {value!r}, not a whole number >= {low}; export the run again.")
    return value


def check_record(record: dict) -> dict:
    """The tokenizer part of a text export's preprocess.json, checked (it is read from disk)."""
    _int(record, "max_length", 2), _int(record, "pad_id", 0), _int(record, "vocab_size", 5)
    tok = record.get("tokenizer")
    sides = ("left", "right")
    good = isinstance(tok, dict) and (tok.get("kind") == "words" or (
        tok.get("kind") == "hf" and tok.get("file") == TOKENIZER_FILE
        and tok.get("padding_side") in sides and tok.get("truncation_side") in sides))
    if not good:
        raise DistillError(f"preprocess.json's tokenizer is {tok!r}: it should be {{kind: words}} or {{kind: hf, "
                           f"file: {TOKENIZER_FILE}, padding_side, truncation_side}}; export the run again.")
    return tok


def tokenize(texts: list[str], record: dict, folder: Path | None = None) -> dict[str, np.ndarray]:
    """The graph's two inputs for `texts`, as the run's data were tokenized."""
    tok, length = check_record(record), record["max_length"]
    if tok["kind"] == "words":
        ids = WordTokenizer(record["vocab_size"]).encode(texts, length)
    else:
        from tokenizers import Tokenizer

        path = Path(folder) / tok["file"]
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library's own errors for a damaged file
            raise DistillError(f"Could not read the tokenizer '{path}' ({e}); export the run again.") from None
        backend.enable_truncation(length, direction=tok["truncation_side"])
        backend.enable_padding(length=length, pad_id=record["pad_id"], direction=tok["padding_side"])
        ids = np.array([e.ids for e in backend.encode_batch(texts)], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids != record["pad_id"]).astype(np.int64)}


def text_bundle(run_dir: Path, stage: str, trust) -> ExportBundle:
    cfg, data = rebuild(run_dir, trust=trust)
    model, _ = load_run(run_dir, stage, trust, data)
    record, files = text_record(cfg, data)
    x = data.test.x[:8]
    example = {"input_ids": x, "attention_mask": (x != record["pad_id"]).long()}

    def feed(ids: torch.Tensor) -> dict[str, np.ndarray]:
        return {"input_ids": ids.numpy(), "attention_mask": (ids != record["pad_id"]).long().numpy()}

    def calibration() -> list[dict[str, np.ndarray]]:
        rows = data.teacher_train.x[:CALIBRATION_SAMPLES]
        return [feed(rows[i:i + 32]) for i in range(0, len(rows), 32)]

    def test():
        for i in range(0, len(data.test.x), 256):
            yield feed(data.test.x[i:i + 256]), data.test.y[i:i + 256].numpy()

    return ExportBundle("text_classification", RawText(model).eval(), example, record, list(data.class_names),
                        calibration=calibration, test=test, files=files)
