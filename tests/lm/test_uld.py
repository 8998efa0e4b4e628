"""Teacher and student with different tokenizers: the ULD term (Boizard et al. 2024) by hand,
the alignment of the two tokenizations, gradients, an end-to-end CLI run with the byte tokenizer
for the student and a local word-level tokenizer for the teacher that stops and resumes exactly,
and the refusals. Everything is built here: nothing is downloaded."""

from __future__ import annotations

import itertools
import json
import signal

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from distill import stages  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.contracts import Batch  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.lm.cross_tokenizer import CrossTokenizerTeacher, TeacherTokens, align  # noqa: E402
from distill.lm.distiller import lm_distiller  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.losses.lm import ULD, uld  # noqa: E402

VS, VT = 40, 23  # the student's and the teacher's vocabularies in the unit tests


def gpt(vocab, width=16, seed=0):
    torch.manual_seed(seed)
    kw = {"n_layer": 1, "n_embd": width, "n_head": 2, "n_positions": 32,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return create_lm("gpt2", kw, vocab)


def log(p):
    return torch.tensor(p, dtype=torch.float64).log()


# ---------------------------------------------------------------- the formula


def test_uld_by_hand_with_different_vocabulary_sizes():
    # sorted q = (.5, .3, .2), sorted p = (.6, .2, .1, .1): |.5-.6| + |.3-.2| + |.2-.1| + |0-.1|
    q, p = log([[0.2, 0.5, 0.3]]), log([[0.1, 0.6, 0.2, 0.1]])
    assert uld(q, p).item() == pytest.approx(0.4, abs=1e-12)
    assert uld(p, q).item() == pytest.approx(0.4, abs=1e-12)  # symmetric
    # the student's vocabulary the longer one: q uniform over 4, p = (.3, .7) padded with zeros
    q, p = log([[0.25] * 4]), log([[0.3, 0.7]])
    assert uld(q, p).item() == pytest.approx(0.45 + 0.05 + 0.25 + 0.25, abs=1e-12)
    # a permutation costs nothing: token identities do not enter
    assert uld(log([[0.1, 0.2, 0.7]]), log([[0.7, 0.1, 0.2]])).item() == pytest.approx(0, abs=1e-12)
    # disjoint one-hot-like extremes: bounded by 2
    assert uld(log([[1.0]]), log([[0.5, 0.5]])).item() == pytest.approx(1.0, abs=1e-12)


def test_uld_equals_the_zero_padded_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    q = F.log_softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    p = F.log_softmax(torch.randn(5, 11, generator=g, dtype=torch.float64), -1)
    qs = F.pad(q.exp().sort(-1, descending=True).values, (0, 4))
    ps = p.exp().sort(-1, descending=True).values
    torch.testing.assert_close(uld(q, p), (qs - ps).abs().sum(-1))
    assert ULD(T=2.0).T == 2.0 and torch.equal(ULD()(q, p), uld(q, p))


# ---------------------------------------------------------------- alignment


def test_align_pairs_the_ith_targets_and_truncates_to_the_shorter():
    student = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    teacher = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]])
    example, pos, valid = align(student, teacher)
    assert example.tolist() == [0, 0, 0, 1, 1]
    assert valid.tolist() == [True, True, False, True, True]  # example 0: 3 student, 2 teacher targets
    assert pos[valid].tolist() == [0, 2, 1, 2]  # 1st and 2nd teacher targets of each example


def _setup(rows=3, seed=0):
    """A student on one vocabulary, a teacher on another, and each example tokenized twice with
    different lengths and prompt masks, as the teacher's rows."""
    g = torch.Generator().manual_seed(seed)
    s_ids, t_ids = torch.randint(0, VS, (rows, 12), generator=g), torch.randint(0, VT, (rows, 10), generator=g)
    s_mask, t_mask = torch.zeros(rows, 12, dtype=torch.long), torch.zeros(rows, 10, dtype=torch.long)
    for r in range(rows):
        s_mask[r, 2:12 - 2 * (r % 3)] = 1  # student: 10, 8, 6 targets, repeated
        t_mask[r, 1:4 + 3 * (r % 3)] = 1  # teacher: 3, 6, 9 (more than the student's in row 2)
    student, teacher = gpt(VS, seed=seed), gpt(VT, width=24, seed=seed + 1)
    loader = TensorLoader(t_ids, t_mask, 2, y_is_mask=True)
    tokens = TeacherTokens(None, t_ids, t_mask, loader, loader)
    return student, teacher, tokens, Batch(s_ids, mask=s_mask, index=torch.arange(rows))


