"""The helpers the feature methods share (distill.losses.common)."""

import contextlib

import pytest
import torch

from distill.losses.common import (
    LayerPair,
    check_layer,
    check_same_batch,
    feature_shape,
    flat_shape,
    fp32_region,
    pool_to_common,
    teacher_mse,
)


def test_check_layer():
    assert check_layer("student", "layer2") == "layer2"
    for bad in ("", None, 2, ["layer2"]):
        with pytest.raises(ValueError, match="teacher must be a non-empty module path"):
            check_layer("teacher", bad)


def test_layer_pair_declares_its_layers():
    pair = LayerPair("blocks.0", "layer3")
    assert (pair.student, pair.teacher) == ("blocks.0", "layer3")
    assert pair.student_layers == ["blocks.0"] and pair.teacher_layers == ["layer3"]
    assert repr(pair) == "LayerPair(student='blocks.0', teacher='layer3')"


def test_fp32_region_switches_autocast_off():
    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
        with fp32_region(x):
            assert (x @ x).dtype == torch.float32
    # a device type autocast does not know: nothing to switch off
    assert isinstance(fp32_region(torch.zeros(1, device="meta")), contextlib.nullcontext)


def test_feature_shape_and_flat_shape():
    shapes = {"layer1": [8, 4, 2, 2]}
    assert feature_shape(shapes, "layer1", "student") == (8, 4, 2, 2)
    assert flat_shape((8, 4, 2, 2)) == (8, 16) and flat_shape((8, 5)) == (8, 5)
    with pytest.raises(ValueError, match=r"no teacher feature 'layer2' was captured \(have: layer1\)"):
        feature_shape(shapes, "layer2", "teacher")
    with pytest.raises(ValueError, match=r"\(have: none\)"):
        feature_shape({}, "layer2", "teacher")


def test_check_same_batch():
    check_same_batch(torch.zeros(3, 2), torch.zeros(3, 5, 1, 1))
    with pytest.raises(ValueError, match=r"batches differ in size \(3 vs 4\)"):
        check_same_batch(torch.zeros(3, 2), torch.zeros(4, 2))


def test_pool_to_common():
    a, b = torch.randn(2, 3, 4, 2), torch.randn(2, 5, 2, 4)
    pa, pb = pool_to_common(a, b)
    assert pa.shape == (2, 3, 2, 2) and pb.shape == (2, 5, 2, 2)
    assert torch.allclose(pa[:, :, 0, 0], a[:, :, :2, 0].mean(dim=2))
    same = torch.randn(2, 3, 2, 2)
    assert pool_to_common(same, same)[0] is same  # equal sizes: untouched
    with pytest.raises(ValueError, match="4-D maps"):
        pool_to_common(torch.randn(2, 3, 4), torch.randn(2, 3, 2))


def test_teacher_mse():
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 4.0]], requires_grad=True)
    loss = teacher_mse(s, t, "f", "student")
    assert loss.item() == pytest.approx((1 + 4) / 2)
    loss.backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match=r"f needs equal shapes; got regressed \(1, 2\) and teacher \(1, 3\) \(hint\)"):
        teacher_mse(s, torch.zeros(1, 3), "f", "regressed", " (hint)")
