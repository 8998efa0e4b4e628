"""Language-model distillation: data and masks, normalisation under accumulation, vocabulary
checks, the offline top-k teacher, on-policy batches and end-to-end runs. Models are tiny
randomly initialised GPT-2 / Llama configs built here (nothing is downloaded)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.config import TrainConfig, load_config  # noqa: E402
from distill.contracts import Batch  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.engine import fit  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm.data import Example, build_lm_data, encode, pack, pad_rows  # noqa: E402
from distill.lm.distiller import evaluate_lm, lm_distiller  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.lm.offline import TopKStore, open_topk_store  # noqa: E402
from distill.lm.on_policy import OnPolicy  # noqa: E402
from distill.lm.tokenizer import ByteTokenizer  # noqa: E402
from distill.losses.lm import ForwardKL, ReverseKL  # noqa: E402

V = 40  # vocabulary of the toy models
REPO = Path(__file__).resolve().parents[2]  # paths from the repository root, wherever pytest runs


def gpt(layers=1, width=16, vocab=V, seed=0):
    torch.manual_seed(seed)
    kw = {"n_layer": layers, "n_embd": width, "n_head": 2, "n_positions": 32,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return create_lm("gpt2", kw, vocab)


def llama(vocab=V, seed=0):
    torch.manual_seed(seed)
    kw = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
          "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32}
    return create_lm("llama", kw, vocab)


def tensors(rows=4, length=12, seed=0):
    """Right-padded rows with a 3-token prompt and ragged lengths: ids, target mask, index."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V - 1, (rows, length), generator=g)
    mask = torch.zeros(rows, length, dtype=torch.long)
    for r in range(rows):
        end = length - 2 * r  # rows end at different places: different token counts
        mask[r, 3:end] = 1
        ids[r, end:] = V - 1  # padding
    return [ids, mask, torch.arange(rows)]


def batch(rows=4, length=12, seed=0) -> Batch:
    """The same rows as a Batch, as distill's LM loaders yield them."""
    ids, mask, index = tensors(rows, length, seed)
    return Batch(ids, mask=mask, index=index)


def naive_loss(student, teacher, b, ce_w, kd_w):
    """The textbook computation on full logits: masked mean over target tokens."""
    ids, mask = b.inputs, b.mask
    target = mask[:, 1:].bool()
    s = student(ids).logits[:, :-1][target].double()
    t = teacher(ids).logits[:, :-1][target].double()
    y = ids[:, 1:][target]
    ce = F.cross_entropy(s, y, reduction="sum")
    p = F.log_softmax(t, -1)
    kd = (p.exp() * (p - F.log_softmax(s, -1))).sum()
    return (ce_w * ce + kd_w * kd) / target.sum()


# ---------------------------------------------------------------- data


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ** 2  # é ✓"
    assert tok.decode(tok.encode(text)) == text
    assert max(tok.encode(text)) < 256 and tok.vocab_size == 258


def test_packing_counts_every_token_but_each_documents_first_once():
    enc = [([1, 2, 3], [1, 1, 1]), ([4, 5], [1, 1]), ([6, 7, 8, 9], [1, 1, 1, 1])]
    x, m, _ = pack(enc, length=4)
    targets = [int(x[r, t]) for r in range(len(x)) for t in range(4) if m[r, t]]
    assert targets == [2, 3, 5, 7, 8, 9]  # each once, in order; 1, 4, 6 start documents
    assert (x[1:, 0] == x[:-1, -1]).all()  # rows overlap by one token
    assert (m[:, 0] == 0).all()


def test_padding_masks_prompt_and_padding():
    tok = ByteTokenizer()
    enc = encode([Example("ab", "cd"), Example("", "xyz")], tok, mask_prompt=True)
    x, m = pad_rows(enc, length=8, pad_id=tok.pad_token_id)
    assert m[0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # "c", "d", <eos>; not the prompt or pads
    assert x[0, 4] == tok.eos_token_id and (x[0, 5:] == tok.pad_token_id).all()
    assert m[1].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]  # position 0 is never a target
    enc = encode([Example("ab", "cd")], tok, mask_prompt=False)
    assert pad_rows(enc, 8, tok.pad_token_id)[1][0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]


