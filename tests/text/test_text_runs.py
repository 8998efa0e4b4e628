"""task: text_classification end to end through the CLI: a tiny BERT pair on a small CSV, the
export of (input_ids, attention_mask) graphs, and predict on raw text lines; a local Hugging
Face tokenizer built here, carried by the export as tokenizer.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.classifier_run import load_run, rebuild
from distill.cli import main
from distill.text.export import tokenize

pytest.importorskip("transformers")

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"],
         "mid": ["okay", "average", "plain", "so"]}
FILLER = ["the", "film", "was", "really", "quite", "and", "then", "it", "ended"]
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
RUN = ["--quiet", "--no-report", "task=text_classification", "data.name=csv", "data.max_length=16",
       "loss.hid=null", "loss.att=null",  # CE + KD; the transformer terms are tested one by one
       "data.label_fraction=1.0", "data.batch_size=16", "train.epochs=6", "train.lr=0.005", "train.warmup_epochs=0",
       *[f"{role}.kwargs.{k}={v}" for role in ("teacher", "student") for k, v in TINY.items()],
       "teacher.kwargs.num_hidden_layers=4", "teacher.train.epochs=6"]


def texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = list(rng.choice(FILLER, 5)) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in texts(240, 0)))
    return path


@pytest.fixture(scope="module")
def text_run(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["run", "--out", str(run), f"data.path={corpus}", *RUN]) == 0
    return run


def test_a_text_run_learns_and_records_its_classes(text_run):
    summary = json.loads((text_run / "summary.json").read_text())
    assert summary["data"]["class_names"] == ["mid", "neg", "pos"]
    assert summary["data"]["preprocess"]["kind"] == "text"
    assert summary["stages"]["teacher"]["test_acc"] > 60  # chance is 33%


def _torch_predictions(run, lines):
    cfg, data = rebuild(run)
    model, _ = load_run(run, "distill", data=data)
    record = json.loads((run / "summary.json").read_text())["data"]["preprocess"]
    feed = tokenize(lines, record)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(feed["input_ids"])), -1).numpy(), data


def test_export_and_predict_on_raw_text_match_the_student(text_run, tmp_path):
    assert main(["export", str(text_run), "--format", "onnx", "--quantize", "int8"]) == 0
    folder = text_run / "export"
    pre = json.loads((folder / "preprocess.json").read_text())
    assert [i["name"] for i in pre["inputs"]] == ["input_ids", "attention_mask"]
    assert json.loads((folder / "labels.json").read_text()) == ["mid", "neg", "pos"]
    lines = [t for t, _ in texts(12, seed=5)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    expected, data = _torch_predictions(text_run, lines)
    from distill.predict import predict

    got = predict(folder, [tmp_path / "in.txt"], top_k=3)
    assert len(got) == 12
    for row, probs in zip(got, expected, strict=True):
        assert row["top"][0]["index"] == int(probs.argmax())
        assert row["top"][0]["prob"] == pytest.approx(probs.max(), abs=1e-4)
    # the exported model scores the run's own test accuracy on the test texts
    q = json.loads((folder / "quantization.json").read_text())
    summary = json.loads((text_run / "summary.json").read_text())
    assert q["fp32"]["acc"] == pytest.approx(summary["stages"]["distill"]["test_acc"], abs=1e-6)
    assert q["method"] == "dynamic"


def test_predict_from_the_run_folder_prints_class_names(text_run, capsys):
    assert main(["predict", str(text_run), "--text", "the film was good and nice", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert any(name in out for name in ("pos", "neg", "mid")), out


def _hf_tokenizer(folder):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *FILLER,
                                          *[w for ws in WORDS.values() for w in ws]])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(str(folder))
    return vocab


def test_a_local_hf_tokenizer_trains_exports_and_tokenizes_the_same(corpus, tmp_path):
    vocab = _hf_tokenizer(tmp_path / "tok")
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), f"data.path={corpus}", f"data.tokenizer={tmp_path / 'tok'}",
                 *RUN, "train.epochs=1", "teacher.train.epochs=1", "stages=[teacher,distill]"]) == 0
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    folder = run / "export"
    assert (folder / "tokenizer.json").is_file()
    pre = json.loads((folder / "preprocess.json").read_text())
    line = "the film was good"
    feed = tokenize([line], pre, folder)
    ids = [vocab[w] for w in ["[CLS]", *line.split(), "[SEP]"]]
    assert feed["input_ids"][0].tolist() == ids + [0] * (16 - len(ids))
    assert feed["attention_mask"][0].tolist() == [1] * len(ids) + [0] * (16 - len(ids))
    _, data = rebuild(run)  # the run's own tokenization of its data agrees with the export's
    first = data.test.x[0]
    assert (first != 0).sum() >= 3


def test_text_keys_of_another_task_are_refused(capsys):
    assert main(["run", "--quiet", "task=text_classification", "data.augment=flip"]) == 2
    assert "data.augment" in capsys.readouterr().err


def test_the_report_times_token_ids_and_names_the_classes(text_run):
    from distill.report import write_report

    md = write_report(text_run, repeats=1).read_text()
    assert "| pos |" in md and "| mid |" in md  # per-class accuracy by class name
    assert "## Cost" in md


def test_tapped_attention_is_a_distribution_in_training_mode():
    """HF models return attention probabilities after dropout; while the tap is hooked the
    wrapper turns that dropout off (and back on after)."""
    from distill.config import ModelConfig
    from distill.hooks import FeatureCapture
    from distill.text.models import create_text_model

    spec = ModelConfig(model="bert", kwargs={**TINY, "attention_probs_dropout_prob": 0.5})
    torch.manual_seed(0)
    model = create_text_model(spec, 3, 50, 0, 8, "student").train()
    ids = torch.randint(4, 50, (4, 8))
    capture = FeatureCapture(model, ["attention.2"], "student")
    _, feats = capture.run(model, ids)
    assert torch.allclose(feats["attention.2"].sum(-1), torch.ones(4, TINY["num_attention_heads"], 8), atol=1e-5)
    rates = {m.p for n, m in model.named_modules() if n.endswith("attention.self.dropout")}
    assert rates == {0.5}  # restored


TERMS = ["loss.hid={type: tinybert_hidden, weight: 1.0}", "loss.emb={type: tinybert_embedding, weight: 1.0}",
         "loss.att={type: minilm_attention, weight: 1.0}", "loss.vr={type: minilm_value, weight: 1.0}",
         "loss.hid2={type: tinybert_hidden, weight: 0.5, layers: [[1, 2], [2, 4]]}"]


def test_every_transformer_term_distills_end_to_end(corpus, tmp_path):
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), f"data.path={corpus}", *RUN, "train.epochs=2", "teacher.train.epochs=2",
                 "teacher.kwargs.attention_probs_dropout_prob=0.1", "student.kwargs.attention_probs_dropout_prob=0.1",
                 *TERMS]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    distill_rows = [r for r in rows if r.get("stage") == "distill" and "train_att" in r]
    assert len(distill_rows) == 2
    for r in distill_rows:
        for name in ("hid", "emb", "att", "vr", "hid2", "kd"):
            assert np.isfinite(r[f"train_{name}"]) and r[f"train_{name}"] >= 0
    # attention is a distribution in training too: KL to the teacher is small, not log(1/(1-p))-sized
    assert distill_rows[-1]["train_att"] < 1.0


@pytest.mark.parametrize("term, message", [
    ("loss.h={type: tinybert_hidden, layers: uniform}", "multiple"),  # 3 teacher layers, 2 student
    ("loss.h={type: tinybert_hidden, layers: [[1, 9]]}", "out of range"),
    ("loss.h={type: minilm_attention, layers: nope}", "layers"),
])
def test_bad_layer_maps_are_config_errors(corpus, tmp_path, capsys, term, message):
    rc = main(["run", "--out", str(tmp_path / "r"), f"data.path={corpus}", *RUN, "teacher.kwargs.num_hidden_layers=3", term])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "teacher.safetensors").exists()  # refused before training
