"""Feature capture by module path, and projectors sized from probed shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import KD, Distiller
from distill.config import TrainConfig
from distill.data.loader import TensorLoader
from distill.engine import fit
from distill.errors import DistillError
from distill.hooks import FeatureCapture, resolve_module
from distill.losses.fitnet import FitNet
from distill.models import create_model


def _cnn(channels=(4, 8)):
    torch.manual_seed(0)
    return create_model("cnn", 3, (1, 8, 8), channels=list(channels))


class Wrapper(nn.Module):
    """Stands in for DDP (`module.`) and torch.compile (`_orig_mod.`)."""

    def __init__(self, inner, attr):
        super().__init__()
        setattr(self, attr, inner)
        self.attr = attr

    def forward(self, x):
        return getattr(self, self.attr)(x)


def test_captures_outputs_and_inputs_by_path():
    model, x = _cnn(), torch.randn(2, 1, 8, 8)
    capture = FeatureCapture(model, ["layer1", "head:input"])
    out, feats = capture.run(model, x)
    assert feats["layer1"].shape == (2, 4, 4, 4)
    assert torch.equal(model.head(feats["head:input"]), out)  # the head's input, exactly


@pytest.mark.parametrize("attr", ["module", "_orig_mod"])
def test_paths_resolve_through_wrappers(attr):
    inner = _cnn()
    wrapped = Wrapper(inner, attr)
    assert resolve_module(wrapped, "layer2") is inner.layer2
    assert resolve_module(inner, f"{attr}.layer2") is inner.layer2
    _, feats = FeatureCapture(wrapped, ["layer2"]).run(wrapped, torch.randn(2, 1, 8, 8))
    assert feats["layer2"].shape == (2, 8, 2, 2)


def test_unknown_path_lists_the_nearest_names():
    with pytest.raises(DistillError, match=r"no module 'layr2'.*layer2"):
        FeatureCapture(_cnn(), ["layr2"], "student")


def test_a_module_called_twice_is_an_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Linear(4, 4)

        def forward(self, x):
            return self.block(self.block(x))

    model = Twice()
    capture = FeatureCapture(model, ["block"])
    with pytest.raises(DistillError, match="ran twice"):
        capture.run(model, torch.randn(2, 4))


def test_calls_outside_the_capture_record_nothing():
    model = _cnn()
    capture = FeatureCapture(model, ["layer1"])
    model(torch.randn(2, 1, 8, 8))
    model(torch.randn(2, 1, 8, 8))  # evaluation calls the model directly, twice: no error
    assert capture.features == {}


def test_projector_is_sized_from_probe_trained_and_saved():
    teacher, student = _cnn((8, 16)), _cnn((4, 8))
    fitnet = FitNet(student="layer2", teacher="layer2")
    distiller = Distiller(teacher, student, {"kd": (KD(), 0.9), "fitnet": (fitnet, 1.0)}, ce_weight=0.1)
    assert distiller.needs_setup
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 3, (64,))
    loader = TensorLoader(x, y, batch_size=16, shuffle=True)
    cfg = TrainConfig(epochs=2, lr=0.01, schedule="constant", checkpoint_every=0)
    fit(distiller, loader, TensorLoader(x, y, 64), cfg, "cpu")
    conv = fitnet.projector[0]
    assert tuple(conv.weight.shape) == (16, 8, 1, 1)  # student 8 channels -> teacher 16
    assert any(k.startswith("terms.fitnet.") for k in distiller.state_dict())  # saved with the student
    assert not any(k.startswith("teacher") for k in distiller.state_dict())  # the teacher is not
    assert conv.weight.grad is not None  # it was in the optimizer and received gradients
    assert all(p.grad is None for p in teacher.parameters())
