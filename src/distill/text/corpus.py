"""Labelled texts, read by `data.name` for `task: text_classification`.

- `pydoc` (built in, offline): paragraphs of the Python language reference and the built-in
  types' documentation that ship with Python (`pydoc_data.topics`), each labelled by the part
  of the documentation its topic belongs to (TOPIC_GROUPS: six classes). Paragraphs under 8
  words (headings, grammar lines) are left out, and so is a paragraph that appears in more
  than one topic (the "compound" topic repeats "if", "for", ...): a repeated paragraph would
  sit in training and test at once. The text differs a little between Python versions.
- `csv`: a CSV file with a header; `data.text_column` and `data.label_column` (default text,
  label). Labels may be integers (0..K-1) or strings (classes in sorted order).
- `jsonl`: one JSON object per line with those two fields.
- `hf`: a local Hugging Face dataset (see distill.data.hf for what it reads), those two columns;
  its validation and test splits are used when it has them.

`read_corpus(cfg)` returns {"train": (texts, labels), "val": ..., "test": ...} (val and test
only where the data predefine them) and the class names.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..data.checks import check_used_classes
from ..errors import DistillError, short

TEXT_SOURCES = ("pydoc", "csv", "jsonl", "hf")
MIN_WORDS = 8

# pydoc topic -> the part of the documentation it comes from (the label of its paragraphs)
TOPIC_GROUPS = {
    "lexical & execution model": [
        "atom-identifiers", "atom-literals", "dynamic-features", "exceptions", "execmodel",
        "floating", "id-classes", "identifiers", "imaginary", "integers", "naming", "numbers",
        "strings"],
    "data model": [
        "attribute-access", "callable-types", "context-managers", "customization",
        "numeric-types", "objects", "sequence-types", "specialattrs", "specialnames", "types"],
    "expressions": [
        "attribute-references", "await", "binary", "bitwise", "booleans", "calls", "comparisons",
        "conversions", "dict", "exprlists", "in", "lambda", "lists", "operator-summary", "power",
        "shifting", "slicings", "subscriptions", "unary"],
    "simple statements": [
        "assert", "assignment", "augassign", "break", "continue", "del", "global", "import",
        "nonlocal", "pass", "raise", "return", "yield"],
    "compound statements": [
        "async", "class", "compound", "else", "for", "function", "if", "try", "while", "with"],
    "built-in types": [
        "bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects",
        "formatstrings", "string-methods", "truth", "typesfunctions", "typesmapping",
        "typesmethods", "typesmodules", "typesseq", "typesseq-mutable"],
}


def pydoc_corpus() -> tuple[list[str], np.ndarray, list[str]]:
    """(paragraphs, labels, class names) of the built-in example (the module docstring)."""
    from pydoc_data.topics import topics

    names = list(TOPIC_GROUPS)
    seen: dict[str, set[int]] = {}
    for label, group in enumerate(names):
        for topic in TOPIC_GROUPS[group]:
            for para in topics.get(topic, "").split("\n\n"):
                text = " ".join(para.split())
                if len(text.split()) >= MIN_WORDS:
                    seen.setdefault(text, set()).add(label)
    kept = [(text, labels.pop()) for text, labels in seen.items() if len(labels) == 1]
    return [t for t, _ in kept], np.array([y for _, y in kept], dtype=np.int64), names


def _check_label_values(parts: dict[str, list], where: str) -> None:
    """Every label is a number or a non-empty string: a missing label is not a class."""
    for split, labels in parts.items():
        for i, v in enumerate(labels):
            bad = v is None or isinstance(v, bool | list | dict | float) or (isinstance(v, str) and not v.strip())
            if bad and not (isinstance(v, float) and v.is_integer()):
                raise DistillError(f"Row {i + 1} of the {split} rows of {where} has the label {short(v)}: every row "
                                   "needs a label, a class index or a class name. Fill it in or drop the row.")


def _encode_labels(parts: dict[str, list], where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Labels of every split as ints: whole numbers as they are, otherwise strings as classes in
    sorted order (the same classes across splits)."""
    _check_label_values(parts, where)
    parts = {s: [int(v) if isinstance(v, float) else v for v in labels] for s, labels in parts.items()}
    values = [v for labels in parts.values() for v in labels]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) or all(
            isinstance(v, str) and v.strip().lstrip("-").isdigit() for v in values):
        out = {s: np.array([int(v) for v in labels], dtype=np.int64) for s, labels in parts.items()}
        bad = [int(v) for a in out.values() for v in a if v < 0]
        if bad:
            raise DistillError(f"The labels in {where} must be class indices >= 0; found {bad[0]}.")
        check_used_classes(list(out.values()), where)  # before 0..max is spelled out
        names = [str(i) for i in range(int(max(a.max() for a in out.values())) + 1)]
    else:
        names = sorted({str(v) for v in values})
        out = {s: np.searchsorted(names, np.array([str(v) for v in labels])).astype(np.int64)
               for s, labels in parts.items()}
    check_used_classes(list(out.values()), where)
    return out, names


