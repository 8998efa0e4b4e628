"""A config is data: printing it imports nothing, and a command that reads someone else's run
folder (eval, report, export, run --resume) imports the code its config.yaml names only with
--trust-code. A run name cannot place the run folder outside runs/. Reports of a run whose
teacher checkpoint needed --trust-checkpoint load it with the same consent.

The user package here writes a marker file when it is imported: no marker, no code ran.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from distill.cli import main
from distill.config import load_config, to_yaml
from distill.errors import ConfigError
from distill.models import create_model
from distill.seeds import write_record

TINY = ["train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]", "student.model=mlp",
        "student.kwargs.hidden=[16]", "--quiet", "--no-report"]
NETS = "evilpkg.nets:build"
LOSS = "evilpkg.losses:Zero"


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A user package whose modules write MARK when imported; returns MARK's path."""
    mark = tmp_path / "MARK"
    pkg = tmp_path / "pkg" / "evilpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    touch = f"open({str(mark)!r}, 'a').write(__name__ + '\\n')\n"
    (pkg / "nets.py").write_text(touch + (
        "from distill.models.mlp import MLP\n\n"
        "def build(**kwargs):\n    return MLP(**kwargs)\n"))
    (pkg / "losses.py").write_text(touch + (
        "from torch import nn\n\n"
        "class Zero(nn.Module):\n    def forward(self, student, teacher, batch):\n"
        "        return student.logits.sum() * 0\n"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    for name in ("evilpkg", "evilpkg.nets", "evilpkg.losses"):  # imported afresh in every test
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield mark
    for name in ("evilpkg", "evilpkg.nets", "evilpkg.losses"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of built-in models (teacher, scratch, distill), shared by the tests."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def hostile(finished, tmp_path, edits: dict) -> str:
    """A copy of the finished run whose config.yaml someone edited to name code."""
    run = tmp_path / "theirs"
    shutil.copytree(finished, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in edits.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(run)


# ---------------------------------------------------------------- printing a config


def test_print_config_runs_no_loss_code(tmp_path, evil, capsys):
    popen_mark = tmp_path / "POPEN"
    config = tmp_path / "evil.yaml"
    config.write_text(yaml.safe_dump({"loss": {
        "ce": {"weight": 1.0},
        "x": {"type": "subprocess:Popen", "weight": 0, "args": ["touch", str(popen_mark)]},
        "mine": {"type": LOSS, "weight": 0.5}}}))
    assert main(["run", str(config), "--print-config"]) == 0
    assert "subprocess:Popen" in capsys.readouterr().out
    assert not popen_mark.exists() and not evil.exists()


def test_print_config_imports_no_model(evil, capsys):
    assert main(["run", "--print-config", f"student.model={NETS}", f"teacher.model={NETS}"]) == 0
    assert NETS in capsys.readouterr().out and not evil.exists()


# ---------------------------------------------------------------- reading someone's run folder


def test_code_paths_lists_every_code_value():
    from distill.trust import code_paths

    cfg = load_config(overrides=[f"teacher.model={NETS}", f"loss.mine.type={LOSS}", "loss.mine.weight=1"])
    assert code_paths(cfg) == [f"teacher.model={NETS}", f"loss.mine.type={LOSS}"]
    assert code_paths(load_config()) == []


COMMANDS = {
    "eval": lambda run: ["eval", run],
    "report": lambda run: ["report", run],
    "export": lambda run: ["export", run, "--format", "safetensors"],
    "resume": lambda run: ["run", "--resume", run, "--quiet", "--no-report"],
}
EDITS = {
    "student model": ({"student.model": NETS}, [f"student.model={NETS}"]),
    "loss type": ({"loss.mine": {"type": LOSS, "weight": 0.5}}, [f"loss.mine.type={LOSS}"]),
    "both models and a loss": ({"teacher.model": NETS, "student.model": NETS, "loss.mine": {"type": LOSS, "weight": 0.5}},
                               [f"teacher.model={NETS}", f"student.model={NETS}", f"loss.mine.type={LOSS}"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("edit", EDITS)
def test_a_folder_naming_code_is_refused_without_trust(command, edit, finished, tmp_path, evil, capsys):
    edits, listed = EDITS[edit]
    run = hostile(finished, tmp_path, edits)
    before = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert main(COMMANDS[command](run)) == 2
    err = capsys.readouterr().err
    assert not evil.exists(), "the folder's code was imported"
    assert f"config.yaml of {run} names code that would be imported" in err
    assert ", ".join(listed) + "." in err and "--trust-code" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == before  # nothing written


@pytest.mark.parametrize("command", ["eval", "report", "export"])
def test_trust_code_runs_the_folders_code(command, finished, tmp_path, evil, capsys):
    run = hostile(finished, tmp_path, {"student.model": NETS})  # the same MLP, built by user code
    assert main([*COMMANDS[command](run), "--trust-code"]) == 0, capsys.readouterr().err
    assert evil.read_text() == "evilpkg.nets\n"


def test_eval_of_a_weights_file_is_refused_too(finished, tmp_path, evil, capsys):
    run = hostile(finished, tmp_path, {"student.model": NETS})
    assert main(["eval", f"{run}/distill.safetensors"]) == 2
    assert f"student.model={NETS}" in capsys.readouterr().err and not evil.exists()


def test_resume_print_config_needs_no_trust(finished, tmp_path, evil, capsys):
    run = hostile(finished, tmp_path, {"student.model": NETS})
    assert main(["run", "--resume", run, "--print-config"]) == 0
    assert NETS in capsys.readouterr().out and not evil.exists()


def test_resume_of_a_seeds_folder_checks_its_record(tmp_path, evil, capsys):
    cfg = load_config(overrides=[f"student.model={NETS}"])
    write_record(tmp_path / "seeds", cfg, 2)
    assert main(["run", "--resume", str(tmp_path / "seeds"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"student.model={NETS}" in err and "--trust-code" in err and not evil.exists()


def test_report_of_a_seeds_folder_checks_every_seed_first(finished, tmp_path, evil, capsys):
    folder = tmp_path / "seeds"
    shutil.copytree(finished, folder / "seed-0")
    (folder / "seed-1").mkdir()
    shutil.copytree(hostile(finished, tmp_path, {"student.model": NETS}), folder / "seed-1", dirs_exist_ok=True)
    assert main(["report", str(folder)]) == 2
    assert f"student.model={NETS}" in capsys.readouterr().err and not evil.exists()
    assert not (folder / "seed-0" / "report.md").exists()  # refused before any report


def test_language_model_folder_is_refused_too(tmp_path, evil, capsys):
    run = tmp_path / "lm"
    run.mkdir()
    cfg = load_config(overrides=["task=language_model", f"student.model={NETS}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    for name in ("distill.safetensors", "metrics.jsonl", "stages.json"):  # what a run folder holds
        (run / name).write_text("")
    for args in (["eval", str(run)], ["export", str(run), "--format", "hf"]):
        assert main(args) == 2
        assert f"student.model={NETS}" in capsys.readouterr().err and not evil.exists()


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "a\\b", "a\x00b", "..", ".", "", ".hidden",
                                  "a b", "x" * 101, "../runs"])
def test_a_run_name_is_a_plain_folder_name(name, capsys):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"name={name}"])
    assert "plain folder name" in str(info.value) and "--out" in str(info.value)
    assert main(["run", "--print-config", f"name={name}"]) == 2
    assert "plain folder name" in capsys.readouterr().err


def test_ordinary_names_still_work():
    for name in ("digits-transfer", "lm-pydoc", "cifar100-wrn_40_2-wrn_16_2-kd", "v1.2"):
        assert load_config(overrides=[f"name={name}"]).name == name


# ---------------------------------------------------------------- --trust-checkpoint at report time


def test_a_teacher_checkpoint_needing_trust_is_reported_with_it(tmp_path, capsys):
    teacher = create_model("mlp", 10, (1, 8, 8), hidden=[16])
    ckpt = tmp_path / "teacher.pth"  # a numpy value in it: weights_only=True refuses the file
    torch.save({"model": teacher.state_dict(), "accuracy": np.float64(90.0)}, ckpt)
    out = tmp_path / "run"
    args = ["run", "--out", str(out), *[a for a in TINY if a != "--no-report"], f"teacher.checkpoint={ckpt}",
            "--trust-checkpoint"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main(["report", str(out), "--trust-checkpoint"]) == 0
    assert main(["eval", str(out), "--trust-checkpoint"]) == 0