def test_jsonl_reader_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}:", "completion": f" a{i}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(None, ["task=language_model", "data.name=jsonl", f"data.path={path}",
                             "data.max_length=16"]).data
    data = build_lm_data(cfg)
    assert data.counts["packing"] == 0  # prompt/completion rows are padded by default
    first = next(iter(data.val))
    ids, mask = first.inputs, first.mask
    for row, m in zip(ids, mask, strict=True):
        text = ByteTokenizer().decode(row[m.bool()])
        assert text.startswith(" a") and ":" not in text  # completions only, no prompt
    path.write_text('{"question": "x"}\n')
    with pytest.raises(DistillError, match="line 1.*'text' field"):
        build_lm_data(cfg)


# ---------------------------------------------------------------- loss, masks, normalisation


@pytest.mark.parametrize("make", [gpt, llama])
def test_loss_is_masked_mean_over_target_tokens(make):
    student, teacher = make(seed=0), make(seed=1)
    d = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.7)}, ce_weight=0.3)
    b = batch()
    out = d(b)
    ref = naive_loss(student, teacher, b, 0.3, 0.7)
    assert out.counted == b.mask[:, 1:].sum()
    assert torch.allclose(out.loss.double(), ref, atol=1e-5)


def test_padding_and_prompt_tokens_do_not_leak():
    student, teacher = gpt(seed=0), gpt(seed=1)
    d = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 1.0)}, ce_weight=1.0)
    b = batch()
    before = d(b).loss
    changed = Batch(b.inputs.clone(), mask=b.mask.clone(), index=b.index)
    pad = changed.mask == 0
    pad[:, :3] = False  # padding after each row's end (prompts come next)
    changed.inputs[pad] = 7  # any other id in the padding
    assert torch.equal(d(changed).loss, before)
    changed.inputs[:, 3] = 5  # a target token changes: the loss must change
    assert not torch.equal(d(changed).loss, before)


def _train(accumulate, batch_size=4, steps_data=8):
    torch.manual_seed(0)
    ids, mask, _ = tensors(rows=steps_data, length=12)
    mask[::3, 6:] = 0  # uneven token counts between micro-batches
    student, teacher = gpt(seed=0), gpt(seed=1)
    d = lm_distiller(teacher, student, {"reverse_kl": (ReverseKL(), 0.5)}, ce_weight=0.5)
    loader = TensorLoader(ids, mask, batch_size, shuffle=False, y_is_mask=True)
    # SGD: Adam divides by sqrt(v), which turns float rounding of near-zero gradients into
    # lr-sized differences and would hide what this test checks
    cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.5, schedule="constant",
                      accumulate=accumulate, checkpoint_every=0)
    fit(d, loader, loader, cfg, "cpu")
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def test_gradient_accumulation_does_not_change_the_update():
    one, two, four = _train(1), _train(2), _train(4)
    # not bit-exact: micro-batches are matmuls over other row counts and their gradients add up
    # in another order; the weights differ by ~3e-8, so 1e-6 leaves room for other CPUs
    assert torch.allclose(one, two, atol=1e-6) and torch.allclose(one, four, atol=1e-6)


def test_mean_of_micro_batch_means_would_differ():
    """The property above is not free: averaging per-micro-batch token means (what a plain
    loss / accumulate does) gives another gradient on this batch."""
    student, teacher = gpt(seed=0), gpt(seed=1)
    d = lm_distiller(teacher, student, {}, ce_weight=1.0)
    b = batch(rows=4)
    whole = torch.autograd.grad(d(b).loss, student.transformer.wte.weight)[0]
    halves = [d(part) for part in b.split(2)]
    naive = torch.autograd.grad((halves[0].loss + halves[1].loss) / 2, student.transformer.wte.weight)[0]
    assert not torch.allclose(whole, naive, atol=1e-6)


