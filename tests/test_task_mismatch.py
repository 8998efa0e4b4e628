"""Commands meant for one kind of run, given another, name the real mismatch."""

from __future__ import annotations

from distill.cli import main

LM_TINY = [
    "task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
    "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
    "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
    "train.epochs=1", "teacher.train.epochs=1", "stages=[teacher,scratch]",
]


def test_report_and_onnx_on_a_language_model_run(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(60)))
    out = tmp_path / "lm"
    assert main(["run", *LM_TINY, f"data.path={corpus}", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # every task writes a report (issue 15): the LM's own
    assert "perplexity" in (out / "report.md").read_text().lower()
    assert main(["export", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "is a task=language_model run" in err and "--format hf" in err
    assert "Unknown dataset" not in err


def test_hf_export_of_a_classifier_run(tmp_path, capsys):
    out = tmp_path / "cls"
    args = ["run", "--out", str(out), "--quiet", "--no-report", "train.epochs=1",
            "teacher.model=mlp", "teacher.kwargs.hidden=[16]", "stages=[teacher]"]
    assert main(args) == 0
    assert main(["export", str(out), "--format", "hf", "--stage", "teacher"]) == 2
    err = capsys.readouterr().err
    assert "is a classification run" in err and "--format onnx, torchscript or safetensors" in err
    assert "data.name for a language_model run" not in err
