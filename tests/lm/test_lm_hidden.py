"""Hidden-state terms for language models (`lm_hidden`): values worked out by hand, counted rows
only, the projector trained and checkpointed, gradient accumulation, on-policy and empty
batches, end-to-end CLI runs (GPT-2 and Llama pairs) that resume exactly after a Ctrl-C, and
the refusals. Models are tiny random GPT-2 / Llama configs built here (nothing is downloaded)."""

from __future__ import annotations

import itertools
import json
import math
import signal

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from test_lm import TINY, V, _text, batch, gpt, tensors  # noqa: E402

from distill import stages  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.contracts import Batch  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.engine import fit  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm.distiller import lm_distiller  # noqa: E402
from distill.lm.offline import open_topk_store  # noqa: E402
from distill.lm.on_policy import OnPolicy  # noqa: E402
from distill.losses.lm import ForwardKL, LMHidden  # noqa: E402


def _projected_term(loss: str, pairs) -> LMHidden:
    """A term on given (student, teacher) paths with a known projection per pair:
    W = [[1, 0], [0, 1], [1, 1]], b = [0, 0, 1] (2 -> 3 units)."""
    term = LMHidden(layers=dict(pairs), loss=loss)
    term.map_paths(tuple(pairs))
    term.setup({s: (1, 1, 2) for s, _ in pairs}, {t: (1, 1, 3) for _, t in pairs})
    for p in term.projectors:
        with torch.no_grad():
            p.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            p.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return term


H_S = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # two counted rows, student width 2
H_T = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])  # teacher width 3
# projected: row 0 -> [1, 2, 4], row 1 -> [0, -1, 0]


def test_mse_per_row_by_hand():
    term = _projected_term("mse", [("s", "t")])
    # row 0: diff [0, 0, 1] -> 1/3; row 1: diff [-1, -2, -1] -> 6/3
    assert torch.allclose(term.per_token({"s": H_S}, {"t": H_T}), torch.tensor([1 / 3, 2.0]))


def test_cosine_per_row_by_hand():
    term = _projected_term("cosine", [("s", "t")])
    # row 0: [1,2,4].[1,2,3] = 17, norms sqrt(21), sqrt(14); row 1: [0,-1,0].[1,1,1] = -1, norms 1, sqrt(3)
    expected = torch.tensor([1 - 17 / math.sqrt(21 * 14), 1 + 1 / math.sqrt(3)])
    assert torch.allclose(term.per_token({"s": H_S}, {"t": H_T}), expected)


def test_pairs_are_summed():
    term = _projected_term("mse", [("s1", "t1"), ("s2", "t2")])
    got = term.per_token({"s1": H_S, "s2": torch.zeros(2, 2)}, {"t1": H_T, "t2": torch.zeros(2, 3)})
    # pair 2: projected [0, 0, 1] against 0 -> 1/3 on both rows
    assert torch.allclose(got, torch.tensor([1 / 3 + 1 / 3, 2.0 + 1 / 3]))


def test_zero_when_the_projected_student_is_the_teacher():
    term = _projected_term("mse", [("s", "t")])
    teacher = term.projectors[0](H_S).detach()
    assert torch.allclose(term.per_token({"s": H_S}, {"t": teacher}), torch.zeros(2))
    cos = _projected_term("cosine", [("s", "t")])
    assert torch.allclose(cos.per_token({"s": H_S}, {"t": 3 * teacher}), torch.zeros(2), atol=1e-6)