def _reference(student, teacher, tokens, b, T=1.0):
    """ULD by hand on full logits: example by example, the i-th targets paired, summed over the
    pairs, divided by the student's target tokens."""
    s_logits = student(b.inputs).logits.double()
    t_logits = teacher(tokens.train_x[b.index]).logits.double()
    total = 0.0
    for r in range(len(b)):
        s_pos = b.mask[r, 1:].nonzero().flatten()
        t_pos = tokens.train_m[b.index[r], 1:].nonzero().flatten()
        n = min(len(s_pos), len(t_pos))
        q = F.log_softmax(s_logits[r, s_pos[:n]] / T, -1)
        p = F.log_softmax(t_logits[r, t_pos[:n]] / T, -1)
        qs = q.exp().sort(-1, descending=True).values
        ps = F.pad(p.exp().sort(-1, descending=True).values, (0, VS - VT))  # the shorter, zero-padded
        total = total + (qs - ps).abs().sum()
    return total / b.mask[:, 1:].sum()


@pytest.mark.parametrize("chunk, T", [(None, 1.0), (1, 1.0), (5, 2.0)])
def test_uld_term_through_the_distiller_matches_a_hand_alignment(chunk, T):
    student, teacher, tokens, b = _setup()
    d = lm_distiller(teacher, student, {"uld": (ULD(T=T), 1.0)}, ce_weight=0.0, chunk=chunk,
                     source=lambda t: CrossTokenizerTeacher(t, tokens))
    out = d(b)
    ref = _reference(student, teacher, tokens, b, T)
    assert out.counted == b.mask[:, 1:].sum()
    assert out.terms["uld"].item() == pytest.approx(ref.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5)  # ce weight 0: the term alone


def test_rows_of_a_shuffled_batch_reach_the_teacher_by_index():
    student, teacher, tokens, b = _setup()
    d = lm_distiller(teacher, student, {"uld": (ULD(), 1.0)}, ce_weight=0.0,
                     source=lambda t: CrossTokenizerTeacher(t, tokens))
    order = torch.tensor([2, 0, 1])
    shuffled = Batch(b.inputs[order], mask=b.mask[order], index=order)
    ref = _reference(student, teacher, tokens, shuffled)
    assert d(shuffled).terms["uld"].item() == pytest.approx(ref.item(), abs=1e-5)


def test_gradient_reaches_the_student_only():
    student, teacher, tokens, b = _setup()
    d = lm_distiller(teacher, student, {"uld": (ULD(), 1.0)}, ce_weight=0.0,
                     source=lambda t: CrossTokenizerTeacher(t, tokens))
    d(b).loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # against autograd through the hand computation (sort's gradient included)
    student.zero_grad()
    _reference(student, teacher, tokens, b).backward()
    ref = student.transformer.wte.weight.grad.clone()
    student.zero_grad()
    d(b).loss.backward()
    torch.testing.assert_close(student.transformer.wte.weight.grad, ref.float(), atol=1e-6, rtol=1e-4)


def _train(accumulate):
    from distill.config import TrainConfig
    from distill.engine import fit

    student, teacher, tokens, b = _setup(rows=6)
    d = lm_distiller(teacher, student, {"uld": (ULD(), 1.0)}, ce_weight=0.5,
                     source=lambda t: CrossTokenizerTeacher(t, tokens))
    loader = TensorLoader(b.inputs, b.mask, 6, shuffle=False, y_is_mask=True)
    cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.5, schedule="constant",
                      accumulate=accumulate, checkpoint_every=0)
    fit(d, loader, loader, cfg, "cpu")
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def test_gradient_accumulation_does_not_change_the_update():
    """Micro-batches count different numbers of student targets (10, 8, 6, ...) and of aligned
    pairs; the term is a sum over pairs divided by the whole batch's student targets, so the
    update is the same whatever train.accumulate is (to float rounding)."""
    one, two, three = _train(1), _train(2), _train(3)
    assert torch.allclose(one, two, atol=1e-6) and torch.allclose(one, three, atol=1e-6)


