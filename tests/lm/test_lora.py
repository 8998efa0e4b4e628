"""LoRA students (student.lora, distill.lm.lora): only the adapters train, are optimized and are
saved; the base is rebuilt and checked on every load; a merged export reproduces the adapted
model; a stop + --resume equals an uninterrupted run; bad configs are refused. Tiny GPT-2 /
Llama models and a local corpus, nothing downloaded."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import distill.engine  # noqa: E402
from distill.checkpoint import Checkpointer  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.data.loader import TensorLoader  # noqa: E402
from distill.engine import fit, prepare  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm.distiller import lm_distiller  # noqa: E402
from distill.lm.lora import DIGEST_KEY, create_student  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.lm.tools import load_run  # noqa: E402
from distill.lora_schema import LMStudentConfig  # noqa: E402

V = 40
GPT = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
       "attn_pdrop": 0.0}
LLAMA = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 32}


def student(lora: dict, model: str = "gpt2", kwargs: dict = GPT, seed: int = 0):
    return create_student(LMStudentConfig(model=model, kwargs=kwargs, lora=lora), V, None, seed)


def rows(n=8, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[:, :2] = 0
    return ids, mask


def test_adapters_are_the_only_trainable_optimized_and_moving_parameters():
    """GPT-2 with one block and all-linear, r=4: c_attn 16->48, attn.c_proj 16->16, c_fc 16->64,
    mlp.c_proj 64->16; each adds r * (in + out) weights: 4 * (64 + 32 + 80 + 80) = 1024."""
    model = student({"r": 4, "alpha": 8})
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == 1024
    assert all(re.search(r"\.lora_[AB]\.", n) for n in trainable) and len(trainable) == 8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = rows()
    loader = TensorLoader(ids, mask, 4, y_is_mask=True)
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=0.05, weight_decay=0.1, schedule="constant")
    distiller = lm_distiller(None, model, {}, 1.0)
    optimizer = prepare(distiller, loader, cfg, torch.device("cpu"), None).optimizer
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in trainable.values()}
    fit(distiller, loader, loader, cfg, "cpu")
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name  # B starts at 0: it must have moved
        else:
            assert torch.equal(param, before[name]), name  # the frozen base, bit for bit


def test_llama_targets_by_name():
    """q_proj 16->16 and v_proj 16->8 (one key/value head of 8): r=2 adds 2*32 + 2*24 = 112."""
    model = student({"r": 2, "target_modules": ["q_proj", "v_proj"]}, "llama", LLAMA)
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 112
    assert [n.split(".")[4] for n in names] == ["q_proj", "q_proj", "v_proj", "v_proj"]


def test_state_dict_is_the_adapters_and_rebuilds_the_same_base():
    """A from-kwargs base is built under the seed: a rebuild in another RNG state is the same
    base, and loading the adapters gives the same model (the same logits)."""
    model = student({"r": 4})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # non-zero adapters: the model differs from its base
    state = model.state_dict()
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad} | {DIGEST_KEY}
    torch.manual_seed(123)  # another global RNG state: the base must not depend on it
    again = student({"r": 4})
    again.load_state_dict(state)
    ids, _ = rows(2)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
        plain = create_lm("gpt2", GPT, V)
        assert (plain(ids).logits - model(ids).logits).abs().max() > 1e-3
    other = student({"r": 4}, seed=1)  # another base
    with pytest.raises(DistillError, match="the base changed"):
        other.load_state_dict(state)
    with pytest.raises(DistillError, match="no record of a LoRA base"):
        again.load_state_dict({k: v for k, v in state.items() if k != DIGEST_KEY})


def test_a_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(DistillError, match=r"pip install 'distill\[lora\]'"):
        student({"r": 4})


# ---------------------------------------------------------------- runs from the command line


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    return path


def _base(tmp_path: Path, seed: int = 0) -> Path:
    """A pretrained-looking base: a GPT-2 over the byte tokenizer's 258 ids, save_pretrained."""
    folder = tmp_path / "base"
    torch.manual_seed(seed)
    create_lm("gpt2", GPT, 258).save_pretrained(str(folder))
    return folder


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "task=language_model", "data.name=text", f"data.path={_corpus(tmp_path)}",
            "data.max_length=32", "data.batch_size=8", f"student.model={_base(tmp_path)}", "student.kwargs={}",
            "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}", "teacher.train.epochs=1",
            "train.epochs=2", "train.lr=0.01", "student.lora.r=4", "student.lora.dropout=0.1",
            "train.threads=1", "train.checkpoint_every=2 steps", "--quiet", "--no-report", *extra]


