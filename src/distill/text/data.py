"""`task: text_classification` data: labelled texts tokenized into fixed-length id rows.

The texts (distill.text.corpus) are tokenized once (distill.text.tokenizer), and the id rows
go through the classifier's own split code (distill.data.splits: stratified validation and
test, the students' label_fraction of the training labels, val_max), so the splits, the
transfer set and the seeds mean what they mean for any classifier. Rows are served by
`TextLoader`, the in-memory loader with the attention mask (ids != pad) on each Batch for the
terms that average over real tokens only.
"""

from __future__ import annotations

import torch

from ..contracts import Batch
from ..data import Data
from ..data.labels import check_labels
from ..data.loader import TensorLoader
from ..data.samples import ArraySamples, Source
from ..data.splits import make_splits
from .corpus import read_corpus
from .tokenizer import load_text_tokenizer


class TextLoader(TensorLoader):
    """A TensorLoader of token-id rows whose Batches carry the attention mask."""

    def __init__(self, x, y, batch_size, shuffle, seed, pad_id: int):
        super().__init__(x, y, batch_size, shuffle, seed)
        self.pad_id = pad_id

    def finish(self, x, idx, epoch) -> Batch:
        batch = super().finish(x, idx, epoch)
        batch.mask = (x != self.pad_id).long()
        return batch


def build_text_data(cfg, seed: int = 0, classes: list[str] | None = None) -> Data:
    """Data over token ids. Data.stats holds what raw text needs to become the model's inputs
    (the tokenizer's settings, its vocabulary size and pad id, max_length). With `classes`
    (a run's), labels are looked up in them: other data of the run's classes, or some of them."""
    parts, names = read_corpus(cfg, classes)
    tokenizer = load_text_tokenizer(cfg.tokenizer, cfg.vocab_size)
    samples = {s: ArraySamples(tokenizer.encode(texts, cfg.max_length), check_labels(y, len(names)))
               for s, (texts, y) in parts.items()}
    source = Source(samples["train"], samples.get("val"), samples.get("test"), class_names=names)
    splits = make_splits(source, cfg, len(names))
    pad = tokenizer.pad_id

    def loader(s, labels, train: bool) -> TextLoader:
        x = torch.from_numpy(s.materialize())
        y = torch.from_numpy(s.labels if labels is None else labels)
        return TextLoader(x, y, cfg.batch_size if train else cfg.eval_batch_size, train, seed, pad)

    stats = {"kind": "text", "max_length": cfg.max_length, "pad_id": pad, "vocab_size": tokenizer.vocab_size,
             "tokenizer": tokenizer.settings(), "tokenizer_source": cfg.tokenizer}
    return Data(loader(splits.teacher_train, None, True), loader(splits.train, splits.student_labels, True),
                loader(splits.val, None, False), loader(splits.test, None, False), len(names),
                (cfg.max_length,), splits.counts(), stats=stats, class_names=names)
