"""The model zoo: every builder builds, runs, has the reference's parameter count and hook paths."""

from __future__ import annotations

import pytest
import torch

from distill.models.resnet_cifar import CifarResNet
from distill.models.wrn import WideResNet
from distill.models.zoo import REFERENCE_NUM_CLASSES, REFERENCE_PARAMS, ZOO

EXPECTED_NAMES = [
    "deepnn", "lightnn",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenetv2", "shufflenetv1", "shufflenetv2",
]  # fmt: skip

RESNETS = [n for n in ZOO if n.startswith("resnet")]

# The documented paths, spelled out here so that renaming a submodule fails a test.
_RESNET = ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
_WRN = ["conv1", "block1", "block2", "block3", "bn1", "relu", "avgpool", "fc"]
_VGG = [f"{p}{i}" for p in ("block", "relu", "pool") for i in range(5)] + ["classifier"]
DOCUMENTED_PATHS = {
    "deepnn": ["features", "features.4", "classifier", "classifier.1", "classifier.3"],
    "lightnn": ["features", "features.2", "classifier", "classifier.1", "classifier.3"],
    **{n: _RESNET for n in RESNETS},
    **{n: _WRN for n in ZOO if n.startswith("wrn")},
    **{n: _VGG for n in ZOO if n.startswith("vgg")},
    "mobilenetv2": ["conv1", *(f"blocks.{i}" for i in range(7)), "conv2", "avgpool", "classifier"],
    "shufflenetv1": ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "linear"],
    "shufflenetv2": [
        "conv1", "bn1", "relu", "layer1", "layer2", "layer3",
        "conv2", "bn2", "relu2", "avgpool", "linear",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def build():
    """name -> the 3x32x32, CIFAR-100 model in eval mode, built once for this module."""
    cache: dict[str, torch.nn.Module] = {}

    def make(name: str) -> torch.nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = ZOO[name](in_shape=(3, 32, 32), num_classes=100).eval()
        return cache[name]

    yield make
    cache.clear()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_names():
    assert list(ZOO) == EXPECTED_NAMES
    assert set(REFERENCE_PARAMS) == set(ZOO) == set(REFERENCE_NUM_CLASSES)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_forward_cifar100(build, name):
    model = build(name)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_parameter_count_matches_reference(build, name):
    k = REFERENCE_NUM_CLASSES[name]
    model = build(name) if k == 100 else ZOO[name](in_shape=(3, 32, 32), num_classes=k)
    assert n_params(model) == REFERENCE_PARAMS[name]


def test_tutorial_counts_are_the_tutorials():
    assert REFERENCE_NUM_CLASSES["deepnn"] == REFERENCE_NUM_CLASSES["lightnn"] == 10
    assert REFERENCE_PARAMS["deepnn"] == 1_186_986
    assert REFERENCE_PARAMS["lightnn"] == 267_738


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_documented_hook_paths_exist_and_fire(build, name):
    model = build(name)
    modules = dict(model.named_modules())
    assert set(DOCUMENTED_PATHS[name]) <= set(modules)
    assert set(model.hook_paths) <= set(modules)
    assert set(model.feature_paths) <= set(model.hook_paths)

    seen: dict[str, list[torch.Tensor]] = {p: [] for p in model.hook_paths}
    handles = [
        modules[p].register_forward_hook(lambda _m, _i, out, p=p: seen[p].append(out))
        for p in model.hook_paths
    ]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    for path, outs in seen.items():
        assert len(outs) == 1, f"{path} ran {len(outs)} times"
        assert isinstance(outs[0], torch.Tensor) and outs[0].shape[0] == 2, path
    # feature maps go deeper and (weakly) smaller
    sizes = [seen[p][0].shape[-1] for p in model.feature_paths]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("resnet8", [(16, 32), (16, 32), (32, 16), (64, 8)]),
        ("resnet32x4", [(32, 32), (64, 32), (128, 16), (256, 8)]),
        ("wrn_40_2", [(16, 32), (32, 32), (64, 16), (128, 8)]),
        ("vgg8", [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)]),
        ("mobilenetv2", [(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)]),
        ("shufflenetv1", [(24, 32), (240, 16), (480, 8), (960, 4)]),
        ("shufflenetv2", [(24, 32), (116, 16), (232, 8), (464, 4)]),
    ],
)
def test_feature_shapes(build, name, shapes):
    model = build(name)
    modules = dict(model.named_modules())
    got = []
    handles = [
        modules[p].register_forward_hook(lambda _m, _i, out: got.append(tuple(out.shape[1:3])))
        for p in model.feature_paths
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert got == shapes


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_single_channel_input(name):
    model = ZOO[name](in_shape=(1, 32, 32), num_classes=100).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 100)  # adaptive pooling


@pytest.mark.parametrize("name", ["deepnn", "lightnn", "wrn_16_1", "vgg8", "shufflenetv2"])
def test_other_input_shapes(name):
    model = ZOO[name](in_shape=(1, 28, 28), num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_uses_pool3_for_64_pixel_inputs():
    model = ZOO["vgg8"](in_shape=(3, 64, 64), num_classes=10).eval()
    got = []
    model.block4.register_forward_hook(lambda _m, _i, out: got.append(out.shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert got == [4]  # 64 -> 32 -> 16 -> 8 -> pool3 -> 4, as in the reference


def test_tutorial_state_dict_keys():
    keys = list(ZOO["deepnn"](in_shape=(3, 32, 32), num_classes=10).state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "classifier.3.bias"
    assert len(keys) == 12  # 4 convs + 2 linears, weight and bias each


def test_bad_arguments():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet((3, 32, 32), 10, depth=9)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet((3, 32, 32), 10, depth=12, widen_factor=1)
    with pytest.raises(ValueError, match="in_shape"):
        ZOO["wrn_16_1"](in_shape=(32, 32), num_classes=10)
    with pytest.raises(TypeError):
        ZOO["resnet8"](in_shape=(3, 32, 32), num_classes=10, nonsense=1)