# ---------------------------------------------------------------- end to end

WORDS = ["paragraph", "the", "cat", "sat", "on", "mat", ".", ":"] + [str(i) for i in range(40)]
TINY = [
    "task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
    "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
    "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",  # the folder's config
    "train.epochs=2", "train.lr=0.01", "stages=[scratch, distill]",
    "loss.ce.weight=0.5", "loss.forward_kl.weight=0", "loss.uld.weight=1.0",
]


def _word_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return len(vocab)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A text corpus and a teacher folder: a word-level tokenizer and a GPT-2 over its 51 tokens."""
    root = tmp_path_factory.mktemp("uld")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    folder = root / "teacher"
    n = _word_tokenizer(folder)
    torch.manual_seed(0)
    create_lm("gpt2", {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}, n).save_pretrained(str(folder))
    return {"text": text, "teacher": folder, "vocab": n,
            "args": [*TINY, f"data.path={text}", f"teacher.model={folder}", f"data.teacher_tokenizer={folder}"]}


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("uld-run") / "run"
    assert main(["run", *world["args"], "--out", str(out), "--quiet", "--no-report"]) == 0
    return out


def test_end_to_end_with_two_tokenizers(world, finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["data"]["teacher_tokenizer"] == str(world["teacher"])
    assert summary["data"]["vocab_size"] == 258 and summary["data"]["packing"] == 0  # unpacked
    teacher = summary["stages"]["teacher"]
    # the teacher's metrics are on its own rows: a perplexity over its 51 word tokens
    assert teacher["checkpoint"] == str(world["teacher"]) and 1 < teacher["val_ppl"] < 2 * world["vocab"]
    metrics = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    uld_values = [m["train_uld"] for m in metrics if m["stage"] == "distill"]
    assert len(uld_values) == 2 and all(0 < v < 2 for v in uld_values)
    assert summary["stages"]["distill"]["val_ppl"] < 258  # learned over a uniform byte guess
    # the term trained: the distilled student left its scratch twin (same init, order, schedule)
    a, b = (load_file(str(finished / f"{name}.safetensors")) for name in ("scratch-last", "distill-last"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_eval_and_export_of_the_students(finished, capsys):
    assert main(["eval", str(finished), "--split", "val"]) == 0
    shown = capsys.readouterr().out
    assert "distill-last" in shown and "teacher" not in shown  # the teacher was not trained here
    assert main(["export", str(finished), "--format", "hf"]) == 0


def test_teacher_from_a_checkpoint_trained_on_its_own_tokenizer(world, tmp_path):
    """The teacher stage on the teacher's tokenization is its own run (data.tokenizer = the
    teacher's); its weights then teach a byte-level student through teacher.checkpoint."""
    first = tmp_path / "teacher"
    own = [*TINY, f"data.path={world['text']}", f"data.tokenizer={world['teacher']}", "stages=[teacher]",
           "data.packing=false",  # the rows the teacher is given below: one example per row
           "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}", "teacher.train.epochs=1"]
    assert main(["run", *own, "--out", str(first), "--quiet", "--no-report"]) == 0
    out = tmp_path / "student"
    args = [*TINY, f"data.path={world['text']}", f"data.teacher_tokenizer={world['teacher']}",
            "teacher.model=gpt2", "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
            f"teacher.checkpoint={first}/teacher.safetensors"]
    assert main(["run", *args, "--out", str(out), "--quiet", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    trained = json.loads((first / "summary.json").read_text())["stages"]["teacher"]
    # evaluated on its own rows of the same validation split: the same perplexity as in its run
    assert summary["stages"]["teacher"]["val_ppl"] == pytest.approx(trained["val_ppl"], rel=1e-6)


def _ctrl_c_at(mp, stage: str, step: int) -> None:
    """A real SIGINT after training step `step` of `stage` (caught by distill's handler)."""
    real_fit = stages.fit

    def fit(distiller, loader, val, train, device, on_step, on_epoch, **kw):
        if kw["checkpointer"].stage == stage:
            steps = itertools.count(1)

            def stop(info):
                on_step(info)
                if next(steps) == step:
                    signal.raise_signal(signal.SIGINT)

            return real_fit(distiller, loader, val, train, device, stop, on_epoch, **kw)
        return real_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw)

    mp.setattr(stages, "fit", fit)


def test_stop_mid_distill_then_resume_equals_uninterrupted(world, finished, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _ctrl_c_at(mp, "distill", step=5)  # in the second of two epochs of 4 steps
        assert main(["run", *world["args"], "--out", str(out), "--quiet", "--no-report"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert not (out / "distill.safetensors").exists()
    assert main(["run", "--quiet", "--no-report", "--resume", str(out)]) == 0
    for name in ("distill", "distill-last"):
        a, b = (load_file(str(d / f"{name}.safetensors")) for d in (finished, out))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one(world, tmp_path, parallel):
    """torchrun with 2 gloo processes: each process's rows reach the teacher by their global
    index and the teacher's validation rows are sharded like the student's, so the run trains the
    same student and records the same teacher metrics as one process, with DDP or with the
    student and the teacher sharded (FSDP). SGD: Adam divides by sqrt(v), which turns float
    rounding of near-zero gradients into lr-sized differences."""
    import socket
    import subprocess
    import sys

    args = [*world["args"], "train.threads=1", "train.optimizer=sgd", "train.momentum=0", "train.lr=0.5",
            "--quiet", "--no-report"]
    one = tmp_path / "one"
    assert main(["run", *args, "--out", str(one)]) == 0

    with socket.socket() as sock:  # a free port: a fixed one collides with concurrent runs
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "distill", "run", *args, f"train.parallel={parallel}", "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_summary, two_summary = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert two_summary["processes"] == 2
    assert two_summary["stages"]["teacher"]["val_ppl"] == pytest.approx(
        one_summary["stages"]["teacher"]["val_ppl"], rel=1e-6)
    a, b = (load_file(str(d / "distill-last.safetensors")) for d in (one, two))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("overrides, message", [
    (["loss.forward_kl.weight=0.5"], "loss.forward_kl compares the two models' probabilities token id by token id"),
    (["stages=[teacher, scratch, distill]"], "a teacher with its own tokenizer is not trained here"),
    (["data.packing=true"], "set data.packing=false"),
    (["cache=disk", "cache.topk=4"], "cache.topk=null"),
    (["lm.on_policy.fraction=0.5"], "set lm.on_policy.fraction=0"),
    (["lm.shared_vocab=40"], "remove lm.shared_vocab"),
    (["data.teacher_tokenizer=null", "teacher.model=gpt2", "stages=[teacher, scratch, distill]",
      "cache=disk", "cache.topk=4"], "an offline top-k teacher keeps k of the teacher's tokens only"),
    (["data.teacher_tokenizer=byte"], "differs from data.teacher_tokenizer 'byte'"),
    (["data.max_length=64"], "exceeds the teacher's 32 positions"),
])
def test_refused_before_training(world, tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    assert main(["run", *world["args"], "student.kwargs.n_positions=64", *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "summary.json").exists()


def test_a_teacher_folder_with_its_own_tokenizer_names_the_teacher_tokenizer(world, tmp_path, capsys):
    args = [a for a in world["args"] if not a.startswith("data.teacher_tokenizer")]
    assert main(["run", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "comes with its own tokenizer" in err and "data.teacher_tokenizer" in err


def test_a_relative_teacher_tokenizer_folder_is_saved_absolute(tmp_path):
    """config.yaml must name the same teacher tokenizer from any directory (resume, eval)."""
    from distill.config import absolute_paths, load_config

    (tmp_path / "tok").mkdir()
    cfg = absolute_paths(load_config(None, ["task=language_model", "data.teacher_tokenizer=tok"]), tmp_path)
    assert cfg.data.teacher_tokenizer == str((tmp_path / "tok").absolute())
    byte = absolute_paths(load_config(None, ["task=language_model", "data.teacher_tokenizer=byte"]), tmp_path)
    assert byte.data.teacher_tokenizer == "byte"  # a name, not a folder
