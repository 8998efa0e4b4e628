"""train.parallel=fsdp (FSDP2 under torchrun, 2 gloo processes on the CPU) and
train.activation_checkpointing: the same gradients and students as one process, sharded
checkpoints that resume exactly, and the refusals. Tiny GPT-2s built here; nothing downloads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.config_schema import TrainConfig  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.sharding import check_even_shares, check_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "fsdp_grads.py"


def torchrun(*args: str) -> list[str]:
    with socket.socket() as sock:  # a free port: a fixed one collides with concurrent and back-to-back runs
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *args]


def _env() -> dict:
    src = str(HERE.parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _corpus(tmp_path: Path) -> Path:
    """40 paragraphs: 32 training rows of 32 tokens (4 batches of 8), 6 validation rows."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    return path


def _args(corpus: Path, *extra: str) -> list[str]:
    return ["run", "--quiet", "--no-report", "task=language_model", "data.name=text", f"data.path={corpus}",
            "data.max_length=32", "data.batch_size=8", "data.val_fraction=0.2",
            "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
            "student.kwargs={n_layer: 2, n_embd: 8, n_head: 2, n_positions: 32}",
            "train.lr=0.01", "train.threads=1", *extra]


@pytest.mark.parametrize("flags", [[], ["ac"], ["bf16"]], ids=["fp32", "activation_checkpointing", "bf16"])
def test_sharded_gradients_equal_one_process(tmp_path, flags):
    """One accumulated step (2 micro-batches per process) of a GPT-2 whose head is its input
    embedding: every gathered gradient equals the single-process gradient of the whole batch.
    The head's gradient (from the chunked loss, outside the model's forward) reaches the
    embedding's shard once: counted twice or not at all, wte's gradient would be off by its
    head part, which is most of it. The teacher is sharded too, and the caller's, freed while the
    copy trains, comes back bit for bit."""
    out = tmp_path / "grads.json"
    proc = subprocess.run(torchrun(str(WORKER), str(out), *flags), capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert "student.transformer.wte.weight" in got["diff"] and set(got["diff"]) == set(got["names"])
    assert got["teacher_sharded"] and got["teacher_restored"] == 0.0  # gathered back bit for bit
    # bf16 all-gathers the parameters in bf16 (8 bits of mantissa): ~0.4% of a gradient's norm
    rel = 1e-2 if "bf16" in flags else 1e-6
    for name, diff in got["diff"].items():
        assert diff <= rel * max(got["norm"][name], 1e-3), (name, diff, got["norm"][name])


def test_two_fsdp_processes_train_the_same_student_as_one(tmp_path):
    corpus = _corpus(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*_args(corpus, "stages=[teacher,distill]", "train.epochs=2", "teacher.train.epochs=1"),
                 "--out", str(one)]) == 0
    # the same teacher for both (teacher.checkpoint): the student's stage is what is compared
    args = _args(corpus, f"teacher.checkpoint={one / 'teacher.safetensors'}", "stages=[distill]",
                 "train.epochs=2", "train.parallel=fsdp", "train.accumulate=2")
    proc = subprocess.run(torchrun("-m", "distill", *args, "--out", str(two)), capture_output=True,
                          text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    for stem in ("distill", "distill-last"):
        a, b = load_file(str(one / f"{stem}.safetensors")), load_file(str(two / f"{stem}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:  # full tensors: the stage's weights file is consolidated
            assert a[key].shape == b[key].shape
            assert (a[key] - b[key]).abs().max().item() <= 1e-5, (stem, key)
    assert not list(two.glob("ckpt-*")), "the finished stage's sharded checkpoint is removed"
    assert main(["eval", str(two), "--split", "val"]) == 0  # what reads the weights works unchanged


def test_fsdp_trains_a_lora_student_with_hidden_terms_as_one_process(tmp_path):
    """LoRA adapters (a state dict of adapters alone), lm_hidden's projectors (sized at setup,
    before the sharded copy) and its hooks (which must fire in the copy) under FSDP."""
    pytest.importorskip("peft")
    corpus = _corpus(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*_args(corpus, "stages=[teacher]", "teacher.train.epochs=1"), "--out", str(one / "t")]) == 0
    args = _args(corpus, f"teacher.checkpoint={one / 't' / 'teacher.safetensors'}", "stages=[distill]",
                 "train.epochs=2", "student.lora={r: 4, alpha: 8, target_modules: all-linear}",
                 "loss.lm_hidden={type: lm_hidden, weight: 1.0, layers: last}")
    assert main([*args, "--out", str(one / "s")]) == 0
    proc = subprocess.run(torchrun("-m", "distill", *args, "train.parallel=fsdp", "--out", str(two)),
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(one / "s" / "distill.safetensors")), load_file(str(two / "distill.safetensors"))
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}
    assert max(diffs.values()) <= 1e-5, diffs
    assert main(["export", str(two), "--format", "hf"]) == 0  # the base came back whole: it merges


def test_sigterm_fsdp_run_resumes_exactly(tmp_path):
    """A distill stage: the student and the teacher are sharded again on resume."""
    corpus = _corpus(tmp_path)
    teacher = tmp_path / "teacher"
    assert main([*_args(corpus, "stages=[teacher]", "teacher.train.epochs=1"), "--out", str(teacher)]) == 0
    args = _args(corpus, f"teacher.checkpoint={teacher / 'teacher.safetensors'}", "stages=[distill]",
                 "train.epochs=12", "train.parallel=fsdp", "train.deterministic=true",
                 "train.checkpoint_every=2 steps")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert subprocess.run(torchrun("-m", "distill", *args, "--out", str(whole)), capture_output=True,
                          timeout=600, env=_env()).returncode == 0
    proc = subprocess.Popen(torchrun("-m", "distill", *args, "--out", str(stopped)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    pointer, deadline = stopped / "checkpoint.json", time.time() + 300
    while not (pointer.exists() and "distill" in pointer.read_text()):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it; both processes stop at one step
    proc.wait(timeout=300)
    assert not (stopped / "summary.json").exists()
    info = json.loads(pointer.read_text())
    assert info["format"] == "dcp" and (stopped / f"{info['stem']}.dcp" / ".metadata").is_file()
    # another process count is refused, naming the one to use
    alone = subprocess.run([sys.executable, "-m", "distill", "run", "--quiet", "--resume", str(stopped)],
                           capture_output=True, text=True, timeout=600, env=_env())
    assert alone.returncode != 0 and "resume it with the same number (now 1)" in alone.stderr
    # an override restarts the stage: rank 0 rewrites the folder, the other follows its answer
    restarted = tmp_path / "restarted"
    shutil.copytree(stopped, restarted)
    again = subprocess.run(torchrun("-m", "distill", "run", "--quiet", "--no-report", "--resume", str(restarted),
                                    "train.lr=0.02"), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0 and "Restarting distill" in again.stderr, again.stderr[-3000:]
    resume = subprocess.run(torchrun("-m", "distill", "run", "--quiet", "--no-report", "--resume",
                                     str(stopped)), capture_output=True, text=True, timeout=600, env=_env())
    assert resume.returncode == 0, resume.stderr[-3000:]
    for stem in ("distill", "distill-last"):
        a, b = load_file(str(whole / f"{stem}.safetensors")), load_file(str(stopped / f"{stem}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), stem
    assert not list(stopped.glob("ckpt-*"))


def test_one_process_fsdp_is_the_plain_run(tmp_path):
    """Without torchrun there is nothing to shard: parallel=fsdp trains exactly as ddp."""
    corpus = _corpus(tmp_path)
    base = _args(corpus, "stages=[scratch]", "train.epochs=1")
    assert main([*base, "--out", str(tmp_path / "ddp")]) == 0
    assert main([*base, "train.parallel=fsdp", "--out", str(tmp_path / "fsdp")]) == 0
    a, b = load_file(str(tmp_path / "ddp" / "scratch.safetensors")), load_file(str(tmp_path / "fsdp" / "scratch.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_trains_the_same_student(tmp_path):
    corpus = _corpus(tmp_path)
    base = _args(corpus, "stages=[teacher,distill]", "train.epochs=1", "teacher.train.epochs=1")
    assert main([*base, "--out", str(tmp_path / "off")]) == 0
    assert main([*base, "train.activation_checkpointing=true", "--out", str(tmp_path / "on")]) == 0
    for stem in ("teacher", "distill"):
        a, b = load_file(str(tmp_path / "off" / f"{stem}.safetensors")), load_file(str(tmp_path / "on" / f"{stem}.safetensors"))
        # the recomputed forward is the same ops on the same inputs: equal to rounding
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), stem
    assert main(["export", str(tmp_path / "on"), "--format", "hf"]) == 0
    saved = json.loads((tmp_path / "on" / "distill-hf" / "config.json").read_text())
    assert not saved.get("gradient_checkpointing")  # nothing of it stays on the exported student


@pytest.mark.parametrize("key", ["train.parallel=fsdp", "train.activation_checkpointing=true"])
def test_classifier_runs_refuse_the_lm_only_keys(key, capsys):
    assert main(["run", "--quiet", key, "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert key.split("=")[0] in err and "task=classification runs do not read it" in err


def test_uneven_shares_are_refused_before_training():
    counts = {"train": 32, "val": 6}
    check_even_shares(counts, batch_size=8, accumulate=2, world=2)  # 4 batches of 8, val 6: fine
    with pytest.raises(DistillError, match="last batch\\s+too has at least 2 rows"):
        check_even_shares({"train": 33, "val": 6}, batch_size=8, accumulate=1, world=2)  # a batch of 1
    with pytest.raises(DistillError, match="train.accumulate=8"):
        check_even_shares(counts, batch_size=8, accumulate=8, world=2)
    assert TrainConfig().parallel == "ddp" and not TrainConfig().activation_checkpointing


def test_fsdp_refuses_fp16():
    check_precision("bf16")
    with pytest.raises(DistillError, match="Set train.precision=bf16"):
        check_precision("fp16")


def test_only_distills_shard_files_are_deleted(tmp_path):
    from distill.checkpoint import Checkpointer

    ours = tmp_path / "ckpt-distill-0001-000004.dcp"
    ours.mkdir()
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp"):
        (ours / name).write_text("x")
    mixed = tmp_path / "ckpt-distill-0002-000000.dcp"  # a killed save's, with a user's file put in it
    mixed.mkdir()
    (mixed / ".metadata.tmp").write_text("x")
    (mixed / "notes.txt").write_text("mine")
    other = tmp_path / "ckpt-notes.dcp"  # not a name distill writes
    other.mkdir()
    (other / ".metadata").write_text("x")
    Checkpointer.clear(tmp_path)
    assert not ours.exists()
    assert (mixed / "notes.txt").read_text() == "mine" and not (mixed / ".metadata.tmp").exists()
    assert (other / ".metadata").exists()


def test_a_sharded_checkpoint_without_its_shards_names_the_fix(tmp_path):
    from distill.checkpoint import Checkpointer

    stem = "ckpt-distill-0001-000004"
    torch.save({}, tmp_path / f"{stem}.pt")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"stage": "distill", "stem": stem, "format": "dcp"}))
    with pytest.raises(DistillError, match=r"missing or incomplete.*Delete exactly"):
        Checkpointer(tmp_path, "distill").load()