def _block_outputs(model, index, ids):
    """The output of decoder block `index` ([B, L, d]), read with a hook of its own."""
    seen = {}
    block = model.transformer.h[index]
    handle = block.register_forward_hook(lambda m, a, out: seen.update(out=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen["out"]


def test_value_is_a_mean_over_counted_rows_only():
    """The term equals a reference computed from independently hooked block outputs at the rows
    whose next token is a target; a mean over all positions would differ; padding tokens'
    content changes nothing."""
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    d = lm_distiller(teacher, student, {"hid": (LMHidden(), 1.0)}, ce_weight=0.0)
    b = batch()
    d.setup(b)
    assert d.terms["hid"].pairs == (("transformer.h.0", "transformer.h.1"),)  # uniform: 1 -> 2
    out = d(b)
    proj = d.terms["hid"].projectors[0]
    with torch.no_grad():
        diff = (proj(_block_outputs(student, 0, b.inputs)) - _block_outputs(teacher, 1, b.inputs)).pow(2).mean(-1)
    rows = b.mask[:, 1:].bool()
    expected = diff[:, :-1][rows].mean()
    assert torch.allclose(out.terms["hid"], expected, rtol=1e-5)
    assert torch.allclose(out.loss, expected, rtol=1e-5)  # the only weighted term
    assert not torch.allclose(diff.mean(), expected, rtol=1e-3)  # padding/prompt rows would change it
    padded = b.inputs.clone()
    padded[b.inputs == V - 1] = 7  # other tokens at the padding (after each row's last target)
    again = d(Batch(padded, mask=b.mask, index=b.index))
    assert torch.allclose(again.terms["hid"], out.terms["hid"], rtol=1e-6)


def test_gradients_reach_the_student_and_projector_not_the_teacher():
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    d = lm_distiller(teacher, student, {"hid": (LMHidden(loss="cosine"), 1.0)}, ce_weight=0.0)
    b = batch()
    d.setup(b)
    d(b).loss.backward()
    assert d.terms["hid"].projectors[0].weight.grad.abs().sum() > 0
    assert student.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert "terms.hid.projectors.0.weight" in d.state_dict()  # checkpointed with the student


def _train(accumulate, term="mse"):
    torch.manual_seed(0)
    ids, mask, _ = tensors(rows=8, length=12)
    mask[::3, 6:] = 0  # uneven token counts between micro-batches
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    d = lm_distiller(teacher, student, {"hid": (LMHidden(loss=term), 2.0), "fkl": (ForwardKL(), 0.5)},
                     ce_weight=0.5)
    loader = TensorLoader(ids, mask, 4, shuffle=False, y_is_mask=True)
    # SGD: Adam's 1/sqrt(v) would blow float rounding of near-zero gradients up to lr size
    cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.5, schedule="constant",
                      accumulate=accumulate, checkpoint_every=0)
    torch.manual_seed(0)  # the projector's init draws from it: the same for every accumulate
    fit(d, loader, loader, cfg, "cpu")
    return torch.cat([p.detach().flatten() for p in d.parameters()]), d


@pytest.mark.parametrize("term", ["mse", "cosine"])
def test_gradient_accumulation_gives_the_whole_batch_update(term):
    (one, d), (two, _), (four, _) = _train(1, term), _train(2, term), _train(4, term)
    assert torch.allclose(one, two, atol=1e-6) and torch.allclose(one, four, atol=1e-6)
    # the projector trained: it moved away from a fresh init drawn from the same seed
    torch.manual_seed(0)
    fresh = nn.Linear(8, 16)
    nn.init.normal_(fresh.weight, std=0.02)
    assert not torch.allclose(d.terms["hid"].projectors[0].weight, fresh.weight)


def test_on_policy_batches_train_the_hidden_term_too():
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    sampler = OnPolicy(1.0, 1.0, max_new_tokens=4, prompt_tokens=3, eos_id=V - 2, pad_id=V - 1)
    d = lm_distiller(teacher, student, {"hid": (LMHidden(), 1.0)}, ce_weight=1.0, on_policy=sampler)
    b = batch()
    d.setup(b)
    sampled = d.prepare(b, 0, 0)
    out = d(sampled)
    assert sampled.on_policy and "ce" not in out.terms
    assert torch.isfinite(out.terms["hid"]) and out.terms["hid"] > 0
    assert torch.allclose(out.loss, out.terms["hid"])
    empty = d(Batch(b.inputs[:0], mask=b.mask[:0], index=b.index[:0]))
    assert set(empty.terms) == {"ce", "hid"}  # an empty share reports what a full one does


def test_a_mapping_names_any_modules_and_their_inputs():
    """{student path: teacher path}, ':input' for a module's input: here the final norm's input,
    which is the last block's output, so it gives the value the numbered map [[1, 2]] gives."""
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    b = batch()
    values = []
    for layers in ({"transformer.ln_f:input": "transformer.ln_f:input"}, [[1, 2]]):
        torch.manual_seed(0)  # the same projector init
        d = lm_distiller(teacher, student, {"hid": (LMHidden(layers), 1.0)})
        d.setup(b)
        values.append(d(b).terms["hid"])
    assert torch.allclose(values[0], values[1], rtol=1e-6)


def test_setup_on_an_empty_share_sizes_the_projectors():
    """Under torchrun a process's share of the first batch can be empty: the shapes are probed
    on one row instead, and the projector is the one a full batch gives."""
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    d = lm_distiller(teacher, student, {"hid": (LMHidden(), 1.0)})
    b = batch()
    d.setup(Batch(b.inputs[:0], mask=b.mask[:0], index=b.index[:0]))
    assert tuple(d.terms["hid"].projectors[0].weight.shape) == (16, 8)
    assert torch.isfinite(d(b).loss)


def test_python_api_refusals():
    student, teacher = gpt(layers=1, width=8, seed=0), gpt(layers=2, width=16, seed=1)
    with pytest.raises(DistillError, match="has no module 'transformer.hh.1'.*Nearest names"):
        lm_distiller(teacher, student, {"hid": (LMHidden({"transformer.h.0": "transformer.hh.1"}), 1.0)})
    with pytest.raises(DistillError, match=r"loss.hid: layers \[\[1, 3\]\] out of range"):
        lm_distiller(teacher, student, {"hid": (LMHidden([[1, 3]]), 1.0)})
    with pytest.raises(ValueError, match="'mse' or 'cosine'"):
        LMHidden(loss="l1")
    b = batch()
    d = lm_distiller(teacher, student, {"hid": (LMHidden(), 1.0), "fkl": (ForwardKL(), 1.0)})
    d.setup(b)
    loader = TensorLoader(b.inputs, b.mask, 4, y_is_mask=True)
    store, _ = open_topk_store(teacher, loader, k=4, T=1.0, storage="memory", path=None, device="cpu")
    d.attach_source(store)
    d.drop_teacher()
    with pytest.raises(DistillError, match="offline top-k teacher"):
        d(b)


# ---------------------------------------------------------------- end to end, from the CLI

LLAMA = ("{num_hidden_layers: %d, hidden_size: %d, intermediate_size: 32, num_attention_heads: 2, "
         "num_key_value_heads: 1, max_position_embeddings: 32}")
PAIRS = {  # name -> overrides: a GPT-2 pair on the default (uniform) map, a Llama pair named by path
    "gpt2": ["teacher.kwargs={n_layer: 2, n_embd: 16, n_head: 2, n_positions: 32}",
             "loss.hid.type=lm_hidden", "loss.hid.weight=1.0"],
    "llama": ["teacher.model=llama", f"teacher.kwargs={LLAMA % (2, 16)}",
              "student.model=llama", f"student.kwargs={LLAMA % (1, 8)}",
              "loss.hid={type: lm_hidden, weight: 1.0, loss: cosine, layers: {model.layers.0: model.layers.1}}"],
}
STOP_STEP = 10  # of 14 (7 a epoch): in the second epoch
RESUMABLE = ["stages=[teacher,distill]", "train.epochs=2", "train.deterministic=true", "train.threads=1",
             "--quiet", "--no-report"]


def _args(tmp_path, name, *extra):
    return ["run", *TINY, f"data.path={_text(tmp_path)}", *PAIRS[name], *RESUMABLE, *extra]


def _ctrl_c_at(mp: pytest.MonkeyPatch, stage: str, step: int) -> None:
    """A real SIGINT after training step `step` of `stage` (caught by distill's handler)."""
    real_fit = stages.fit

    def stopping_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw):
        if kw["checkpointer"].stage == stage:
            steps = itertools.count(1)

            def stop(info):
                on_step(info)
                if next(steps) == step:
                    signal.raise_signal(signal.SIGINT)

            return real_fit(distiller, loader, val, train, device, stop, on_epoch, **kw)
        return real_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw)

    mp.setattr(stages, "fit", stopping_fit)


