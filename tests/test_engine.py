"""The engine: schedule, optimizers, fit, evaluate; the Distiller's loss arithmetic and CE."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import KD, Distiller, Selection, evaluate, fit
from distill.config import TrainConfig
from distill.distiller import ce_loss
from distill.engine import build_optimizer, lr_factor
from distill.errors import DistillError

# ---------------------------------------------------------------- lr_factor


def test_cosine_starts_at_one_and_ends_at_zero():
    cfg = TrainConfig(epochs=10, schedule="cosine")
    steps, total = 5, 50
    assert lr_factor(cfg, 0, steps) == 1.0
    assert lr_factor(cfg, total, steps) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, total // 2, steps) == pytest.approx(0.5, abs=1e-12)
    # the last step actually taken is close to zero: 0.5 * (1 + cos(pi * 49 / 50))
    assert lr_factor(cfg, total - 1, steps) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)))
    assert lr_factor(cfg, total - 1, steps) < 0.01
    values = [lr_factor(cfg, s, steps) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_warmup_is_linear_then_cosine():
    cfg = TrainConfig(epochs=6, schedule="cosine", warmup_epochs=2)
    steps = 5
    warm = [lr_factor(cfg, s, steps) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    diffs = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert diffs == pytest.approx([0.1] * 9)
    assert lr_factor(cfg, 10, steps) == pytest.approx(1.0)  # cosine starts after warm-up
    assert lr_factor(cfg, 30, steps) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 20, steps) == pytest.approx(0.5)  # half-way through the cosine part


def test_warmup_then_constant():
    cfg = TrainConfig(epochs=4, schedule="constant", warmup_epochs=1)
    assert [lr_factor(cfg, s, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(lr_factor(cfg, s, 4) == 1.0 for s in range(4, 16))


def test_multistep_multiplies_by_gamma_at_milestones():
    cfg = TrainConfig(epochs=6, schedule="multistep", milestones=[2, 4], gamma=0.1)
    steps = 3
    by_epoch = [lr_factor(cfg, e * steps + k, steps) for e in range(6) for k in range(steps)]
    expected = [1.0] * 6 + [0.1] * 6 + [0.01] * 6
    assert by_epoch == pytest.approx(expected)


# ---------------------------------------------------------------- build_optimizer


def _params():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)
    return m


def test_build_adam():
    m = _params()
    opt = build_optimizer(m.parameters(), TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-4))
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-4
    # frozen parameters are left out
    assert len(group["params"]) == 3
    assert all(p.requires_grad for p in group["params"])


def test_build_adamw():
    opt = build_optimizer(_params().parameters(), TrainConfig(optimizer="adamw", lr=0.002, weight_decay=0.05))
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert opt.param_groups[0]["lr"] == 0.002


def test_build_sgd_nesterov():
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = build_optimizer(_params().parameters(), cfg)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert group["nesterov"] is True
    assert group["momentum"] == 0.9 and group["lr"] == 0.1 and group["weight_decay"] == 5e-4


def test_build_sgd_nesterov_without_momentum_is_plain_sgd():
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, nesterov=True)
    opt = build_optimizer(_params().parameters(), cfg)  # torch would reject nesterov w/o momentum
    assert opt.param_groups[0]["nesterov"] is False


# ---------------------------------------------------------------- fit


def _cfg(**kw):
    base = {"epochs": 6, "lr": 0.02, "schedule": "constant", "optimizer": "adam"}
    return TrainConfig(**{**base, **kw})


def test_fit_learns_a_separable_problem(blobs, tiny_mlp):
    train, val, dim, classes = blobs()
    student = tiny_mlp(dim, classes)
    before = evaluate(student, val, "cpu")["acc"]
    result = fit(Distiller(None, student), train, val, _cfg(), "cpu")
    assert len(result.history) == 6
    assert result.best_val["acc"] >= 95.0
    assert result.best_val["acc"] > before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 1 <= result.best_epoch <= 6
    assert result.best_val["acc"] == max(r["val_acc"] for r in result.history)


def test_fit_records(blobs, tiny_mlp):
    train, val, dim, classes = blobs()
    cfg = _cfg(epochs=4, schedule="cosine", lr=0.01)
    seen = []
    steps = []
    result = fit(Distiller(None, tiny_mlp(dim, classes)), train, val, cfg, "cpu",
                 on_step=steps.append, on_epoch=seen.append)
    assert seen == result.history
    assert len(steps) == 4 * len(train)
    for i, record in enumerate(result.history):
        assert record["epoch"] == i + 1
        # lr at the start of epoch i: base * 0.5 * (1 + cos(pi * i / epochs))
        assert record["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * i / 4)))
        for key in ("train_loss", "train_ce", "train_acc", "val_acc", "val_loss", "seconds"):
            assert math.isfinite(record[key])
        assert record["train_loss"] == pytest.approx(record["train_ce"])  # ce_weight 1, no terms


def test_fit_best_state_reproduces_best_val(blobs, tiny_mlp):
    train, val, dim, classes = blobs()
    student = tiny_mlp(dim, classes)
    distiller = Distiller(None, student)
    result = fit(distiller, train, val, _cfg(epochs=4), "cpu")
    distiller.load_state_dict(result.best_state)
    assert evaluate(student, val, "cpu")["acc"] == result.best_val["acc"]


def _fit_weights(blobs, tiny_mlp, seed):
    train, val, dim, classes = blobs(seed=seed)
    student = tiny_mlp(dim, classes, seed=0)
    torch.manual_seed(seed)  # dropout draws
    fit(Distiller(None, student), train, val, _cfg(epochs=3), "cpu")
    return [p.detach().clone() for p in student.parameters()]


def test_fit_is_deterministic_for_a_seed(blobs, tiny_mlp):
    a = _fit_weights(blobs, tiny_mlp, seed=5)
    b = _fit_weights(blobs, tiny_mlp, seed=5)
    c = _fit_weights(blobs, tiny_mlp, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


class ModeRecorder(nn.Module):
    """A teacher with dropout that records whether it was called in training mode."""

    def __init__(self, dim, classes):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, classes))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def test_teacher_gets_no_gradients_and_stays_in_eval_mode(blobs, tiny_mlp):
    train, val, dim, classes = blobs()
    torch.manual_seed(3)
    teacher = ModeRecorder(dim, classes).train()
    before = copy.deepcopy(teacher.state_dict())
    student = tiny_mlp(dim, classes)
    distiller = Distiller(teacher, student, {"kd": (KD(T=4.0), 0.9)}, ce_weight=0.1)
    assert not any(p is q for p in distiller.parameters() for q in teacher.parameters())
    distiller.train()
    assert not teacher.training
    result = fit(distiller, train, val, _cfg(epochs=2), "cpu")
    assert teacher.modes and not any(teacher.modes)
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert all("train_kd" in r for r in result.history)
    assert all(p.grad is not None for p in student.parameters())


# ---------------------------------------------------------------- Distiller and CE


def test_distiller_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 4), nn.Linear(5, 4)
    terms = {"kd": (KD(T=4.0), 0.7), "kd_sharp": (KD(T=1.0), 0.2)}
    distiller = Distiller(teacher, student, terms, ce_weight=0.3)
    x = torch.randn(8, 5)
    y = torch.tensor([0, 1, 2, 3, -1, 1, -1, 0])
    out = distiller([x, y, torch.arange(8)])
    assert out.loss.item() == pytest.approx(
        0.3 * out.terms["ce"].item() + 0.7 * out.terms["kd"].item() + 0.2 * out.terms["kd_sharp"].item(), rel=1e-6
    )
    # and each part is what it says, recomputed here independently
    s, t = student(x), teacher(x).detach()
    mask = y != -1
    assert out.terms["ce"].item() == pytest.approx(F.cross_entropy(s[mask], y[mask]).item(), rel=1e-6)
    for name, T in (("kd", 4.0), ("kd_sharp", 1.0)):
        p = F.softmax(t / T, dim=-1)
        ref = torch.sum(p * (p.log() - F.log_softmax(s / T, dim=-1))) / len(x) * T**2
        assert out.terms[name].item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.equal(out.logits, s)


def test_distiller_without_terms_is_plain_ce():
    torch.manual_seed(0)
    student = nn.Linear(5, 3)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    out = Distiller(None, student, ce_weight=2.0)([x, y])
    assert out.loss.item() == pytest.approx(2.0 * F.cross_entropy(student(x), y).item(), rel=1e-6)


def test_distiller_terms_need_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        Distiller(None, nn.Linear(2, 2), {"kd": (KD(), 1.0)})


def test_ce_ignores_unlabelled():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([1, -1, 3, -1, 0, 2])
    mask = labels != -1
    expected = F.cross_entropy(logits[mask], labels[mask])
    assert ce_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ce_is_zero_not_nan_without_labels():
    logits = torch.randn(5, 4, requires_grad=True)
    loss = ce_loss(logits, torch.full((5,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_evaluate_ignores_unlabelled_samples():
    from distill.data.loader import TensorLoader

    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, -1, 0])  # 2 right, 1 wrong, 1 unlabelled
    res = evaluate(model, TensorLoader(x, y, 3), "cpu")
    assert res["acc"] == pytest.approx(100 * 2 / 3)
    assert model.training  # restored


def test_channels_last_trains_the_same_model_closely():
    from distill.config import TrainConfig
    from distill.data.loader import TensorLoader
    from distill.distiller import Distiller
    from distill.engine import fit
    from distill.models import create_model

    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = create_model("cnn", 3, (1, 8, 8), channels=[4, 8])
        cfg = TrainConfig(epochs=2, schedule="constant", checkpoint_every=0, channels_last=channels_last)
        fit(Distiller(None, model), TensorLoader(x, y, 8, shuffle=True), TensorLoader(x, y, 32), cfg, "cpu")
        results.append(model)
    plain, nhwc = results
    assert nhwc.layer1[0].weight.is_contiguous(memory_format=torch.channels_last)
    # not bit-exact: NHWC convolutions are other kernels with another summation order; over
    # 2 epochs of Adam they stay ~3e-8 here; 1e-4 leaves room for other CPUs and Adam's growth
    for a, b in zip(plain.parameters(), nhwc.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_deferred_finite_check_names_the_first_bad_step():
    """On an accelerator the loss is checked every CHECK_EVERY steps (a host sync); the error
    still names the step where the loss first went bad, and says where it was found."""
    from distill.contracts import Batch, StepOutput
    from distill.engine import FiniteWatch, NonFiniteLoss

    distiller = Distiller(None, nn.Linear(2, 2))
    watch = FiniteWatch(distiller, torch.device("cpu"), every=4)
    batch = Batch(torch.ones(3, 2), torch.zeros(3, dtype=torch.long))
    good = StepOutput(torch.tensor(1.0), {"ce": torch.tensor(1.0)}, torch.tensor(3.0), torch.tensor(0.0))
    bad = StepOutput(torch.tensor(float("nan")), {"ce": torch.tensor(float("nan"))}, torch.tensor(3.0),
                     torch.tensor(0.0), torch.full((3, 2), float("nan")))
    for step, out in enumerate([good, bad, good]):
        watch.observe(out, 0, step, batch)  # no raise: nothing is read on the host yet
        watch.check(out, 0, step, batch)
    watch.observe(bad, 0, 3, batch)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 2 \(found at the check after step 4.*'ce'") as e:
        watch.check(bad, 0, 3, batch)
    assert "diverged" in str(e.value) and "inputs contain" not in str(e.value)  # no diagnosis of another batch
    eager = FiniteWatch(distiller, torch.device("cpu"))
    assert eager.every == 1
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 2: term"):
        eager.observe(bad, 0, 1, batch)


def test_the_teacher_is_dropped_only_behind_a_stored_source():
    distiller = Distiller(nn.Linear(2, 2), nn.Linear(2, 2), {"kd": (KD(), 1.0)})
    with pytest.raises(ValueError, match="attach_source"):
        distiller.drop_teacher()  # the live teacher is the source: nothing would give targets
    assert distiller.teacher is not None and distiller.source is distiller.live


def test_an_empty_share_of_a_batch_is_a_zero_step_reaching_every_parameter():
    """Under torchrun a process can get no rows of a small last batch: its step must report the
    same terms as the others and a zero loss whose backward reaches every parameter (DDP)."""
    from distill.contracts import Batch
    from distill.losses.fitnet import FitNet

    teacher, student = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    d = Distiller(teacher, student, {"kd": (KD(), 1.0), "hint": (FitNet("0", "0"), 1.0)}, ce_weight=0.5)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, -1])
    d.setup(Batch(x, y))
    full = d(Batch(x, y, torch.arange(4)))
    empty = d(Batch(x[:0], y[:0], torch.arange(0)))
    assert set(empty.terms) == set(full.terms) and empty.loss.item() == 0 and empty.counted.item() == 0
    empty.loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in d.parameters())


@pytest.mark.parametrize("name", ["ce", "loss", "acc"])
def test_terms_cannot_take_a_logged_name(name):
    with pytest.raises(DistillError, match="taken"):
        Distiller(nn.Linear(2, 2), nn.Linear(2, 2), {name: (KD(), 1.0)})


def test_python_api_mistakes_name_the_fix():
    from distill.contracts import Batch
    from distill.engine import set_loader_epoch
    from distill.lm.distiller import TokenPart

    model = nn.Linear(2, 2)
    with pytest.raises(DistillError, match="same module"):
        Distiller(model, model, {"kd": (KD(), 1.0)})
    d = Distiller(nn.Linear(2, 2), nn.Linear(2, 2), {"kd": (KD(), 1.0)})
    with pytest.raises(DistillError, match="teacher source"):
        d.attach_source(None)
    with pytest.raises(DistillError, match="setup's batch must yield"):
        d.setup(torch.zeros(2, 2))
    with pytest.raises(DistillError, match="needs targets"):
        d(Batch(torch.zeros(2, 2)))
    with pytest.raises(DistillError, match="target mask"):
        TokenPart().step(d, Batch(torch.zeros(2, 3, dtype=torch.long)), None)
    loader = [(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(DistillError, match="val_loader must be a loader"):
        fit(d, loader, None, TrainConfig(epochs=1), "cpu")
    with pytest.raises(DistillError, match="not a Linear"):
        fit(nn.Linear(2, 2), loader, loader, TrainConfig(epochs=1), "cpu")
    with pytest.raises(DistillError, match="'ppl' is not among the validation metrics"):
        fit(d, loader, loader, TrainConfig(epochs=1), "cpu", selection=Selection("ppl", True))
    sampled = torch.utils.data.DataLoader(list(range(4)), sampler=torch.utils.data.DistributedSampler(
        list(range(4)), num_replicas=1, rank=0))
    set_loader_epoch(sampled, 3)
    assert sampled.sampler.epoch == 3  # a DistributedSampler reshuffles only when told the epoch
