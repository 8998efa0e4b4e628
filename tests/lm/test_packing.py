"""Document-aware packing (distill.lm.packing): position ids restart per document, a packed row
computes what its documents compute one by one (CE and a teacher's token KD, GPT-2 and Llama,
eager and sdpa attention), and a packed CLI run trains and resumes exactly after a stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from distill import runtime  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.contracts import Batch  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm import packing  # noqa: E402
from distill.lm.data import build_lm_data, fingerprint  # noqa: E402
from distill.lm.distiller import TokenPart, evaluate_lm, lm_distiller  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.lm.offline import open_topk_store  # noqa: E402
from distill.lm.on_policy import OnPolicy  # noqa: E402
from distill.lm.packing import check_isolation, pack  # noqa: E402
from distill.lm.tokenizer import ByteTokenizer  # noqa: E402
from distill.losses.lm import ForwardKL  # noqa: E402

V = 40


def model(arch: str, attention: str, seed: int):
    torch.manual_seed(seed)
    kw = ({"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 32, "resid_pdrop": 0.0,
           "embd_pdrop": 0.0, "attn_pdrop": 0.0} if arch == "gpt2" else
          {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 32})
    m = create_lm(arch, kw, V)
    m.set_attn_implementation(attention)
    return m.double().eval()


def documents(lengths=(5, 7, 3, 9, 4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def test_positions_restart_at_each_document_and_row():
    """Worked by hand: documents [1 2 3] [4 5] [6 7 8 9] in rows of 4 overlapping by one, padded."""
    enc = [([1, 2, 3], [1, 1, 1]), ([4, 5], [1, 1]), ([6, 7, 8, 9], [1, 1, 1, 1])]
    x, m, p = pack(enc, length=4)
    assert x.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 0]]
    assert p.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1], [0, 1, 2, 0]]  # the padding 0: its own
    # a document's first token (1, 4, 6) is no target; the row overlap (4, 7) is counted once
    assert m.tolist() == [[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 0]]


def segments(row_positions: torch.Tensor) -> list[tuple[int, int]]:
    starts = (row_positions == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [len(row_positions)], strict=True))


def reference_token_losses(student, teacher, x, m, p):
    """Per-target-token CE and forward KL(p_teacher || q_student), every segment run alone
    through the plain transformers forward (no position ids, no packing)."""
    ce, kd = torch.zeros(x.shape, dtype=torch.float64), torch.zeros(x.shape, dtype=torch.float64)
    for r in range(len(x)):
        for a, b in segments(p[r]):
            ids = x[r:r + 1, a:b]
            s = F.log_softmax(student(ids).logits[0], -1)
            t = F.log_softmax(teacher(ids).logits[0], -1)
            for i in range(1, b - a):
                ce[r, a + i] = -s[i - 1, ids[0, i]]
                kd[r, a + i] = (t[i - 1].exp() * (t[i - 1] - s[i - 1])).sum()
    return ce * m, kd * m


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_equal_documents_run_one_by_one(arch, attention):
    from distill.lm.models import hidden_states

    student, teacher = model(arch, attention, 0), model(arch, attention, 1)
    enc = [(d, [1] * len(d)) for d in documents()]
    x, m, p = (torch.from_numpy(a) for a in pack(enc, length=12))
    assert (p == 0).sum() > len(x)  # some rows hold several documents
    ce_ref, kd_ref = reference_token_losses(student, teacher, x, m, p)
    s = F.log_softmax(student.lm_head(hidden_states(student, x, p)), -1)
    t = F.log_softmax(teacher.lm_head(hidden_states(teacher, x, p)), -1)
    ce = torch.zeros_like(ce_ref)
    ce[:, 1:] = -s[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    kd = torch.zeros_like(kd_ref)
    kd[:, 1:] = (t[:, :-1].exp() * (t[:, :-1] - s[:, :-1])).sum(-1)
    torch.testing.assert_close(ce * m, ce_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(kd * m, kd_ref, rtol=0, atol=1e-5)
    # without the position ids the same rows would attend across documents
    s_flat = F.log_softmax(student.lm_head(hidden_states(student, x)), -1)
    assert not torch.allclose(s_flat, s, atol=1e-3)

    # the training step (student and live teacher) and the evaluation see the same numbers
    distiller = lm_distiller(teacher, student, {"kd": (ForwardKL(), 1.0)}, ce_weight=0.5)
    batch = Batch(x, mask=m, index=torch.arange(len(x)), positions=p)
    out = distiller(batch)
    n = m[:, 1:].sum()
    assert out.loss.item() == pytest.approx(((0.5 * ce_ref + kd_ref).sum() / n).item(), rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx((kd_ref.sum() / n).item(), rel=1e-5)
    loader = TensorLoader(x, m, 4, y_is_mask=True, positions=p)
    assert next(iter(loader)).positions.tolist() == p[:4].tolist()
    assert evaluate_lm(student, loader, "cpu")["loss"] == pytest.approx((ce_ref.sum() / n).item(), rel=1e-5)
    check_isolation(student, "student", x, p)  # transformers isolates them itself: no error


def test_offline_store_uses_positions_and_changes_with_packing(tmp_path):
    teacher = model("gpt2", "sdpa", 1)
    enc = [(d, [1] * len(d)) for d in documents()]
    x, m, p = (torch.from_numpy(a) for a in pack(enc, length=12))
    packed = TensorLoader(x, m, 4, y_is_mask=True, positions=p)
    store, _ = open_topk_store(teacher, packed, k=4, T=1.0, storage="disk", path=tmp_path, device="cpu")
    # use_cache=False: with a cache, transformers builds no per-document mask from position ids
    logits = teacher(x, position_ids=p, use_cache=False).logits[:, :-1]
    expected = torch.log_softmax(logits.float(), -1).topk(4, dim=-1).values
    torch.testing.assert_close(store.logp.float(), expected, atol=2e-3, rtol=0)
    # the same ids with plain positions are other data: the store is not reused
    plain = TensorLoader(x, m, 4, y_is_mask=True)
    assert plain.data_digest() != packed.data_digest()
    with pytest.warns(UserWarning, match=r"stale \(data_sha256\): rebuilding"):
        _, why = open_topk_store(teacher, plain, k=4, T=1.0, storage="disk", path=tmp_path, device="cpu")
    assert f"0 of {len(x)} rows reused" in why


def test_a_model_that_ignores_position_ids_is_refused(monkeypatch):
    """check_isolation compares a packed document with its run alone; a forward that drops the
    position ids (as a model that builds no packed mask would) lets documents mix."""
    student = model("gpt2", "sdpa", 0)
    enc = [(d, [1] * len(d)) for d in documents()]
    x, _, p = (torch.from_numpy(a) for a in pack(enc, length=12))
    real = packing.hidden_states
    monkeypatch.setattr(packing, "hidden_states", lambda mdl, ids, positions=None: real(mdl, ids))
    with pytest.raises(DistillError, match="attend to each other.*data.packing=false"):
        check_isolation(student, "student", x, p)


def test_on_policy_prompts_stay_in_the_first_document():
    x, m, p = (torch.from_numpy(a) for a in pack([([1, 2, 3], [1] * 3), ([4, 5, 6, 7, 8], [1] * 5)], 8))
    sampler = OnPolicy(1.0, 1.0, 4, prompt_tokens=6, eos_id=0, pad_id=0)
    assert sampler.prompts(x, m, p)[0].tolist() == [1, 2, 3]  # not into the document 4 5 6 ...
    assert sampler.prompts(x, m)[0].tolist() == [1, 2, 3, 4, 5, 6]  # unpacked rows: as before


# ---------------------------------------------------------------- end to end


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    return path


ARGS = ["task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
        "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
        "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
        "train.epochs=2", "train.lr=0.01", "teacher.train.epochs=1", "stages=[teacher,distill]",
        "train.deterministic=true", "train.threads=1", "--quiet", "--no-report"]


def test_packed_rows_from_the_config_carry_positions(tmp_path):
    cfg = load_config(None, ["task=language_model", "data.name=text", f"data.path={_text(tmp_path)}",
                             "data.max_length=32"]).data
    data = build_lm_data(cfg)
    assert data.counts["packing"] == 1
    b = next(iter(data.train))
    assert b.positions is not None and b.positions.shape == b.inputs.shape
    eos = ByteTokenizer.eos_token_id
    x, pos = data.train.x.numpy(), data.train.positions.numpy()
    after_eos = np.zeros_like(x, dtype=bool)
    after_eos[:, 1:] = x[:, :-1] == eos  # paragraphs end with <eos>: the next token starts one
    assert ((pos == 0) == (after_eos | (np.arange(x.shape[1]) == 0))).all()
    assert not data.train.y.numpy()[pos == 0].any()  # no document's first token is a target
    # the data's fingerprint (checked on resume) changes with the packing
    assert fingerprint(data) != fingerprint(build_lm_data(cfg.model_copy(update={"packing": False})))
    assert fingerprint(data) == fingerprint(build_lm_data(cfg))


def test_packed_run_trains_and_resumes_exactly_after_a_stop(tmp_path, monkeypatch):
    text = _text(tmp_path)
    ref = tmp_path / "ref"
    assert main(["run", *ARGS, f"data.path={text}", "--out", str(ref)]) == 0
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["data"]["packing"] == 1
    assert summary["stages"]["distill"]["val_ppl"] < 258  # better than uniform over bytes

    calls = {"distill": 0}
    real_step = TokenPart.step

    def step(self, distiller, batch, teacher):
        if distiller.teacher is not None or teacher is not None:  # the distill stage
            calls["distill"] += 1
            if calls["distill"] == 13:  # in its second epoch
                runtime.request_stop()
        return real_step(self, distiller, batch, teacher)

    monkeypatch.setattr(TokenPart, "step", step)
    out = tmp_path / "run"
    assert main(["run", *ARGS, f"data.path={text}", "--out", str(out)]) == 130
    assert not (out / "summary.json").exists()
    monkeypatch.undo()
    assert main(["run", "--quiet", "--resume", str(out)]) == 0
    for stem in ("teacher", "distill", "distill-last"):
        assert (ref / f"{stem}.safetensors").read_bytes() == (out / f"{stem}.safetensors").read_bytes(), stem