def test_vocab_mismatch_is_a_clear_error():
    with pytest.raises(DistillError, match="teacher's vocabulary has 48 tokens and the student's 40"):
        lm_distiller(gpt(vocab=48), gpt(), {"forward_kl": (ForwardKL(), 1.0)})
    d = lm_distiller(gpt(vocab=48), gpt(), {"forward_kl": (ForwardKL(), 1.0)}, shared_vocab=40)
    assert torch.isfinite(d(batch()).loss)
    with pytest.raises(DistillError, match="between 1 and the smaller vocabulary"):
        lm_distiller(gpt(vocab=48), gpt(), {"forward_kl": (ForwardKL(), 1.0)}, shared_vocab=44)


def test_evaluate_reports_perplexity_of_mean_nll():
    model = gpt()
    ids, mask, _ = tensors()
    res = evaluate_lm(model, TensorLoader(ids, mask, 2, y_is_mask=True), "cpu")
    target = mask[:, 1:].bool()
    nll = F.cross_entropy(model(ids).logits[:, :-1][target], ids[:, 1:][target])
    assert res["loss"] == pytest.approx(nll.item(), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-5)


# ---------------------------------------------------------------- offline top-k teacher


def test_topk_store_round_trip_and_metadata(tmp_path):
    teacher = gpt(seed=1)
    ids, mask, _ = tensors(rows=6)
    loader = TensorLoader(ids, mask, 3, y_is_mask=True)
    store, why = open_topk_store(teacher, loader, k=5, T=1.0, storage="disk", path=tmp_path, device="cpu")
    assert "30 bytes/token" in why and "0 of 6 rows reused" in why
    target = mask[:, 1:].bool()
    logp, top = store.rows(torch.arange(6), target, "cpu")
    full = F.log_softmax(teacher(ids).logits[:, :-1][target].float(), -1)
    ref = full.topk(5, dim=-1)
    # The store ran the teacher on other shapes than this check (other matmul row counts), so
    # the values agree to rounding (~1e-7) only; the ids still agree exactly, as no two of each
    # row's 6 largest log-probabilities are within 1e-5 of each other (4e-5 at the closest).
    assert (-full.topk(6, dim=-1).values.diff(dim=-1)).min() > 1e-5
    assert torch.equal(top, ref.indices)
    assert torch.allclose(logp, ref.values, atol=2e-3)  # fp16 storage
    again, why = open_topk_store(teacher, loader, k=5, T=1.0, storage="disk", path=tmp_path, device="cpu")
    assert "6 of 6 rows reused" in why
    with pytest.raises(DistillError, match="different k"):
        TopKStore(6, 11, 4, 1.0, store.meta | {"k": 5}, "disk", tmp_path, rebuild=False)
    other = gpt(seed=2)  # other weights: a stale store is rebuilt, never reused
    with pytest.warns(UserWarning, match="teacher_sha256"):
        _, why = open_topk_store(other, loader, k=5, T=1.0, storage="disk", path=tmp_path, device="cpu")
    assert "0 of 6 rows reused" in why


def test_training_from_the_store_without_the_teacher():
    student, teacher = gpt(seed=0), gpt(seed=1)
    b = batch(rows=4)
    loader = TensorLoader(b.inputs, b.mask, 4, y_is_mask=True)
    online = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 1.0)}, ce_weight=0.0)
    full = online(b).terms["forward_kl"]
    offline = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 1.0)}, ce_weight=0.0)
    store, _ = open_topk_store(teacher, loader, k=V - 1, T=1.0, storage="memory", path=None, device="cpu")
    offline.attach_source(store)
    offline.drop_teacher()
    assert offline.teacher is None
    out = offline(b)
    assert torch.allclose(out.terms["forward_kl"], full, atol=1e-3)  # k = V - 1: only fp16 error
    out.loss.backward()
    assert student.transformer.wte.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- on-policy batches


