"""Feature capture keeps a module's true output when a later op changes it in place (issue 13)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.hooks import FeatureCapture
from distill.models import create_model


def _set_inplace(model: nn.Module, inplace: bool) -> nn.Module:
    # The zoo's ReLUs are out-of-place; RepDistiller's and torchvision's (and most user models)
    # are in-place, which is what overwrote captured BN outputs.
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = inplace
    return model


def _resnet(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return _set_inplace(create_model("resnet8", num_classes=10, in_shape=(3, 32, 32)), inplace)


def _reference_hooks(model: nn.Module, paths: list[str]) -> dict[str, torch.Tensor]:
    """Clones of the outputs at `paths`, taken before any later op can touch them."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for path in paths:
        modules[path].register_forward_hook(lambda m, i, o, p=path: seen.__setitem__(p, o.detach().clone()))
    return seen


PATHS = ["bn1", "layer1.0.bn1", "layer2.0.bn1"]


@pytest.mark.parametrize("train", [True, False])
def test_resnet_bn_before_inplace_relu_is_captured_before_the_relu(train):
    model = _resnet(inplace=True).train(train)
    reference = _reference_hooks(model, PATHS)
    capture = FeatureCapture(model, PATHS)
    for step in range(3):  # the first run learns which paths are mutated; later runs must agree
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        _, feats = capture.run(model, x)
        for path in PATHS:
            assert torch.equal(feats[path], reference[path]), (step, path)
            assert feats[path].min() < 0, (step, path)  # a BN output, not a ReLU output


@pytest.mark.parametrize("train", [True, False])
def test_gradients_through_a_feature_of_an_inplace_model_match_the_out_of_place_model(train):
    models = [_resnet(inplace=True).train(train), _resnet(inplace=False).train(train)]
    grads = []
    for model in models:
        capture = FeatureCapture(model, PATHS)
        for step in range(2):  # first run (clone and watch) and a steady-state run
            model.zero_grad()
            x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
            out, feats = capture.run(model, x)
            loss = out.logsumexp(1).mean() + sum(f.pow(2).mean() for f in feats.values())
            loss.backward()  # no "modified by an inplace operation" error
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_inplace, g_plain in zip(*grads, strict=True):
        torch.testing.assert_close(g_inplace, g_plain)
    assert models[0].conv1.weight.grad.abs().sum() > 0


def test_teacher_features_under_no_grad_and_inference_mode():
    teacher = _resnet(inplace=True).eval()
    reference = _reference_hooks(teacher, PATHS)
    capture = FeatureCapture(teacher, PATHS, "teacher")
    x = torch.randn(4, 3, 32, 32)
    for context in (torch.no_grad, torch.no_grad, torch.inference_mode, torch.inference_mode):
        with context():
            _, feats = capture.run(teacher, x)
        for path in PATHS:
            assert torch.equal(feats[path], reference[path]), (context, path)


def _user_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 3))


def test_user_sequential_bn_then_inplace_relu():
    model = _user_model()
    capture = FeatureCapture(model, ["1", "2:input", "2"])
    for _ in range(2):
        x = torch.randn(16, 4)
        with torch.no_grad():
            bn = nn.functional.batch_norm(model[0](x), None, None, model[1].weight, model[1].bias, training=True)
        out, feats = capture.run(model, x)
        torch.testing.assert_close(feats["1"], bn)
        assert feats["1"].min() < 0
        assert torch.equal(feats["2:input"], feats["1"])  # ReLU's input, before it changed it
        assert torch.equal(feats["2"], bn.clamp(min=0))  # its output is post-ReLU, rightly
        assert torch.equal(model[3](feats["2"]), out)


def test_an_unmutated_capture_is_the_output_itself_after_the_first_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    linear, relu = [], []
    model[0].register_forward_hook(lambda m, i, o: linear.append(o))
    model[1].register_forward_hook(lambda m, i, o: relu.append(o))
    capture = FeatureCapture(model, ["0", "2:input"])
    for _ in range(3):
        _, feats = capture.run(model, torch.randn(2, 4))
        assert torch.equal(feats["0"], linear[-1]) and torch.equal(feats["2:input"], relu[-1])
    # No copy once a path is known to be left alone: the very tensors the model made.
    assert feats["0"] is linear[-1] and feats["2:input"] is relu[-1]


class Flaky(nn.Module):
    """Changes `lin`'s output in place only when told to: data-dependent control flow."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.mutate = False

    def forward(self, x):
        y = self.lin(x)
        if self.mutate:
            y.relu_()
        return y.sum(1)


def test_a_capture_mutated_only_on_a_later_run_is_an_error_naming_the_fix():
    model = Flaky()
    capture = FeatureCapture(model, ["lin"], "student")
    capture.run(model, torch.randn(2, 4))  # not mutated: the path stops being copied
    model.mutate = True
    with pytest.raises(DistillError, match=r"student's module 'lin'.*inplace=False"):
        capture.run(model, torch.randn(2, 4))


def test_a_capture_that_stops_being_mutated_stays_correct():
    model = Flaky()
    model.mutate = True
    capture = FeatureCapture(model, ["lin"])
    for mutate in (True, False, True):
        model.mutate = mutate
        x = torch.randn(2, 4)
        _, feats = capture.run(model, x)
        torch.testing.assert_close(feats["lin"], model.lin(x))


def test_inplace_dropout_mutates_only_in_train_mode():
    # The setup probe runs in eval mode, where Dropout(inplace=True) is the identity; training
    # must not then be refused: what was learned in eval mode does not bind train mode.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5, inplace=True), nn.Linear(8, 3))
    capture = FeatureCapture(model, ["0"])
    model.eval()
    capture.run(model, torch.randn(16, 4))
    model.train()
    for _ in range(2):
        x = torch.randn(16, 4)
        _, feats = capture.run(model, x)
        torch.testing.assert_close(feats["0"], model[0](x))