def _check_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise DistillError(f"{where} is {short(text)}, not text. Every row needs a text value.")
    return text


def _rows_csv(path: Path, text_col: str, label_col: str) -> tuple[list[str], list]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (text_col, label_col) if c not in columns]
        if missing:
            raise DistillError(f"'{path}' has no column {missing[0]!r}; its columns: {', '.join(columns) or 'none'}. "
                               "Set data.text_column and data.label_column.")
        rows = [(r[text_col], r[label_col]) for r in reader]  # a short row gives None: refused as a label
    return [_check_text(t, f"row {i + 2} of '{path}'") for i, (t, _) in enumerate(rows)], [y for _, y in rows]


def _rows_jsonl(path: Path, text_col: str, label_col: str) -> tuple[list[str], list]:
    texts, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DistillError(f"Line {n} of '{path}' is not JSON ({e.msg}). Write one object per line.") from None
        if not isinstance(row, dict) or text_col not in row or label_col not in row:
            raise DistillError(f"Line {n} of '{path}' needs the fields {text_col!r} and {label_col!r} "
                               "(data.text_column, data.label_column).")
        texts.append(_check_text(row[text_col], f"Line {n} of '{path}'"))
        labels.append(row[label_col])
    return texts, labels


def _read_hf(path: Path, text_col: str, label_col: str) -> tuple[dict[str, tuple[list[str], list]], list | None]:
    """Each split's (texts, labels), and the class names of a ClassLabel column (else None)."""
    from ..data.hf import load_local, named_splits

    parts = named_splits(load_local(path), path)
    out, names = {}, None
    for split, ds in parts.items():
        missing = [c for c in (text_col, label_col) if c not in ds.column_names]
        if missing:
            raise DistillError(f"The {split} split of '{path}' has no column {missing[0]!r}; its columns: "
                               f"{', '.join(ds.column_names)}. Set data.text_column / data.label_column.")
        names = getattr(ds.features[label_col], "names", None)  # a ClassLabel names its classes
        out[split] = ([_check_text(t, f"a row of the {split} split of '{path}'") for t in ds[text_col]],
                      ds[label_col])
    return out, names


def _known_labels(parts: dict[str, list], classes: list[str], where: str) -> dict[str, np.ndarray]:
    """Labels looked up in a run's class names (a label may also be a class index)."""
    _check_label_values(parts, where)
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for split, labels in parts.items():
        ids = [index.get(v if isinstance(v, str) else str(int(v))) for v in labels]
        unknown = sorted({str(v) for v, i in zip(labels, ids, strict=True) if i is None})
        if unknown:
            raise DistillError(f"{where} has labels the run has no class for: {', '.join(unknown[:5])}. The run's "
                               f"classes: {', '.join(classes[:20])}.")
        out[split] = np.array(ids, dtype=np.int64)
    return out


def read_corpus(cfg, classes: list[str] | None = None) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str]]:
    """The labelled texts of data.name (the module docstring) and the class names; with
    `classes` (a run's), the labels are those classes' indices."""
    if cfg.name == "pydoc":
        texts, labels, names = pydoc_corpus()
        return {"train": (texts, labels)}, names
    if cfg.name not in TEXT_SOURCES:
        raise DistillError(f"data.name for a text_classification run must be one of {', '.join(TEXT_SOURCES)}; "
                           f"got {short(cfg.name)}.")
    if not cfg.path:
        raise DistillError(f"data.name={cfg.name} reads a file: set data.path.")
    path = Path(cfg.path).expanduser()
    if not path.exists() or (cfg.name != "hf" and not path.is_file()):
        raise DistillError(f"data.path '{path}' is not a {'file or folder' if cfg.name == 'hf' else 'file'}.")
    names = None
    if cfg.name == "hf":
        raw, names = _read_hf(path, cfg.text_column, cfg.label_column)
    else:
        read = _rows_csv if cfg.name == "csv" else _rows_jsonl
        try:
            raw = {"train": read(path, cfg.text_column, cfg.label_column)}
        except UnicodeDecodeError as e:
            raise DistillError(f"'{path}' is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if not raw["train"][0]:
        raise DistillError(f"'{path}' holds no rows.")
    where = f"'{path}' (data.label_column={cfg.label_column})"
    if classes is not None:
        if names is not None:  # a ClassLabel column: its names, then the run's indices of them
            raw = {s: (texts, [names[i] if 0 <= i < len(names) else i for i in y]) for s, (texts, y) in raw.items()}
        labels = _known_labels({s: y for s, (_, y) in raw.items()}, classes, where)
        return {s: (texts, labels[s]) for s, (texts, _) in raw.items()}, list(classes)
    labels, found = _encode_labels({s: y for s, (_, y) in raw.items()}, where)
    if names is not None and len(names) < len(found):
        names = None  # not distill's to guess
    return {s: (texts, labels[s]) for s, (texts, _) in raw.items()}, names or found