@pytest.mark.parametrize("name", list(PAIRS))
def test_cli_run_trains_and_resumes_exactly_after_a_stop(tmp_path, name, capsys):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main([*_args(tmp_path, name), "--out", str(whole)]) == 0
    metrics = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    distill_records = [m for m in metrics if m["stage"] == "distill"]
    assert all(math.isfinite(m["train_hid"]) and m["train_hid"] > 0 for m in distill_records)
    with pytest.MonkeyPatch.context() as mp:
        _ctrl_c_at(mp, "distill", step=STOP_STEP)
        assert main([*_args(tmp_path, name), "--out", str(stopped)]) == 130
    assert "Traceback" not in capsys.readouterr().err
    saved = [load_file(str(f)) for f in stopped.rglob("ckpt-distill-*.safetensors")]
    assert saved and all(any(k.startswith("model.terms.hid.projectors.0.") for k in w) for w in saved)
    assert main(["run", "--quiet", "--no-report", "--resume", str(stopped)]) == 0
    # the student and, beside it, the trained projectors: bit for bit the uninterrupted run's
    for stem in ("distill", "distill-last", "distill-losses", "distill-last-losses"):
        a, b = (load_file(str(d / f"{stem}.safetensors")) for d in (whole, stopped))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem
    assert {"hid.projectors.0.weight", "hid.projectors.0.bias"} <= set(load_file(str(whole / "distill-losses.safetensors")))
    resumed = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_hid"] for m in resumed if m["stage"] == "distill"] == [m["train_hid"] for m in distill_records]


