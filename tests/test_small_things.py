"""Small fixes (issue 13, item 13): the resumed progress bar, plain error text, 80-column
tables, byte sizes, file modes, --version, plural wording, a fast `distill models`, and
reference figures kept inside the repository."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import distill
import distill.engine
import distill.stages
from distill.cli import main
from distill.errors import DistillError, plain
from distill.io import atomic_write, write_text
from distill.losses import resolve_loss
from distill.models import (
    MODELS,
    count_flops,
    count_parameters,
    create_model,
    create_skeleton,
    default_shape,
)
from distill.naming import plural
from distill.progress import StageProgress
from distill.stores import format_bytes

ROOT = Path(__file__).resolve().parents[1]
# 10 steps per epoch (1,167 training digits, batch 128); with 2 epochs the teacher cache is
# worth building (hit rate 50%), so the run also logs its size.
TINY = ["train.epochs=2", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "data.batch_size=128",
        "train.threads=1"]


# ---------------------------------------------------------------- (a) resumed progress bar


def test_stage_progress_starts_at_the_completed_count():
    with StageProgress("scratch", epochs=2, steps_per_epoch=10, quiet=True, start=15) as bar:
        for _ in range(5):
            bar.step({"loss": torch.tensor(1.0)})
    assert bar.steps == bar.total == 20


def test_stage_progress_bar_shows_the_start():
    with StageProgress("scratch", epochs=2, steps_per_epoch=10, start=15) as bar:
        assert bar.bar.tasks[0].completed == 15
        for _ in range(5):
            bar.step({"loss": torch.tensor(1.0)})
        assert bar.bar.tasks[0].completed == bar.bar.tasks[0].total == 20


class _Recording(StageProgress):
    ends: dict = {}

    def __exit__(self, *exc):
        _Recording.ends[self.stage] = (self.steps, self.total)
        return super().__exit__(*exc)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A run stopped at scratch's epoch 2, step 5 (a checkpoint), then resumed to the end
    with COLUMNS=80; returns its folder, the bars' (steps, total) at exit and its stdout."""
    out = tmp_path_factory.mktemp("resume") / "run"
    calls = iter(range(10**6))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "80")
        # the teacher's 20 steps (19 stop checks: none after a fit's last step), then 15 of
        # scratch's: stop after epoch 2 (index 1), step 5
        mp.setattr(distill.engine, "stop_requested", lambda: next(calls) == 33)
        with contextlib.redirect_stderr(io.StringIO()):
            assert main(["run", "--out", str(out), "--quiet", "--no-report", *TINY]) == 130
        mp.setattr(distill.engine, "stop_requested", lambda: False)
        mp.setattr(distill.stages, "StageProgress", _Recording)
        _Recording.ends = {}
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
            assert main(["run", "--resume", str(out), "--no-report"]) == 0
    return out, dict(_Recording.ends), stdout.getvalue()


def test_resumed_stage_bar_ends_full(resumed_run):
    _, ends, stdout = resumed_run
    assert "Resuming scratch after epoch 1, step 5." in stdout
    assert ends["scratch"] == (20, 20) and ends["distill"] == (20, 20)


# ---------------------------------------------------------------- (b) no escape codes in errors


