"""Hugging Face classifiers as distill models: hf_image from a config, save_pretrained folders,
the refusals (wrong head, pickle weights, unknown config keys), builders that take neither
num_classes nor in_shape, and one `distill run` with a feature term on ViT layers."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest
import torch

from distill.cli import main
from distill.errors import DistillError
from distill.models import count_flops, count_parameters, create_model, create_skeleton
from distill.models.hf import from_config, is_hf_folder, load_pretrained, transformers_module
from distill.models.outputs import logits_of

pytest.importorskip("transformers")  # the extra distill[lm]; distill.models.hf imports it lazily

SHAPE = (1, 8, 8)
TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "patch_size": 2}


def tiny_vit(num_classes: int = 10, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("hf_image", num_classes, SHAPE, **{**TINY, **overrides})


@pytest.fixture
def saved(tmp_path):
    """(model, folder): a tiny ViT written by save_pretrained."""
    model = tiny_vit()
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    return model, folder


def test_hf_image_builds_a_classifier_for_the_data():
    model = tiny_vit(num_classes=7)
    out = model(torch.randn(4, *SHAPE))
    assert logits_of(out).shape == (4, 7)
    assert (model.config.num_channels, model.config.image_size) == (1, 8)
    assert model.config._attn_implementation == "eager"


def test_the_same_seed_builds_the_same_weights():
    a, b, c = tiny_vit(seed=0), tiny_vit(seed=0), tiny_vit(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_a_save_pretrained_folder_loads_with_the_same_logits(saved):
    model, folder = saved
    assert is_hf_folder(str(folder)) and not is_hf_folder(str(folder.parent))
    loaded = create_model(str(folder), 10, SHAPE)
    x = torch.randn(3, *SHAPE)
    assert torch.equal(model.eval()(x).logits, loaded.eval()(x).logits)


def test_a_folder_with_another_class_count_is_refused(saved):
    _, folder = saved
    with pytest.raises(DistillError, match="has 10 output labels .* the data has 3 classes"):
        create_model(str(folder), 3, SHAPE)


def test_a_folder_takes_no_kwargs(saved):
    with pytest.raises(DistillError, match="takes no kwargs"):
        create_model(str(saved[1]), 10, SHAPE, hidden_size=8)


def test_pickle_only_weights_need_trust(saved, tmp_path):
    model, folder = saved
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(DistillError, match="pickle .*--trust-checkpoint"):
        create_model(str(pickled), 10, SHAPE)
    trusted = create_model(str(pickled), 10, SHAPE, trust_checkpoint=True)
    x = torch.randn(2, *SHAPE)
    assert torch.equal(model.eval()(x).logits, trusted.eval()(x).logits)


def test_a_folder_without_the_classification_head_is_refused(tmp_path):
    tf = transformers_module()
    base = tf.ViTModel(tf.ViTConfig(**TINY, image_size=8, num_channels=1))  # no classifier; 2 labels
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(DistillError, match="would start random .*classifier"):
        load_pretrained(str(tmp_path / "base"), "AutoModelForImageClassification", 2, "teacher")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hidden_sise": 16}, "kwargs.hidden_sise is not a field of the vit config .*hidden_size"),
    ({"num_labels": 3}, "kwargs.num_labels is set by distill"),
    ({"patch_size": 3}, "patch_size 3 does not tile .* 8x8"),
    ({"model_type": "vitt"}, "Unknown kwargs.model_type 'vitt'.*vit"),
    ({"hidden_size": "wide"}, "Cannot build a vit AutoModelForImageClassification .*hidden_size"),
])
def test_bad_config_kwargs_are_refused(kwargs, message):
    with pytest.raises(DistillError, match=message):
        create_model("hf_image", 10, SHAPE, **{**TINY, **kwargs})


def test_a_model_type_without_an_image_head_is_refused():
    with pytest.raises(DistillError, match="no AutoModelForImageClassification for model_type 'gpt2'"):
        create_model("hf_image", 10, SHAPE, model_type="gpt2", n_layer=1)


def test_from_config_needs_a_model_type():
    with pytest.raises(DistillError, match="needs kwargs.model_type .*vit"):
        from_config("AutoModelForImageClassification", {"hidden_size": 16}, num_labels=2)


@pytest.mark.parametrize("shape", [(1, 8, 9), (64,)])
def test_hf_image_takes_square_images_only(shape):
    with pytest.raises(DistillError, match="square images"):
        create_model("hf_image", 10, shape, **TINY)


def test_skeleton_and_flops_match_the_real_model():
    real = tiny_vit()
    skeleton = create_skeleton("hf_image", 10, SHAPE, **TINY)
    assert next(skeleton.parameters()).is_meta
    assert count_parameters(skeleton) == count_parameters(real)
    assert count_flops(skeleton, SHAPE) == count_flops(real, SHAPE) > 0


BUILDERS = """
import torch
calls = []

