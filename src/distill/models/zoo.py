"""The model zoo: the PyTorch KD tutorial's CNNs and the CRD / RepDistiller CIFAR benchmark nets.

Every builder is called as `builder(in_shape=(C, H, W), num_classes=K, **kwargs)`. Each model
class documents its hookable submodule paths and lists them in `hook_paths` (stem, stages,
pooling, head) and `feature_paths` (the stage outputs a feature-distillation method hooks, as
in the reference's `is_feat` features).

`REFERENCE_PARAMS[name]` is the parameter count of the reference implementation for 3x32x32
inputs and `REFERENCE_NUM_CLASSES[name]` classes: 100 (CIFAR-100) for the RepDistiller nets,
counted by instantiating RepDistiller's `models/*.py` (mdistiller's `mdistiller/models/cifar`
holds the same architectures), and 10 (CIFAR-10) for the tutorial's `DeepNN` and `LightNN`,
whose counts the tutorial prints.
"""

from __future__ import annotations

from .mobilenetv2 import mobilenetv2
from .resnet_cifar import (
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from .shufflenet import shufflenetv1, shufflenetv2
from .tutorial import deepnn, lightnn
from .vgg import vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

ZOO = {
    "deepnn": deepnn,
    "lightnn": lightnn,
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "mobilenetv2": mobilenetv2,
    "shufflenetv1": shufflenetv1,
    "shufflenetv2": shufflenetv2,
}

REFERENCE_PARAMS = {
    # PyTorch tutorial "Knowledge Distillation Tutorial", CIFAR-10 (10 classes)
    "deepnn": 1_186_986,
    "lightnn": 267_738,
    # RepDistiller models/resnet.py, CIFAR-100
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    # RepDistiller models/wrn.py, CIFAR-100
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    # RepDistiller models/vgg.py (vgg*_bn), CIFAR-100
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    # RepDistiller models/mobilenetv2.py (mobile_half), CIFAR-100
    "mobilenetv2": 812_836,
    # RepDistiller models/ShuffleNetv1.py (ShuffleV1), models/ShuffleNetv2.py (ShuffleV2), CIFAR-100
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
}

REFERENCE_NUM_CLASSES = {name: 10 if name in ("deepnn", "lightnn") else 100 for name in ZOO}

__all__ = ["REFERENCE_NUM_CLASSES", "REFERENCE_PARAMS", "ZOO"]