@pytest.mark.parametrize("overrides, message", [
    (["cache=disk", "cache.topk=4"], "offline top-k teacher (cache.topk) does not store"),
    (["loss.hid.layers={transformer.h.0: transformer.hh.1}"], "has no module 'transformer.hh.1'"),
    (["loss.hid.layers=[[1, 3]]"], "out of range"),
    (["teacher.kwargs={n_layer: 3, n_embd: 16, n_head: 2, n_positions: 32}",
      "student.kwargs={n_layer: 2, n_embd: 8, n_head: 2, n_positions: 32}"], "multiple of the student's depth"),
    (["loss.hid.loss=l1"], "'mse' or 'cosine'"),
    (["loss.hid.layers=middle"], "layers must be 'uniform', 'last'"),
    (["loss.hid.student=transformer.h.0"], "Unknown key"),
])
def test_bad_hidden_configs_exit_2_before_anything_trains(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    assert main([*_args(tmp_path, "gpt2"), *overrides, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "summary.json").exists() and not (out / "teacher.safetensors").exists()


def test_classifier_runs_refuse_the_lm_term(capsys):
    assert main(["run", "loss.hid.type=lm_hidden", "--print-config"]) == 2
    assert "lm_hidden" in capsys.readouterr().err


def test_losses_command_lists_the_hidden_term(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert "lm_hidden" in out and "loss=mse" in out


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 gloo processes trains the same student as 1 process (its updates go through
    the projector), on prompt/completion rows whose shards count different numbers of tokens:
    the hidden term is normalised by the whole batch's counted tokens, as the token terms are."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}?", "completion": " yes" * (1 + i % 5)})
                              for i in range(60)))
    args = [*TINY, "data.name=jsonl", f"data.path={path}", "data.batch_size=8", *PAIRS["gpt2"],
            "stages=[teacher,distill]", "train.epochs=2", "train.threads=1", "--quiet", "--no-report"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", *args, "--out", str(one)]) == 0
    with socket.socket() as sock:  # a free port: a fixed one collides with concurrent runs
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "distill", "run", *args, "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    a, b = load_file(str(one / "distill-last.safetensors")), load_file(str(two / "distill-last.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
