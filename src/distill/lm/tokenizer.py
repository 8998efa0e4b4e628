"""Tokenizers for language-model runs: a built-in byte-level one, or a model's local tokenizer.

`data.tokenizer: byte` needs nothing: UTF-8 bytes are tokens 0..255, then <eos> = 256 and
<pad> = 257 (vocab 258). Any other value is a local folder holding a Hugging Face tokenizer
(tokenizer.json etc.), loaded without network access.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DistillError


class ByteTokenizer:
    """UTF-8 bytes as tokens; no merges, so any text round-trips exactly."""

    name = "byte"
    vocab_size = 258
    eos_token_id = 256
    pad_token_id = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def get_vocab(self) -> dict[str, int]:
        vocab = {f"<0x{i:02X}>": i for i in range(256)}
        return vocab | {"<eos>": self.eos_token_id, "<pad>": self.pad_token_id}


class HFTokenizer:
    """A Hugging Face tokenizer read from a local folder (local_files_only: never the hub)."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise DistillError(
                f"Cannot load a tokenizer from '{folder}' ({str(e).splitlines()[0][:200]}). Give "
                "a local folder with tokenizer files (tokenizer.json or vocab files), or "
                "data.tokenizer=byte."
            ) from None
        self.name = str(folder)
        self.vocab_size = len(self.tok)
        self.eos_token_id = self.tok.eos_token_id
        if self.eos_token_id is None:
            raise DistillError(f"The tokenizer in '{folder}' has no end-of-sequence token; "
                               "set eos_token in its tokenizer_config.json.")
        pad = self.tok.pad_token_id
        self.pad_token_id = self.eos_token_id if pad is None else pad  # pads are masked anyway

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def get_vocab(self) -> dict[str, int]:
        return self.tok.get_vocab()


def load_tokenizer(spec: str) -> ByteTokenizer | HFTokenizer:
    if spec == "byte":
        return ByteTokenizer()
    if not Path(spec).is_dir():
        raise DistillError(
            f"data.tokenizer must be 'byte' or a local folder with a tokenizer; '{spec}' is "
            "neither. Nothing is downloaded: save the tokenizer to a folder first "
            "(tokenizer.save_pretrained(folder))."
        )
    return HFTokenizer(spec)


def vocab_digest(tokenizer) -> str:
    """sha256 of the token -> id map: two tokenizers agree exactly when their digests do."""
    text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()
