"""Heads that post-process logits (distill.lm.logit_transform): Gemma-2's soft-capping,
Cohere's logit scale, Granite's logit divisor. The chunked loss, its gradients, evaluation and
the offline store must see the model's own logits, `model(ids).logits`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

tf = pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.contracts import Batch  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm.chunked import Head, TeacherRows, token_loss, token_sums  # noqa: E402
from distill.lm.distiller import lm_distiller  # noqa: E402
from distill.lm.logit_transform import IDENTITY, LogitTransform, logit_transform  # noqa: E402
from distill.lm.models import check_head, hidden_states  # noqa: E402
from distill.lm.offline import open_topk_store  # noqa: E402
from distill.lm.on_policy import OnPolicy  # noqa: E402
from distill.losses.lm import ForwardKL  # noqa: E402

V = 40
SMALL = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 32,
         "initializer_range": 0.3}  # logits of order 1 at random init: the transforms matter


def gemma2(vocab=V, seed=0, cap=1.0):
    """A tiny Gemma-2 whose soft-cap bites (its raw logits exceed the cap at random init)."""
    torch.manual_seed(seed)
    cfg = tf.Gemma2Config(vocab_size=vocab, head_dim=8, final_logit_softcapping=cap,
                          pad_token_id=0, bos_token_id=0, eos_token_id=1, **SMALL)
    return tf.AutoModelForCausalLM.from_config(cfg)


def cohere(seed=0):
    torch.manual_seed(seed)
    cfg = tf.CohereConfig(vocab_size=V, logit_scale=4.0, pad_token_id=0, bos_token_id=0,
                          eos_token_id=1, **SMALL)
    return tf.AutoModelForCausalLM.from_config(cfg)


def granite(seed=0):
    torch.manual_seed(seed)
    cfg = tf.GraniteConfig(vocab_size=V, logits_scaling=0.25, pad_token_id=0, bos_token_id=0,
                           eos_token_id=1, **SMALL)
    return tf.AutoModelForCausalLM.from_config(cfg)


MODELS = {"gemma2": gemma2, "cohere": cohere, "granite": granite}


def test_transforms_read_from_the_config():
    assert logit_transform(gemma2().config) == LogitTransform(cap=1.0)
    assert logit_transform(cohere().config) == LogitTransform(scale=4.0)
    assert logit_transform(granite().config) == LogitTransform(scale=4.0)  # logits / 0.25
    assert logit_transform(tf.LlamaConfig()) is IDENTITY
    z = torch.tensor([-3.0, 0.0, 0.05, 2.0])
    assert torch.allclose(LogitTransform(cap=0.5)(z), 0.5 * torch.tanh(z / 0.5))
    assert torch.allclose(LogitTransform(scale=2.0, cap=0.5)(z), 0.5 * torch.tanh(2 * z / 0.5))


def _hooked_logits(model, ids, hidden_leaf):
    """model(ids).logits with its final norm's output replaced by `hidden_leaf`: the model's own
    forward from the last hidden states on, so autograd reaches hidden_leaf and the head."""
    handle = model.model.norm.register_forward_hook(lambda mod, args, out: hidden_leaf)
    try:
        return model(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_chunked_loss_and_gradients_equal_the_models_own_logits(name):
    student, teacher = MODELS[name](seed=0), gemma2(seed=1, cap=2.0)
    torch.manual_seed(2)
    ids = torch.randint(2, V, (3, 10))
    with torch.no_grad():
        hs, ht = hidden_states(student, ids), hidden_states(teacher, ids)
    weight = student.get_output_embeddings().weight
    term, T = ForwardKL(T=2.0), 2.0

    # the naive reference: the models' full logits, the textbook loss, autograd all through
    h_ref = hs.clone().requires_grad_()
    s = _hooked_logits(student, ids, h_ref)[:, :-1].reshape(-1, V)
    with torch.no_grad():
        t = teacher(input_ids=ids, use_cache=False).logits[:, :-1].reshape(-1, V)
    y = ids[:, 1:].reshape(-1)
    kd = term.per_token(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)).sum()
    ref = (0.4 * F.cross_entropy(s, y, reduction="sum") + 0.6 * kd) / len(y)
    g_h_ref, g_w_ref = torch.autograd.grad(ref, [h_ref, weight])

    h = hs.clone().requires_grad_()
    rows = h[:, :-1].reshape(-1, h.shape[-1])
    teacher_rows = TeacherRows(hidden=ht[:, :-1].reshape(-1, ht.shape[-1]), head=Head.of(teacher))
    loss, sums = token_loss(rows, Head.of(student), y, count=len(y), terms={"kd": term},
                            weights={"ce": 0.4, "kd": 0.6}, teacher=teacher_rows, chunk=7)
    g_h, g_w = torch.autograd.grad(loss, [h, weight])
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(g_h, g_h_ref, atol=1e-5) and g_h.abs().max() > 1e-4
    assert torch.allclose(g_w, g_w_ref, atol=1e-5) and g_w.abs().max() > 1e-4
    # the plain head (no transform) gives another loss: the transform is not a no-op here
    plain, _ = token_loss(rows, Head(weight), y, count=len(y), chunk=7)
    assert abs(plain.item() - F.cross_entropy(s, y).item()) > 0.05
    ev = token_sums(rows.detach(), Head.of(student), y, chunk=7)
    assert torch.allclose(ev["ce"], F.cross_entropy(s, y, reduction="sum"), atol=1e-4)


def test_on_policy_step_of_soft_capped_models_is_the_naive_loss():
    """The student samples from its own (capped) logits; the Distiller's step on that batch,
    teacher and student both soft-capped, equals the KL computed from `model(ids).logits`."""
    student, teacher = gemma2(seed=0), gemma2(seed=1, cap=2.0)
    sampler = OnPolicy(1.0, 1.0, max_new_tokens=5, prompt_tokens=3, eos_id=1, pad_id=0, seed=0)
    d = lm_distiller(teacher, student, {"kd": (ForwardKL(), 1.0)}, ce_weight=0.0, on_policy=sampler)
    torch.manual_seed(4)
    ids = torch.randint(2, V, (3, 8))
    mask = torch.zeros_like(ids)
    mask[:, 3:] = 1
    b = sampler.make_batch(student, Batch(ids, mask=mask, index=torch.arange(3)))
    assert b.on_policy and b.mask.sum() > 0
    target = b.mask[:, 1:].bool()
    with torch.no_grad():
        s = F.log_softmax(student(b.inputs).logits[:, :-1][target], -1)
        t = F.log_softmax(teacher(b.inputs).logits[:, :-1][target], -1)
        ref = (t.exp() * (t - s)).sum(-1).mean()
        got = d(b).loss
    assert torch.allclose(got, ref, atol=1e-5)


def test_offline_store_keeps_the_soft_capped_distribution():
    teacher = gemma2(seed=1)
    torch.manual_seed(3)
    ids = torch.randint(2, V, (4, 9))
    mask = torch.ones_like(ids)
    store, _ = open_topk_store(teacher, TensorLoader(ids, mask, 4, y_is_mask=True), k=3, T=1.0,
                               storage="memory", path=None, device="cpu")
    with torch.no_grad():
        logp = F.log_softmax(teacher(ids).logits[:, :-1].float(), -1)
    torch.testing.assert_close(store.logp.float(), logp.topk(3, -1).values, rtol=2**-10, atol=1e-3)


def test_check_head_accepts_known_transforms_and_refuses_others():
    ids = torch.randint(2, V, (2, 8))
    for make in MODELS.values():
        check_head(make(), "student", ids)
    model = gemma2()
    forward = model.forward
    model.forward = lambda *a, **k: SimpleNamespace(logits=forward(*a, **k).logits ** 3)
    with pytest.raises(DistillError, match="soft-capped at 1.*does not reproduce"):
        check_head(model, "teacher", ids)


def test_cli_run_with_a_local_gemma2_student(tmp_path):
    """A Gemma-2 folder (byte vocabulary) as the student of a GPT-2 teacher, from the CLI."""
    folder = tmp_path / "gemma2"
    gemma2(vocab=258, cap=0.5).save_pretrained(str(folder))
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"paragraph {i}: the cat sat on mat {i % 7}." for i in range(40)))
    out = tmp_path / "run"
    rc = main(["run", "task=language_model", "data.name=text", f"data.path={text}", "data.max_length=32",
               "data.batch_size=8", "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
               f"student.model={folder}", "student.kwargs={}", "train.epochs=1", "teacher.train.epochs=1",
               "train.lr=0.01", "stages=[teacher,distill]", "--out", str(out), "--quiet", "--no-report"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 1 < summary["stages"]["distill"]["val_ppl"] < 258
