"""Where a language-model run's examples come from (`data.name`), read from local files only.

- `pydoc`: built in, offline. The Python language reference's topics that ship with Python
  itself (`pydoc_data.topics`, about 465 KB of text in 79 topics), one example per topic.
- `text`: a .txt file, or a folder of them; one example per paragraph (blank-line separated).
- `jsonl`: one JSON object per line with a `text` field, or `prompt` and `completion` fields,
  or a `messages` list of {"role", "content"} (a chat, distill.lm.chat).
- `hf`: a local Hugging Face dataset read with the `datasets` package, never the hub: a
  .parquet / .arrow / .json / .jsonl file, a folder of them, or a `save_to_disk` folder
  (distill.data.hf.load_local). Its columns are `messages`, or `prompt` and `completion`, or
  `text` (the first of these present). Its train split is required; validation and test splits
  are used when present, and carved out of train (seeded by data.split_seed) when not.

`read_parts` returns the examples by split name: {"train": [...]} unless the source names more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistillError, short
from ..io import text_lines
from .chat import check_messages

SOURCES = ("pydoc", "text", "jsonl", "hf")
_FIELDS = "a string 'text' field, string 'prompt' and 'completion' fields, or a 'messages' list"


@dataclass
class Example:
    prompt: str
    completion: str  # the text that is trained on (all of it, for plain text)
    messages: list[dict] | None = None  # a chat: rendered by the tokenizer's template instead


def read_parts(name: str, path: str | None) -> dict[str, list[Example]]:
    """The examples of data source `name` by split: "train", and "val" / "test" when it has them."""
    if name == "pydoc":
        from pydoc_data.topics import topics

        return {"train": [Example("", topics[k]) for k in sorted(topics)]}
    if name not in SOURCES:
        raise DistillError(f"data.name for a language_model run must be one of {', '.join(SOURCES)}; "
                           f"got {short(name)}.")
    if not path or not Path(path).exists():
        what = {"text": ".txt file or folder", "jsonl": ".jsonl file",
                "hf": "local dataset file (.parquet, .arrow, .jsonl) or save_to_disk folder"}[name]
        raise DistillError(f"data.name={name} reads data.path, which "
                           f"{'is not set' if not path else repr(path) + ' does not exist'}. "
                           f"Point data.path to a {what}.")
    if name == "hf":
        return _read_hf(Path(path))
    return {"train": _read_text(Path(path)) if name == "text" else _read_jsonl(Path(path))}


def read_examples(name: str, path: str | None) -> list[Example]:
    """Every example of the source, all splits together (train first)."""
    return [e for part in read_parts(name, path).values() for e in part]


def _read_text(path: Path) -> list[Example]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DistillError(f"'{path}' holds no .txt files.")
    out = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        out += [Example("", p.strip()) for p in text.split("\n\n") if p.strip()]
    return out


def example(row, where: str) -> Example:
    """One example from a JSON object / dataset row (see the module docstring for the fields)."""
    if isinstance(row, dict) and row.get("messages") is not None:
        return Example("", "", check_messages(row["messages"], where))
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return Example("", row["text"])
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return Example(row["prompt"], row["completion"])
    raise DistillError(f"{where}: each row needs {_FIELDS}.")


def _read_jsonl(path: Path) -> list[Example]:
    out = []
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DistillError(f"{path}, line {n}: not valid JSON ({e}). Write one object per line.") from None
        out.append(example(row, f"{path}, line {n}"))
    return out


def _read_hf(path: Path) -> dict[str, list[Example]]:
    from ..data.hf import load_local, named_splits

    parts = named_splits(load_local(path), path)
    out = {}
    for split, ds in parts.items():
        names = set(ds.column_names)
        columns = next((c for c in (["messages"], ["prompt", "completion"], ["text"]) if set(c) <= names), None)
        if columns is None:
            raise DistillError(f"'{path}' ({split} split) has the columns {sorted(names)}; a language_model "
                               "run reads 'messages', or 'prompt' and 'completion', or 'text'. Rename "
                               "the column (datasets' rename_column) or pick another file.")
        rows = ds.select_columns(columns)
        out[split] = [example(row, f"'{path}' ({split} split), row {i}") for i, row in enumerate(rows)]
    return out