def test_on_policy_batches_count_only_sampled_tokens():
    torch.manual_seed(0)
    student = gpt()
    sampler = OnPolicy(1.0, 1.0, max_new_tokens=5, prompt_tokens=4, eos_id=V - 2, pad_id=V - 1)
    ids, mask, _ = tensors(rows=3)
    prompt = sampler.prompts(ids, mask)
    assert [len(p) for p in prompt] == [3, 3, 3]  # the tokens before the first target
    new = sampler.make_batch(student, batch(rows=3))
    new_ids, new_mask = new.inputs, new.mask
    assert torch.equal(new_ids[:, :3], ids[:, :3]) and (new_mask[:, :3] == 0).all()
    assert (new_mask.sum(1) >= 1).all() and (new_mask.sum(1) <= 5).all()
    assert new.index is None and new.on_policy  # rows in no dataset, flagged
    rows = sampler.rows([torch.tensor([1, 2])], torch.tensor([[5, V - 2, 7, 8]]))
    assert rows.inputs[0].tolist() == [1, 2, 5, V - 2, V - 1, V - 1]  # cut after the first <eos>
    assert rows.mask[0].tolist() == [0, 0, 1, 1, 0, 0]


def test_on_policy_step_choice_is_seeded_and_fractional():
    sampler = OnPolicy(0.25, 1.0, 4, 4, 0, 1, seed=3)
    picks = [sampler.chosen(e, s) for e in range(4) for s in range(100)]
    assert 0.18 < sum(picks) / len(picks) < 0.32
    assert picks == [OnPolicy(0.25, 1.0, 4, 4, 0, 1, seed=3).chosen(e, s) for e in range(4) for s in range(100)]


def test_on_policy_batch_skips_ce():
    student, teacher = gpt(seed=0), gpt(seed=1)
    d = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.5)}, ce_weight=0.5)
    b = batch()
    off = d(b)
    on = d(Batch(b.inputs, mask=b.mask, on_policy=True))
    assert torch.allclose(on.loss, 0.5 * off.terms["forward_kl"])
    assert torch.allclose(off.loss, 0.5 * off.terms["forward_kl"] + 0.5 * off.terms["ce"])


def _on_policy_distiller(fraction):
    student, teacher = gpt(seed=0), gpt(seed=1)
    sampler = OnPolicy(fraction, 1.0, max_new_tokens=4, prompt_tokens=3, eos_id=V - 2,
                       pad_id=V - 1, seed=0)
    return lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.5)}, ce_weight=0.5,
                        on_policy=sampler)


def test_logged_train_ce_leaves_out_on_policy_batches():
    """CE does not train on on-policy batches (its labels would be the student's own samples),
    so the epoch's train_ce is the mean over the data batches only; the divergence, which
    trains on every batch, is the mean over all of them."""
    d = _on_policy_distiller(0.5)
    steps = 8
    assert 0 < sum(d.part.on_policy.chosen(0, s) for s in range(steps)) < steps  # a mixed epoch
    outs = []
    forward = d.forward
    d.forward = lambda b: outs.append(forward(b)) or outs[-1]  # every training step's terms
    ids, mask, _ = tensors(rows=2 * steps)
    loader = TensorLoader(ids, mask, 2, shuffle=False, y_is_mask=True)
    cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, schedule="constant",
                      checkpoint_every=0)
    record = fit(d, loader, loader, cfg, "cpu").history[-1]
    assert len(outs) == steps
    data = [o for o in outs if "ce" in o.terms]
    assert 0 < len(data) < steps  # on-policy steps report no ce
    assert record["train_ce"] == pytest.approx(sum(o.terms["ce"].item() for o in data) / len(data), rel=1e-6)
    assert record["train_forward_kl"] == pytest.approx(
        sum(o.terms["forward_kl"].item() for o in outs) / steps, rel=1e-6)
    assert record["train_loss"] == pytest.approx(sum(o.loss.item() for o in outs) / steps, rel=1e-6)