def _adapters(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


ADAPTER_KEY = re.compile(r"transformer\.h\.0\.(attn|mlp)\.(c_attn|c_proj|c_fc)\.lora_[AB]\.default\.weight")


def test_a_stopped_run_resumes_to_the_uninterrupted_one_and_saves_only_adapters(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert main([*_args(tmp_path), "--out", str(whole)]) == 0
    out, calls, seen = tmp_path / "run", iter(range(10**6)), {}
    real_save = Checkpointer.save

    def save(self, *args, **kwargs):  # the checkpoint files, read as they are written
        real_save(self, *args, **kwargs)
        pointer = json.loads((self.dir / "checkpoint.json").read_text())
        seen[self.stage] = set(_adapters(self.dir / f"{pointer['stem']}.safetensors"))

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        # a stop request in the distill stage's second epoch (7 steps an epoch, a checkpoint every 2)
        m.setattr(distill.engine, "stop_requested", lambda: "distill" in seen and next(calls) == 6)
        assert main([*_args(tmp_path), "--out", str(out)]) == 130
    assert (out / "checkpoint.json").is_file() and "distill" in seen
    for stage in ("scratch", "distill"):
        parts = {k.split(".", 1)[0] for k in seen[stage]}
        assert parts == {"model", "best"}
        names = {k.split(".", 2)[2] for k in seen[stage]}  # model.student.<key>, best.student.<key>
        assert {n for n in names if not ADAPTER_KEY.fullmatch(n)} == {DIGEST_KEY}
        assert len(names) == 9
    assert main(["run", "--resume", str(out), "--quiet", "--no-report"]) == 0
    for name in ("scratch", "scratch-last", "distill", "distill-last"):
        a, b = _adapters(whole / f"{name}.safetensors"), _adapters(out / f"{name}.safetensors")
        assert set(a) == set(b) and len(a) == 9
        assert all(ADAPTER_KEY.fullmatch(k) for k in a if k != DIGEST_KEY)
        assert all(torch.equal(a[k], b[k]) for k in a), name  # same process count, same threads
    # the teacher is no LoRA model: its file holds all its weights
    assert any("wte" in k for k in _adapters(out / "teacher.safetensors"))


def test_merged_export_reproduces_the_adapted_model_and_a_changed_base_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_args(tmp_path, "stages=[scratch]", "train.epochs=1"), "--out", str(out)]) == 0
    assert main(["export", str(out), "--format", "hf", "--stage", "scratch"]) == 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(out / "scratch-hf"), local_files_only=True).eval()
    assert not any("lora" in k for k in exported.state_dict())  # a plain transformers model
    adapted, data = load_run(out, "scratch")
    ids = next(iter(data.test)).inputs[:4]
    with torch.no_grad():
        expected, got = adapted(ids).logits, exported(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), local_files_only=True).eval()(ids).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (base - expected).abs().max() > 1e-4  # the adapters trained: merging them mattered
    assert main(["eval", str(out)]) == 0
    capsys.readouterr()
    _base(tmp_path, seed=1)  # the base folder replaced by another model
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the base changed" in err and str(tmp_path / "base") in err


@pytest.mark.parametrize("overrides, message", [
    (["student.lora.r=0"], "student.lora.r"),
    (["student.lora.alpha=0"], "student.lora.alpha"),
    (["student.lora.dropout=1"], "less than 1"),
    (["student.lora.target_modules=[]"], "name at least one layer"),
    (["student.lora.target_modules=c_attn"], "give a list of layer names"),
    (["student.lora.target_modules=[c_atn]"], "'c_atn', which is no module of the student. Its linear "
                                             "layers are named c_attn, c_fc, c_proj"),
    (["student.lora.target_modules=[lm_head]"], "'lm_head' is the output layer"),
    (["student.lora.target_modules=[ln_1]"], "is a LayerNorm"),
    (["student.lora.rank=4"], "Valid keys there: r, alpha, dropout, target_modules"),
    (["teacher.lora.r=4"], "Unknown key 'lora' under 'teacher'"),
    (["student.checkpoint=corpus.txt"], "student.checkpoint would replace that base"),
])
def test_bad_lora_configs_exit_2(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    assert main([*_args(tmp_path, "stages=[scratch]"), *overrides, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not (out / "summary.json").exists()


def test_a_classifier_run_refuses_student_lora(tmp_path, capsys):
    assert main(["run", "student.lora.r=4", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Unknown key 'lora' under 'student'" in err and "task=classification runs do not read it" in err


def test_chunked_loss_under_a_frozen_output_layer_gives_the_same_hidden_gradient():
    """A LoRA student's output layer is frozen: the chunked loss skips dW, and dh is unchanged
    (against the loss on full logits)."""
    import torch.nn.functional as F

    from distill.lm.chunked import Head, token_loss

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(10, 6, generator=g), torch.randn(V, 6, generator=g)
    targets = torch.randint(0, V, (10,), generator=g)
    h = hidden.clone().requires_grad_()
    loss, _ = token_loss(h, Head(weight), targets, count=torch.tensor(10), terms={}, weights={"ce": 1.0},
                         chunk=3)
    loss.backward()
    ref = hidden.clone().requires_grad_()
    F.cross_entropy(ref @ weight.T, targets).backward()
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets))
    torch.testing.assert_close(h.grad, ref.grad)
    assert weight.grad is None
