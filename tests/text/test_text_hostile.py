"""Hostile inputs to the text task, its export and predict: each a clear error, nothing lost."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from test_text_runs import RUN, _hf_tokenizer  # the same tiny BERT run and HF tokenizer

from distill.cli import main
from distill.config import load_config
from distill.errors import DistillError
from distill.text.corpus import read_corpus
from distill.text.export import tokenize
from distill.text.tokenizer import HFTextTokenizer

pytest.importorskip("transformers")


def _read(tmp_path, name, content, **keys):
    path = tmp_path / f"d.{name}"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    over = [f"data.{k}={v}" for k, v in keys.items()]
    return read_corpus(load_config(None, ["task=text_classification", f"data.name={name}", f"data.path={path}", *over]).data)


def test_huge_integer_labels_are_refused_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DistillError, match="never occur"):
        _read(tmp_path, "csv", "text,label\na,0\nb,1000000000\nc,2000000000\n")
    assert time.perf_counter() - start < 5  # not 0..2e9 spelled out (that took 23 GB)


@pytest.mark.parametrize("name, content, where", [
    ("csv", "text,label\na,0\nb,\nc,1\n", "Row 2"),
    ("csv", "text,label\na,0\nb\nc,1\n", "Row 2"),
    ("jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": [1]}\n', "Row 2"),
    ("jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": null}\n', "Row 2"),
])
def test_a_missing_or_non_scalar_label_names_its_row(tmp_path, name, content, where):
    with pytest.raises(DistillError, match=where):
        _read(tmp_path, name, content)


def test_a_csv_with_a_byte_order_mark_reads(tmp_path):
    parts, names = _read(tmp_path, "csv", "\ufefftext,label\nx,a\ny,b\n")
    assert parts["train"][0] == ["x", "y"] and names == ["a", "b"]


@pytest.mark.parametrize("side", ["padding_side", "truncation_side"])
def test_the_export_tokenizes_as_training_did_whatever_the_tokenizer_sides(tmp_path, side):
    _hf_tokenizer(tmp_path / "tok")
    config = tmp_path / "tok" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), side: "left"}))
    tok = HFTextTokenizer(str(tmp_path / "tok"))
    texts = ["the film was good", "the film was really quite bad and then it ended"]
    record = {"max_length": 6, "pad_id": tok.pad_id, "vocab_size": tok.vocab_size,
              "tokenizer": {"kind": "hf", "file": "tokenizer.json", "padding_side": tok.tok.padding_side,
                            "truncation_side": tok.tok.truncation_side}}
    (tmp_path / "tokenizer.json").write_text(tok.tok.backend_tokenizer.to_str())
    assert tokenize(texts, record, tmp_path)["input_ids"].tolist() == tok.encode(texts, 6).tolist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data = root / "d.csv"
    data.write_text("text,label\n" + "".join(f"word{i % 3} filler text {i},c{i % 3}\n" for i in range(60)))
    run = root / "run"
    assert main(["run", "--out", str(run), f"data.path={data}", *RUN, "train.epochs=1", "teacher.train.epochs=1",
                 "stages=[teacher,distill]"]) == 0
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    return run, run / "export"


def test_safetensors_out_never_overwrites_a_file(exported, tmp_path, capsys):
    run, _ = exported
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert main(["export", str(run), "--format", "safetensors", "--out", str(mine)]) == 2
    assert mine.read_text() == "mine" and "exists" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"max_length": "x"}, "max_length"),
    ({"tokenizer": None}, "tokenizer"),
    ({"pad_id": None}, "pad_id"),
    ({"max_length": 100000}, "input length"),
    ({"model": "../../model.torchscript.pt"}, "names the model"),
])
def test_a_tampered_text_record_is_a_clear_error(exported, tmp_path, capsys, change, message):
    _, folder = exported
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    record = json.loads((copy / "preprocess.json").read_text())
    (copy / "preprocess.json").write_text(json.dumps({**record, **change}))
    assert main(["predict", str(copy), "--text", "word1 filler"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_labels_that_are_not_names_are_refused(exported, tmp_path, capsys):
    _, folder = exported
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    (copy / "labels.json").write_text(json.dumps([None, 5, {"x": 1}]))
    assert main(["predict", str(copy), "--text", "word1"]) == 2
    assert "class names" in capsys.readouterr().err


def test_an_export_in_progress_holds_the_folder(exported, capsys):
    from distill.export import hold

    run, folder = exported
    fd = hold(folder)  # as a second `distill export` running into the same folder
    try:
        assert main(["export", str(run), "--format", "torchscript"]) == 2
        assert "in use by another distill process" in capsys.readouterr().err
    finally:
        import os

        os.close(fd)
    assert main(["export", str(run), "--format", "torchscript"]) == 0


def test_model_mistakes_are_config_errors(tmp_path, capsys):
    base = ["run", "--out", str(tmp_path / "r"), "--quiet", "task=text_classification", "data.max_length=16"]
    for override, message in (("student.kwargs.num_hidden_layers=0", "at least 1"),
                              ("student.kwargs.num_attention_heads=0", "modulo by zero")):
        assert main([*base, override]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_stage_on_an_export_folder_is_not_ignored(exported, capsys):
    _, folder = exported
    assert main(["predict", str(folder), "--text", "word1", "--stage", "teacher"]) == 2
    assert "holds one model" in capsys.readouterr().err


def test_a_label_column_of_unique_values_says_so_briefly(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(300)))
    rc = main(["run", "--out", str(tmp_path / "r"), "--quiet", "task=text_classification", "data.name=csv",
               f"data.path={data}", "data.label_column=text", "data.text_column=label"])
    err = capsys.readouterr().err
    assert rc == 2 and "300 class(es) have a single sample" in err and len(err) < 400


def test_eval_on_other_data_uses_the_runs_classes(exported, tmp_path, capsys):
    run, _ = exported
    other = tmp_path / "other.csv"  # two of the run's three classes, in another order
    other.write_text("text,label\n" + "".join(f"word{i % 3} filler text {i},c{i % 3}\n" for i in range(60) if i % 3))
    assert main(["eval", str(run), "--data", str(other)]) == 0
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(other.read_text().replace(",c2", ",C2"))
    assert main(["eval", str(run), "--data", str(renamed)]) == 2
    err = capsys.readouterr().err
    assert "no class for: C2" in err and "c0, c1, c2" in err


def test_api_mistakes_are_clear_errors(tmp_path):
    import distill

    with pytest.raises(DistillError, match="list of key=value"):
        load_config(overrides="task=text_classification")
    with pytest.raises(DistillError, match="validated config"):
        distill.run({"task": "text_classification"}, tmp_path / "r")


def test_a_model_folder_with_its_own_tokenizer_needs_it(tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    vocab = _hf_tokenizer(tmp_path / "bert")
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"the film was good {i},c{i % 3}\n" for i in range(60)))
    base = ["run", "--out", str(tmp_path / "r"), "--quiet", "task=text_classification", "data.name=csv",
            f"data.path={data}", "data.max_length=16", f"teacher.model={tmp_path / 'bert'}", "teacher.kwargs={}",
            "teacher.train={}", "stages=[teacher]", "train.epochs=1", "loss.hid=null", "loss.att=null"]
    assert main(base) == 2
    assert "comes with its own tokenizer" in capsys.readouterr().err
    assert main([*base, f"data.tokenizer={tmp_path / 'bert'}"]) == 0
