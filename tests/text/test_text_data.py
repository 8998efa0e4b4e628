"""task: text_classification data: the hashed-word tokenizer, the corpus readers, the splits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from distill.config import load_config
from distill.errors import DistillError
from distill.text.corpus import pydoc_corpus, read_corpus
from distill.text.data import build_text_data
from distill.text.tokenizer import WordTokenizer


def _bucket(word: str, vocab: int) -> int:
    return 4 + int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % (vocab - 4)


def test_word_ids_are_the_documented_hash():
    tok = WordTokenizer(100)
    ids = tok.encode(["Hello, World hello"], max_length=8)[0]
    # [CLS] hello , world hello [SEP] [PAD] [PAD]: lower-cased, punctuation its own token
    assert ids.tolist() == [1, _bucket("hello", 100), _bucket(",", 100), _bucket("world", 100),
                            _bucket("hello", 100), 2, 0, 0]


def test_truncation_keeps_cls_and_sep():
    ids = WordTokenizer().encode(["a b c d e f"], max_length=4)[0]
    assert ids[0] == 1 and ids[-1] == 2 and (ids != 0).all()


def test_pydoc_corpus_has_six_groups_and_no_shared_paragraph():
    texts, labels, names = pydoc_corpus()
    assert len(names) == 6 and set(labels.tolist()) == set(range(6))
    assert len(texts) == len(set(texts)) > 1000
    assert min(len(t.split()) for t in texts) >= 8


def _cfg(tmp_path, name, path, **extra):
    over = [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, ["task=text_classification", f"data.name={name}", f"data.path={path}",
                              "data.label_fraction=1.0", *over]).data


def _rows(n=40):
    words = {"pos": "good great fine", "neg": "bad awful poor"}
    return [(f"it was {words[c].split()[i % 3]} indeed number {i}", c) for i in range(n) for c in ("pos", "neg")]


def test_csv_and_jsonl_read_the_same_texts_with_string_labels(tmp_path):
    rows = _rows()
    (tmp_path / "d.csv").write_text("label,text\n" + "".join(f'{c},"{t}"\n' for t, c in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": c}) + "\n" for t, c in rows))
    a, names_a = read_corpus(_cfg(tmp_path, "csv", tmp_path / "d.csv"))
    b, names_b = read_corpus(_cfg(tmp_path, "jsonl", tmp_path / "d.jsonl"))
    assert names_a == names_b == ["neg", "pos"]  # sorted string classes
    assert a["train"][0] == b["train"][0] == [t for t, _ in rows]
    assert a["train"][1].tolist() == [1 if c == "pos" else 0 for _, c in rows]


def test_hf_dataset_with_a_class_label_names_its_classes(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows()
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["zero-neg", "one-pos"])})
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [int(c == "pos") for _, c in rows]},
                                    features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(10))}).save_to_disk(str(tmp_path / "hf"))
    parts, names = read_corpus(_cfg(tmp_path, "hf", tmp_path / "hf"))
    assert names == ["zero-neg", "one-pos"] and set(parts) == {"train", "test"}
    assert len(parts["test"][0]) == 10


@pytest.mark.parametrize("content, message", [
    ("text\nhello\n", "no column 'label'"),
    ("label,text\n-1,x\n0,y\n", ">= 0"),
    ("label,text\na,x\na,y\n", "at least two"),
])
def test_bad_csv_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DistillError, match=message):
        read_corpus(_cfg(tmp_path, "csv", tmp_path / "d.csv"))


def test_bad_jsonl_line_names_the_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\nnot json\n')
    with pytest.raises(DistillError, match="Line 2"):
        read_corpus(_cfg(tmp_path, "jsonl", tmp_path / "d.jsonl"))


def test_build_text_data_splits_masks_and_transfer_set():
    cfg = load_config(None, ["task=text_classification", "data.max_length=32"]).data
    data = build_text_data(cfg, seed=0)
    c = data.counts
    assert c["train"] + c["val"] + c["test"] == len(pydoc_corpus()[0])
    assert c["labelled"] == pytest.approx(0.25 * c["train"], abs=6)  # the students' label_fraction
    batch = next(iter(data.train))
    assert batch.inputs.shape[1] == 32 and batch.inputs.dtype.is_floating_point is False
    assert (batch.mask == (batch.inputs != 0)).all() and (batch.inputs[:, 0] == 1).all()
    again = build_text_data(cfg, seed=0)
    assert np.array_equal(again.test.x.numpy(), data.test.x.numpy())  # deterministic


def test_the_example_config_is_the_tasks_defaults():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "configs" / "text" / "pydoc.yaml"
    assert load_config(example).model_dump() == load_config(None, ["task=text_classification"]).model_dump()
