"""Tokenizers for text classification: a built-in hashed-word one, or a local Hugging Face one.

`data.tokenizer: words` needs no files and no fitting: text is lower-cased and cut into words
and single punctuation marks, and each word's id is 4 + (blake2b(word) mod (vocab_size - 4)).
Ids 0-3 are [PAD], [CLS], [SEP] and [UNK] ([UNK] is never produced: every word hashes
somewhere). Hashing keeps the tokenizer stateless, so an exported model needs only its
settings (preprocess.json), not a vocabulary file; at the default 8192 buckets, two words
of a few thousand share an id rarely enough not to matter for a classifier.

Any other value is a local folder with a Hugging Face tokenizer (tokenizer.json or vocab
files), read with local_files_only: nothing is downloaded.

Every row is [CLS] tokens... [SEP], truncated to `max_length` and right-padded with [PAD];
the attention mask is `ids != pad_id` (the models compute it themselves, see distill.text.models).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..errors import DistillError, clip

WORD = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
SPECIALS = 4  # [PAD], [CLS], [SEP], [UNK]


class WordTokenizer:
    """Hashed words (the module docstring)."""

    name = "words"
    pad_id, cls_id, sep_id = 0, 1, 2

    def __init__(self, vocab_size: int = 8192):
        if vocab_size <= SPECIALS:
            raise DistillError(f"data.vocab_size={vocab_size} leaves no ids for words: use at least {SPECIALS + 1}.")
        self.vocab_size = vocab_size
        self._ids: dict[str, int] = {}

    def word_id(self, word: str) -> int:
        found = self._ids.get(word)
        if found is None:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            found = self._ids[word] = SPECIALS + int.from_bytes(digest, "little") % (self.vocab_size - SPECIALS)
        return found

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        ids = np.full((len(texts), max_length), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            words = [self.word_id(w) for w in WORD.findall(text.lower())[: max_length - 2]]
            tokens = [self.cls_id, *words, self.sep_id]
            ids[row, : len(tokens)] = tokens
        return ids

    def settings(self) -> dict:
        """What an export needs to tokenize raw text the same way (preprocess.json)."""
        return {"kind": "words", "vocab_size": self.vocab_size, "lowercase": True,
                "pattern": WORD.pattern, "specials": ["[PAD]", "[CLS]", "[SEP]", "[UNK]"],
                "hash": "blake2b-64 little-endian, 4 + h mod (vocab_size - 4)"}


class HFTextTokenizer:
    """A Hugging Face tokenizer from a local folder."""

    def __init__(self, folder: str):
        from ..models.hf import transformers_module

        try:
            self.tok = transformers_module().AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise DistillError(f"Cannot load a tokenizer from '{folder}' ({clip(str(e).splitlines()[0], 200)}). "
                               "Give a local folder with tokenizer files, or data.tokenizer=words.") from None
        if self.tok.pad_token_id is None:
            raise DistillError(f"The tokenizer in '{folder}' has no padding token; set pad_token in its "
                               "tokenizer_config.json (e.g. '[PAD]').")
        self.name, self.folder = folder, Path(folder)
        self.vocab_size, self.pad_id = len(self.tok), self.tok.pad_token_id

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        out = self.tok(list(texts), truncation=True, max_length=max_length, padding="max_length")
        return np.asarray(out["input_ids"], dtype=np.int64)

    def settings(self) -> dict:
        return {"kind": "hf", "files": "tokenizer/"}


def load_text_tokenizer(spec: str, vocab_size: int):
    if spec == "words":
        return WordTokenizer(vocab_size)
    if not Path(spec).is_dir():
        raise DistillError(f"data.tokenizer must be 'words' or a local folder with a Hugging Face tokenizer; "
                           f"'{spec}' is neither. Nothing is downloaded: save the tokenizer to a folder "
                           "first (tokenizer.save_pretrained(folder)).")
    return HFTextTokenizer(spec)