def timm_style(num_classes=10, pretrained=False):
    calls.append({"num_classes": num_classes, "pretrained": pretrained})
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))

def anything(**kw):
    calls.append(kw)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, kw["num_classes"]))

def fixed(width=4):
    calls.append({"width": width})
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width))
"""


@pytest.fixture
def builders(tmp_path, monkeypatch):
    (tmp_path / "hfbuilders.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    import hfbuilders

    yield hfbuilders
    sys.modules.pop("hfbuilders", None)


def test_a_builder_gets_only_the_arguments_it_takes(builders):
    create_model("hfbuilders:timm_style", 5, SHAPE, pretrained=False)
    create_model("hfbuilders:anything", 5, SHAPE, depth=2)
    create_model("hfbuilders:fixed", 5, SHAPE, width=5)
    assert builders.calls == [{"num_classes": 5, "pretrained": False},
                              {"in_shape": SHAPE, "num_classes": 5, "depth": 2},
                              {"width": 5}]


def _layer(model: torch.nn.Module, i: int) -> str:
    """Transformer layer i's module path (vit.layers.i in transformers 5, vit.encoder.layer.i before)."""
    return next(n for n, _ in model.named_modules() if n.endswith((f".layers.{i}", f".layer.{i}")))


def test_distill_run_with_hf_teacher_and_student_and_a_feature_term(tmp_path, capsys):
    teacher = {**TINY, "hidden_size": 32, "intermediate_size": 64}
    path_s, path_t = _layer(tiny_vit(), 1), _layer(tiny_vit(), 1)
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--quiet", "--no-report", "train.epochs=1", "train.threads=1",
               "data.batch_size=128", "teacher.model=hf_image", f"teacher.kwargs={json.dumps(teacher)}",
               "student.model=hf_image", f"student.kwargs={json.dumps(TINY)}",
               f"loss.hint={{type: cosine, weight: 1.0, student: {path_s}, teacher: {path_t}}}"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"teacher", "scratch", "distill"}
    assert summary["stages"]["distill"]["params"] == count_parameters(tiny_vit())
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("hint" in json.dumps(r) for r in losses if r.get("stage") == "distill")


def test_a_saved_folder_is_a_ready_teacher_and_a_tuple_output_is_its_first_element(saved, tmp_path, capsys):
    """teacher.model=<save_pretrained folder> without a teacher stage distills from it as it is
    (eval and report read it back from the folder); a hooked module returning a tuple (an HF
    attention block: (hidden, weights)) gives its first element."""
    model, folder = saved
    attention = next(n for n, _ in model.named_modules() if n.endswith(".attention") and ".1." in n)
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--quiet", "train.epochs=1", "data.batch_size=128",
               f"teacher.model={folder}", "teacher.kwargs={}", "stages=[scratch,distill]",
               "student.model=hf_image", f"student.kwargs={json.dumps(TINY)}",
               f"loss.hint={{type: cosine, weight: 1.0, student: {attention}, teacher: {attention}}}"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["teacher"]["checkpoint"] == str(folder)
    from distill.report import evaluate_run

    ev = evaluate_run(out)
    assert "teacher" in ev["stages"] and "distill" in ev["stages"]


def test_distill_models_lists_the_zoo_without_transformers(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet8x4" in out and "distill[lm]" in out.replace("\n", "")