def test_plain_strips_escape_codes():
    assert plain("a \x1b[1mbold\x1b[0m b \x1b[38;5;12mc\x1b[m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "a bold b c link"


def test_error_with_escape_codes_prints_plain(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise DistillError("Checkpoint needs code (\x1b[1mdo this only if you trust it\x1b[0m).")

    monkeypatch.setattr(distill.cli, "load_config", refuse)
    assert main(["run", "--out", str(tmp_path / "run"), "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "\x1b[" not in err and "do this only if you trust it" in err


def test_refused_teacher_checkpoint_error_has_no_escape_codes(tmp_path, capsys):
    """torch's weights_only refusal is bold on its own (ANSI codes); the error stays plain."""
    path = tmp_path / "teacher.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "accuracy": np.float64(72.5)}, path)
    rc = main(["run", "--out", str(tmp_path / "run"), "--quiet", f"teacher.checkpoint={path}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--trust-checkpoint" in err and "\x1b[" not in err


# ---------------------------------------------------------------- (c) tables fit in 80 columns


def _header_line(text: str, headers: list[str]) -> str:
    lines = [line for line in text.splitlines() if line.lstrip().startswith(headers[0] + " ")]
    assert lines, text
    return lines[0]


def test_summary_table_fits_80_columns(resumed_run):
    _, _, stdout = resumed_run
    assert max(len(line) for line in stdout.splitlines()) <= 80, stdout
    line = _header_line(stdout, ["stage"])
    for header in ("stage", "params", "best epoch", "val acc %", "test acc %", "last-epoch test acc %"):
        assert header in line, line


def test_eval_table_fits_80_columns(resumed_run, monkeypatch, capsys):
    out, _, _ = resumed_run
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80, text
    line = _header_line(text, ["model"])
    for header in ("model", "weights", "acc", "top-5", "NLL", "ECE", "agree", "KL(t‖s)"):
        assert header in line, line
    assert "student (distilled)" in text and "val-selected" in text


def test_lm_summary_headers_fit_80_columns():
    from rich.console import Console

    from distill.tables import summary_table

    row = {"params": 124_439_808, "best_epoch": 3, "val_ppl": 12.34, "test_ppl": 12.56, "last_test_ppl": 12.9}
    summary = {"name": "lm", "seed": 0, "primary": {"metric": "ppl", "lower_is_better": True},
               "stages": {s: row for s in ("teacher", "scratch", "distill")},
               "gain": {"test_ppl": -0.5, "last_test_ppl": -0.4}}
    console = Console(width=80, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "last-epoch test ppl" in _header_line(text, ["stage"])


# ---------------------------------------------------------------- (d) byte sizes


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
    (46_680, "45.59 KiB"), (3 * 2**20, "3.00 MiB"), (2**20 - 1, "1.00 MiB"), (5 * 2**30 + 2**29, "5.50 GiB"),
    (3 * 2**40, "3.00 TiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_small_cache_is_not_zero_gib(resumed_run):
    _, _, stdout = resumed_run
    logged = [line for line in stdout.splitlines() if line.startswith("Teacher cache:")]
    assert logged and "0.00 GiB" not in logged[0] and re.search(r"up to \d+\.\d\d KiB", logged[0]), logged


# ---------------------------------------------------------------- (e) file modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"y"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode


def test_atomic_write_keeps_an_existing_files_mode(tmp_path):
    path = tmp_path / "summary.json"
    write_text(path, "1")
    path.chmod(0o640)
    write_text(path, "2")
    assert path.read_text() == "2" and path.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- (f) --version


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"distill {distill.__version__}\n"


# ---------------------------------------------------------------- (g) plural wording


def test_unknown_names_list_known_ones_in_plural():
    assert [plural(k) for k in ("model", "loss", "token loss")] == ["models", "losses", "token losses"]
    with pytest.raises(DistillError, match="Known losses: ") as info:
        resolve_loss("kdd")
    assert "losss" not in str(info.value)
    with pytest.raises(DistillError, match="Known models: "):
        create_model("resnet9", 10, (3, 32, 32))


# ---------------------------------------------------------------- (h) distill models


def test_models_lists_every_model_with_real_parameter_counts(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in MODELS}
    assert set(rows) == set(MODELS)
    for name in ("mlp", "resnet8", "wrn_16_2"):
        shape, classes = default_shape(name)
        assert f" {count_parameters(create_model(name, classes, shape)):,} " in rows[name], rows[name]
    assert "conv1" in rows["resnet8"] and "MFLOPs" not in text


def test_skeleton_matches_a_real_build_and_leaves_init_alone():
    normal = torch.nn.init.normal_
    shape, classes = default_shape("resnet8")
    skeleton = create_skeleton("resnet8", classes, shape)
    assert torch.nn.init.normal_ is normal
    assert all(p.is_meta for p in skeleton.parameters())
    real = create_model("resnet8", classes, shape)
    assert real.conv1.weight.std() > 0  # still initialised after a skeleton build
    assert count_parameters(skeleton) == count_parameters(real)
    assert count_flops(skeleton, shape) == count_flops(real, shape)


# ---------------------------------------------------------------- (i) reference figures in the repo


def test_readme_and_configs_cite_files_inside_the_repo():
    texts = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml"))]}
    for path, text in texts.items():
        assert "shared/" not in text and "REFERENCE_RESULTS" not in text, path
    cited = set(re.findall(r"\(((?:docs|configs|benchmarks)/[\w./-]+)\)", texts[ROOT / "README.md"]))
    cited |= {m for text in texts.values() for m in re.findall(r"docs/[\w.-]+\.md", text)}
    assert "docs/reference_results.md" in cited
    for rel in cited:
        assert (ROOT / rel).exists(), rel
    reference = (ROOT / "docs" / "reference_results.md").read_text()
    for figure in ("79.42", "73.33", "76.32", "74.64", "1,186,986", "267,738", "146", "74"):
        assert figure in reference, figure