def test_empty_share_of_an_on_policy_step_reports_the_same_terms():
    """Under torchrun a process can get no rows of a small last batch; on an on-policy step it
    must report the same terms as the processes that sampled (no ce), or the per-term epoch
    means would not line up across processes."""
    d = _on_policy_distiller(1.0)
    full = d(d.prepare(batch(), 0, 0))
    empty = d(d.prepare(batch().rows(0), 0, 0))
    assert "ce" not in full.terms and set(empty.terms) == set(full.terms)
    data = _on_policy_distiller(0.0)
    assert "ce" in data(data.prepare(batch().rows(0), 0, 0)).terms


# ---------------------------------------------------------------- end to end


def _text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    return path


TINY = [
    "task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
    "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
    "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
    "train.epochs=1", "train.lr=0.01", "teacher.train.epochs=1",
]


def test_runs_keep_the_epoch_with_the_lowest_validation_perplexity(tmp_path):
    """The task's Selection (ppl, lower is better) picks each stage's epoch, not accuracy."""
    out = tmp_path / "run"
    assert main(["run", *TINY, f"data.path={_text(tmp_path)}", "train.epochs=4", "train.lr=0.05",
                 "stages=[teacher,scratch]", "teacher.train.epochs=4", "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for stage in ("teacher", "scratch"):
        ppl = [m["val_ppl"] for m in metrics if m["stage"] == stage]
        best = summary["stages"][stage]["best_epoch"]
        assert ppl[best - 1] == min(ppl) == pytest.approx(summary["stages"][stage]["val_ppl"])


def test_end_to_end_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", *TINY, f"data.path={_text(tmp_path)}", "train.accumulate=2",
               "teacher.train.epochs=2", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "language_model" and summary["primary"]["lower_is_better"]
    for stage in ("teacher", "scratch", "distill"):
        r = summary["stages"][stage]
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-6)
        assert 1 < r["val_ppl"] < 258  # better than uniform over the byte vocabulary
    assert summary["gain"]["test_ppl"] == pytest.approx(
        summary["stages"]["distill"]["test_ppl"] - summary["stages"]["scratch"]["test_ppl"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train_forward_kl", "train_ce", "val_ppl"} <= set(metrics[-1])
    assert [m["stage"] for m in metrics] == ["teacher", "teacher", "scratch", "distill"]
    assert (out / "distill.safetensors").exists()
    assert "ppl" in capsys.readouterr().out
    assert main(["eval", str(out), "--split", "val"]) == 0
    shown = capsys.readouterr().out
    assert "distill-last" in shown and f"{summary['stages']['distill']['last_val_ppl']:.3f}" in shown
    assert main(["export", str(out), "--format", "hf"]) == 0
    assert (out / "distill-hf" / "config.json").exists()
    diff = re.search(r"difference (\S+)\)", capsys.readouterr().out).group(1)
    assert float(diff) < 1e-5
    assert main(["export", str(out), "--format", "onnx"]) == 2
    assert "--format hf" in capsys.readouterr().err
    assert main(["export", str(out), "--format", "hf"]) == 0  # again: the folder is distill's
    mine = tmp_path / "mine"  # a user's folder: refused, its files untouched
    mine.mkdir()
    (mine / "config.json").write_text("my own")
    assert main(["export", str(out), "--format", "hf", "--out", str(mine)]) == 2
    assert (mine / "config.json").read_text() == "my own" and "mine" in capsys.readouterr().err
    assert main(["export", str(out), "--format", "hf", "--out", str(tmp_path / "new")]) == 0
    assert main(["export", str(out), "--format", "hf", "--out", str(tmp_path / "new")]) == 0


def test_end_to_end_offline_and_on_policy(tmp_path):
    text = _text(tmp_path)
    first = tmp_path / "a"
    assert main(["run", *TINY, f"data.path={text}", "--out", str(first), "--quiet"]) == 0
    base = [*TINY, f"data.path={text}", "stages=[distill]", f"teacher.checkpoint={first}/teacher.safetensors"]
    offline = tmp_path / "b"
    assert main(["run", *base, "cache=disk", "cache.topk=4", "--out", str(offline), "--quiet"]) == 0
    summary = json.loads((offline / "summary.json").read_text())
    assert "offline top-4 teacher" in summary["stages"]["distill"]["cache"]
    assert json.loads((offline / "teacher_cache" / "meta.json").read_text())["k"] == 4
    policy = tmp_path / "c"
    assert main(["run", *base, "lm.on_policy.fraction=1.0", "lm.on_policy.max_new_tokens=4",
                 "--out", str(policy), "--quiet"]) == 0
    record = json.loads((policy / "metrics.jsonl").read_text().splitlines()[-1])
    # every step is on-policy: no CE trains, so none is logged
    assert "train_ce" not in record and math.isfinite(record["train_forward_kl"])


@pytest.mark.parametrize("overrides, message", [
    (["lm.on_policy.fraction=0.5", "cache=disk", "cache.topk=4"], "need the online teacher"),
    (["cache.topk=4"], "set cache: disk"),
    (["loss.tv.weight=1", "loss.tv.T=2", "cache=disk", "cache.topk=4"], "one temperature"),
    (["data.max_length=64"], "exceeds the student's 32 positions"),
    (["loss.kd.weight=1"], "Unknown token loss 'kd'"),
    (["data.name=digits"], "must be one of pydoc, text, jsonl"),
    (["lm.shared_vocab=200", "cache=disk", "cache.topk=4"], "with lm.shared_vocab use the online teacher"),
    (["lm.on_policy.fraction=0.5", "lm.on_policy.max_new_tokens=32"], "leaves no room for a prompt"),
])
def test_bad_lm_configs_exit_2(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    rc = main(["run", *TINY, f"data.path={_text(tmp_path)}", *overrides, "--out", str(out)])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_shipped_lm_config_is_the_lm_default_spelled_out():
    cfg = load_config(REPO / "configs" / "lm" / "pydoc.yaml")
    assert cfg == load_config(None, ["task=language_model"])
    assert cfg.task == "language_model" and cfg.data.name == "pydoc"
    assert set(cfg.loss) >= {"ce"} and len(cfg.loss) >= 2
    assert SimpleNamespace(**cfg.teacher.kwargs).n_layer > SimpleNamespace(**cfg.student.kwargs).n_layer


@pytest.mark.parametrize("overrides, name", [
    ([], "lm-pydoc"),
    (["data.name=jsonl"], "lm-jsonl"),
    (["data.name=text", "name=mine"], "mine"),
])
def test_lm_run_is_named_after_its_data_unless_named(overrides, name):
    assert load_config(None, ["task=language_model", *overrides]).name == name


def test_lm_run_name_from_a_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: language_model\ndata: {name: text, path: corpus.txt}\n")
    assert load_config(path).name == "lm-text"
    assert load_config(path, ["data.name=jsonl"]).name == "lm-jsonl"  # the override's data
    path.write_text("name: poems\ntask: language_model\ndata: {name: text}\n")
    assert load_config(path).name == "poems"


def test_losses_command_lists_token_losses(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tv"))
    assert "beta=0.5" in out and "lam=0.1" in out


def _word_tokenizer(folder, words):
    """A local word-level Hugging Face tokenizer saved to `folder` (built here, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return len(vocab)


def test_local_tokenizer_and_model_folders(tmp_path, capsys):
    """A teacher saved with save_pretrained beside its own tokenizer: the run must use that
    tokenizer; with another one (here the byte tokenizer) it is refused before training."""
    words = ["paragraph", "the", "cat", "sat", "on", "mat", ".", ":"] + [str(i) for i in range(40)]
    folder = tmp_path / "teacher"
    n = _word_tokenizer(folder, words)
    create_lm("gpt2", {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}, n).save_pretrained(str(folder))
    base = [*TINY, f"data.path={_text(tmp_path)}", f"teacher.model={folder}", "stages=[scratch, distill]"]
    rc = main(["run", *base, "--out", str(tmp_path / "bad")])
    assert rc == 2 and "comes with its own tokenizer" in capsys.readouterr().err
    out = tmp_path / "good"
    assert main(["run", *base, f"data.tokenizer={folder}", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["vocab_size"] == n and summary["stages"]["teacher"]["checkpoint"] == str(folder)
    assert summary["stages"]["distill"]["val_ppl"] < n  # learned something over a uniform guess


def test_models_that_post_process_logits_are_refused():
    """The chunked loss recomputes logits as output_layer(last hidden state), then the transform
    known for the architecture (tests/lm/test_softcap.py); a model whose forward changes them
    otherwise (here a scale GPT-2 does not have) must be refused, not silently mis-trained."""
    from distill.lm.models import check_head

    ids = torch.randint(0, V, (2, 8))
    check_head(gpt(), "teacher", ids)  # GPT-2: logits are the head's output
    model = gpt()
    forward = model.forward
    model.forward = lambda *a, **k: SimpleNamespace(logits=0.5 * forward(*a, **k).logits)  # a logit scale
    with pytest.raises(DistillError, match="post-processes logits"):
        check_head(model, "teacher", ids)


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 gloo processes trains the same LM as 1 process. Rows are prompt/completion
    pairs of different lengths, so the two shards of a batch count different numbers of tokens:
    only a loss normalised by the whole batch's token count (all-reduced) matches."""
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}?", "completion": " yes" * (1 + i % 5)})
                              for i in range(60)))
    args = [*TINY, "data.name=jsonl", f"data.path={path}", "data.batch_size=8", "train.epochs=2",
            "train.threads=1", "--quiet", "--no-report"]
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


def test_topk_store_fill_in_position_slices(monkeypatch):
    """Filling runs the output layer on slices of positions (never a batch's full logits);
    the stored values are the same as from one slice."""
    import distill.lm.chunked as chunked

    teacher = gpt(seed=1)
    ids, mask, _ = tensors(rows=4)
    loader = TensorLoader(ids, mask, 4, y_is_mask=True)
    whole, _ = open_topk_store(teacher, loader, k=3, T=1.0, storage="memory", path=None, device="cpu")
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * V)  # 2 rows per chunk: 1 position per slice
    sliced, _ = open_topk_store(teacher, loader, k=3, T=1.0, storage="memory", path=None, device="cpu")
    # 4-row vs 44-row matmuls for the output layer: BLAS may round them differently on some
    # CPUs (~1e-7), which can move a value across an fp16 rounding boundary: one fp16 ulp
    # (rtol 2^-10; 2^-24 for subnormals). The ids agree exactly: no two of the 4 largest
    # log-probabilities of a position are within 1e-5 of each other (checked here).
    with torch.no_grad():
        logp = F.log_softmax(teacher(ids).logits[:, :-1].float(), -1)
    assert (-logp.topk(4, dim=-1).values.diff(dim=-1)).min() > 1e-5
    assert torch.equal(whole.ids, sliced.ids)
    torch.testing.assert_close(sliced.logp.float(), whole.logp.float(), rtol=2**-10, atol=2**-24)
    assert sliced.filled.all()


def test_on_policy_prompts_leave_room_for_the_sample():
    sampler = OnPolicy(1.0, 1.0, max_new_tokens=5, prompt_tokens=4, eos_id=0, pad_id=1, max_positions=8)
    ids = torch.arange(12)[None]
    mask = torch.zeros(1, 12, dtype=torch.long)
    mask[0, 10:] = 1  # a 10-token prompt
    (prompt,) = sampler.prompts(ids, mask)
    assert prompt.tolist() == [7, 8, 9]  # its last 8 - 5 tokens
