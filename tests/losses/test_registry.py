"""Checks every registered loss gets for free (timm-style): add a class to LOSSES and it is
built here with its defaults on a tiny pair of CNNs, wrapped in a Distiller and checked.

Where a method does not have a property on purpose, it is listed with the reason in the
allow-list of that check (a skip that says why); an allow-list entry must name a registered
loss. The per-method files hold the hand-worked values and what is specific to one method.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from distill import LOSSES, Distiller
from distill.contracts import Batch
from distill.distiller import Outputs
from distill.losses.transformer import MapsLayers
from distill.models.cnn import SmallCNN

IN_SHAPE, CLASSES, BATCH = (1, 8, 8), 10, 8
STUDENT_CHANNELS, TEACHER_CHANNELS = (4, 8), (8, 16)
# Feature maps: layer1 is (N, C1, 4, 4), layer2 is (N, C2, 2, 2). The same path on both sides
# gives different widths (projectors are built); layer1 -> layer2 also differs spatially.
PAIRS = [("layer2", "layer2"), ("layer1", "layer2")]

# Methods whose value is not 0 (or its known minimum) when the student is the teacher.
NOT_ZERO_WHEN_EQUAL = {
    "vid": "its minimum is not 0 (0.5 * mean log var remains for a perfect mean, as the log 2pi "
    "constant is dropped), and its randomly initialized mean network does not map the feature "
    "onto itself; test_vid.py checks the known minimum with an identity mean network",
    "crd": "contrastive: even identical embeddings score log(1 + sum_j exp((cos_ij - 1) / T)) > 0 "
    "against the other samples, and the two embedding heads are randomly initialized",
    "regressor": "its 3x3 conv regressor is always present (even for equal shapes) and randomly "
    "initialized, so equal features are not mapped onto each other; test_regressor.py checks "
    "0 with an identity regressor",
}
# Tolerance of the zero check where rounding is not the only departure from 0.
ZERO_TOLERANCE = {
    # The reference's eps = 1e-8 beside the norms of the centred probabilities:
    # rho = |a|^2 / (|a|^2 + eps) < 1, and near-uniform softmax rows have tiny |a|^2.
    "dist": 1e-3,
}
# Methods that are not a per-sample (or per-pair) mean, so repeating the batch changes them.
NOT_BATCH_INVARIANT = {
    "sp": "a batch-level term (row-normalized Gram matrix over B^2): repeating the batch halves "
    "it, as test_sp.py checks",
    # (From an empty queue the check can pass by coincidence: after the first call the queue
    # holds exactly that call's in-batch negatives. With a queue already filled, or in eval
    # mode, the two values differ.)
    "crd": "the negatives are the queue, which every training forward changes, or the other rows "
    "of the batch, which repeating it duplicates; test_crd.py checks invariance with a fixed queue",
}
# Methods that compute from .float() inputs but do not switch autocast off, so under autocast
# some of their ops run in bf16. (The engine never autocasts: train.precision is fp32 only.)
AUTOCAST_REACHES = {
    "sp": "the Gram matrix is a matmul, which autocast runs in bf16 (the value comes out bf16)",
    "nst": "the kernel means are a bmm, which autocast runs in bf16 (the value comes out bf16)",
    "fitnet": "the projector's 1x1 conv runs in bf16 under autocast",
    "cosine": "the linear projection runs in bf16 under autocast",
    "regressor": "the 3x3 conv regressor runs in bf16 under autocast",
}

# The transformer terms (TinyBERT, MiniLM) read a text classifier's taps and have their layers
# mapped to the models' depths (map_layers): a CNN has neither, so test_transformer.py gives
# them these same checks on a tiny BERT pair.
NAMES = [n for n in LOSSES if not issubclass(LOSSES[n], MapsLayers)]


def _params(allow_list: dict[str, str]):
    return [
        pytest.param(n, marks=pytest.mark.skip(reason=allow_list[n])) if n in allow_list else n
        for n in NAMES
    ]


def _required(cls) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}


def _is_feature_method(name: str) -> bool:
    return {"student", "teacher"} <= _required(LOSSES[name])


def build_term(name: str, student: str = "layer2", teacher: str = "layer2"):
    """The loss with its defaults, plus the layer paths when its __init__ requires them."""
    cls = LOSSES[name]
    required = _required(cls)
    assert required <= {"student", "teacher"}, f"{name} requires {required}: give it a default"
    return cls(**({"student": student, "teacher": teacher} if required else {}))


def make_batch(n: int = BATCH, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *IN_SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    y[::3] = -1  # some unlabelled rows: no method may depend on every row having a label
    return Batch(x, y, torch.arange(n))


def make_distiller(name: str, pair=PAIRS[0], same: bool = False):
    """A Distiller with the one term, set up on a probe batch; `same`: teacher = student copy."""
    torch.manual_seed(0)
    student = SmallCNN(IN_SHAPE, CLASSES, channels=STUDENT_CHANNELS)
    teacher = copy.deepcopy(student) if same else SmallCNN(IN_SHAPE, CLASSES, TEACHER_CHANNELS)
    term = build_term(name, *pair)
    distiller = Distiller(teacher, student, {name: (term, 1.0)}, ce_weight=0.0)
    if distiller.needs_setup:
        distiller.setup(make_batch())
    return distiller, term


def test_allow_lists_name_registered_losses():
    for allow_list in (NOT_ZERO_WHEN_EQUAL, ZERO_TOLERANCE, NOT_BATCH_INVARIANT, AUTOCAST_REACHES):
        assert set(allow_list) <= set(LOSSES)


@pytest.mark.parametrize(
    "name, pair",
    [
        pytest.param(n, pair, id=f"{n}-{'-'.join(pair)}" if _is_feature_method(n) else n)
        for n in NAMES
        for pair in (PAIRS if _is_feature_method(n) else PAIRS[:1])  # logit methods: no layers
    ],
)
def test_finite_scalar_and_gradients(name, pair):
    distiller, term = make_distiller(name, pair)
    distiller.train()
    value = distiller(make_batch()).terms[name]
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the student"
    for pname, p in term.named_parameters():  # projectors, heads, variances: all must train
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert all(p.grad is None for p in distiller.teacher.parameters())


@pytest.mark.parametrize("name", _params(NOT_ZERO_WHEN_EQUAL))
def test_zero_when_student_equals_teacher(name):
    distiller, _ = make_distiller(name, same=True)
    distiller.eval()  # both BatchNorms on running statistics, as the teacher always is
    with torch.no_grad():
        value = distiller(make_batch()).terms[name]
    assert value.item() == pytest.approx(0.0, abs=ZERO_TOLERANCE.get(name, 1e-5))


@pytest.mark.parametrize("name", _params(NOT_BATCH_INVARIANT))
def test_repeating_the_batch_keeps_the_value(name):
    b = make_batch()
    x, y, index = b.inputs, b.targets, b.index
    distiller, _ = make_distiller(name)
    distiller.train()  # training-mode BatchNorm: a repeated batch has the same statistics
    with torch.no_grad():
        once = distiller((x, y, index)).terms[name]
        twice = distiller((torch.cat([x, x]), torch.cat([y, y]), torch.cat([index, index]))).terms[name]
    assert twice.item() == pytest.approx(once.item(), rel=1e-5, abs=1e-7)


def fp32_case(name: str):
    """(term, student Outputs, teacher Outputs, batch, fp32 value): the term called directly
    on fixed, detached fp32 outputs of the two models (eval mode: no state changes)."""
    batch = make_batch()
    distiller, term = make_distiller(name)
    distiller.eval()
    with torch.no_grad():
        s, t = distiller.part.student_outputs(distiller.student, batch.inputs), distiller.live.outputs(batch.inputs)
    return term, s, t, batch, term(s, t, batch)


def _cast(out: Outputs, dtype) -> Outputs:
    return Outputs(out.logits.to(dtype), {k: v.to(dtype) for k, v in out.features.items()})


@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs_give_an_fp32_value(name):
    term, s, t, batch, ref = fp32_case(name)
    value = term(_cast(s, torch.bfloat16), _cast(t, torch.bfloat16), batch)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(ref.item(), rel=0.05, abs=1e-3)  # bf16 rounding only


@pytest.mark.parametrize("name", _params(AUTOCAST_REACHES))
def test_autocast_does_not_reach_the_loss(name):
    term, s, t, batch, ref = fp32_case(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(s, t, batch)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if _is_feature_method(n)])
def test_feature_methods_declare_and_check_their_layers(name):
    term = build_term(name, "layer1", "layer2")
    assert term.student_layers == ["layer1"] and term.teacher_layers == ["layer2"]
    assert "student='layer1', teacher='layer2'" in repr(term)
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="student must be a non-empty module path"):
            build_term(name, bad, "layer2")
        with pytest.raises(ValueError, match="teacher must be a non-empty module path"):
            build_term(name, "layer1", bad)


@pytest.mark.parametrize("name", [n for n in NAMES if not _is_feature_method(n)])
def test_logit_methods_hook_nothing(name):
    term = build_term(name)
    assert not getattr(term, "student_layers", []) and not getattr(term, "teacher_layers", [])


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(LOSSES[n], "setup")])
def test_setup_is_required_and_names_a_missing_feature(name):
    term = build_term(name, "s", "t")
    f = torch.randn(2, 3, 2, 2)
    s, t = Outputs(torch.zeros(2, 3), {"s": f}), Outputs(torch.zeros(2, 3), {"t": f})
    with pytest.raises(RuntimeError, match=r"setup\(\) was not called"):
        term(s, t, (f, torch.zeros(2), torch.arange(2)))
    with pytest.raises(ValueError, match="no student feature 's' was captured"):
        term.setup({"x": (2, 3, 2, 2)}, {"t": (2, 3, 2, 2)})
    with pytest.raises(ValueError, match="no teacher feature 't' was captured"):
        term.setup({"s": (2, 3, 2, 2)}, {"x": (2, 3, 2, 2)})
