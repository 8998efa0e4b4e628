"""The teacher-output cache: exact reuse (identical students), keys under augmentation,
metadata checks, fp16 / top-k storage, disk round trip, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import KD, Distiller, fit
from distill.cache import TeacherCache, expected_hit_rate, open_cache, topk_logits
from distill.config import TrainConfig
from distill.contracts import Outputs
from distill.data.augment import Augment, Cutout, HorizontalFlip, Normalize, RandomCrop
from distill.data.loader import TensorLoader
from distill.errors import DistillError
from distill.losses.at import AT

N, C, SEED = 64, 5, 3
NORM = Normalize([0.5] * 3, [0.25] * 3, scale=1 / 255)


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g), torch.randint(
        0, C, (N,), generator=g)


def crop_flip():
    return Augment([RandomCrop(8, padding=1), HorizontalFlip(), NORM], 8)  # 3 * 3 * 2 = 18 views


def loader(x, y, augment, batch_size=16, shuffle=True, transform=None):
    """A TensorLoader that draws `augment` (None: normalize only), as build_data makes it;
    with an augment, `transform` runs after it."""
    plain = Augment([NORM], 8)
    if augment is None:
        tf = lambda b, e, i: plain.apply_eval(b)  # noqa: E731
        return TensorLoader(x, y, batch_size, shuffle=shuffle, seed=SEED, transform=tf)
    return TensorLoader(x, y, batch_size, shuffle=shuffle, seed=SEED, augment=augment, transform=transform)


def teacher_net(seed: int = 1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, C))


def student_net(seed: int = 0):
    torch.manual_seed(seed)  # dropout below: the student consumes the global RNG
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, C))


def count_rows(module):
    rows = []
    module.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    return rows


def train(augment, cache_mode=None, features=True, epochs=4, teacher=None, shuffle=True,
          transform=None, **cache_args):
    """Fit a student with KD (+ AT on a hooked teacher layer); return (student, cache, rows)."""
    x, y = images()
    teacher = teacher or teacher_net()
    terms = {"kd": (KD(T=4.0), 1.0)}
    if features:
        terms["at"] = (AT("1", "2"), 10.0)
    distiller = Distiller(teacher, student_net(), terms, ce_weight=0.5)
    train_loader = loader(x, y, augment, shuffle=shuffle, transform=transform)
    cache = None
    if cache_mode:
        cache, _ = open_cache(cache_mode, distiller, train_loader, epochs=epochs, **cache_args)
        assert cache is not None
    rows = count_rows(teacher)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, optimizer="sgd", lr=0.05, schedule="constant")
    val = TensorLoader(x[:16].float(), y[:16], 16, transform=lambda b, e, i: NORM.apply(b))
    fit(distiller, train_loader, val, cfg, torch.device("cpu"))
    return distiller.student, cache, rows


def small_cache(tmp_path, teacher=None, x=None, augment=None, rebuild=True, **kw):
    x_default, y = images()
    x = x_default if x is None else x
    d = Distiller(teacher or teacher_net(), student_net(), {"kd": (KD(), 1.0)})
    cache, _ = open_cache("disk", d, loader(x, y, augment), path=tmp_path / "tc", rebuild=rebuild, **kw)
    return d, cache


# ---------------------------------------------------------------- the key property

# Cached and online runs feed the student the same batches; they differ only in where each
# teacher row was computed. Bit-identity is asserted where that is the same computation on any
# CPU, a tolerance where it is not:
# - unshuffled: a hit was computed in the same batch (row count 16, same row position) in an
#   earlier epoch, so every teacher row goes through the same kernels in the same order as
#   online (other rows' values never enter a row's arithmetic) -> bit-exact;
# - shuffled, or prefilled with another batch size: a hit was computed at another row position
#   or in a batch of another size, and BLAS may pick other kernels / blocking for that (8 vs 16
#   rows differ by ~2e-7 on AVX-512 CPUs), so the targets can differ in the last bits -> the
#   students agree to STUDENT_ATOL.
# STUDENT_ATOL: with every cached teacher output perturbed by up to 32 ulps the students here
# differ by <= 1.1e-7; a cache that stored fp16 targets instead gives >= 7e-6, so 1e-6 still
# tells rounding noise from wrong targets.
STUDENT_ATOL = 1e-6


def assert_same_students(a: nn.Module, b: nn.Module, exact: bool) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(q, p, rtol=0, atol=STUDENT_ATOL, msg=name)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "shuffled"])
@pytest.mark.parametrize("augment", [None, crop_flip()], ids=["plain", "crop_flip"])
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_run_trains_the_identical_student(augment, mode, shuffle, tmp_path):
    online, _, _ = train(augment, shuffle=shuffle)
    cached, cache, rows = train(augment, mode, shuffle=shuffle, path=tmp_path / "tc")
    assert cache.hits > 0 and cache.misses > 0
    # batch 16 <= min_rows 32: a miss runs the teacher on the whole batch, as online does
    assert rows and all(r == 16 for r in rows)
    assert_same_students(online, cached, exact=not shuffle)


@pytest.mark.parametrize(("fill_batch", "shuffle", "split"),
                         [(16, False, False), (32, True, False), (16, False, True)],
                         ids=["same_rows", "other_rows", "augment_then_transform"])
def test_prefilled_cache_trains_the_identical_student(fill_batch, shuffle, split):
    """`fill` re-creates every view with params_for_view, then the loader's transform: the same
    inputs as the loader's draws. Filling in batches of 16 in index order puts each sample at
    the row position and row count the unshuffled loader gives it (bit-exact); batches of 32
    are another matmul (tolerance). `split`: the augmentation only scales to [0, 1]; the
    loader's transform standardizes after it."""
    augment, tf = crop_flip(), None
    if split:
        augment = Augment([RandomCrop(8, padding=1), HorizontalFlip(), Normalize([0] * 3, [1] * 3, scale=1 / 255)], 8)
        tf = lambda b, e, i: (b - 0.5) / 0.25  # noqa: E731
    online, _, _ = train(augment, shuffle=shuffle, transform=tf)
    x, y = images()
    teacher = teacher_net()
    d = Distiller(teacher, student_net(), {"kd": (KD(T=4.0), 1.0), "at": (AT("1", "2"), 10.0)})
    cache, _ = open_cache("memory", d, loader(x, y, augment, transform=tf))
    cache.fill(d.live.outputs, loader(x, y, augment, transform=tf), batch_size=fill_batch)
    assert cache.stats()["filled"] == N * 18
    batch = next(iter(loader(x, y, augment, shuffle=False, transform=tf)))
    torch.testing.assert_close(cache.targets(batch).logits, d.live.outputs(batch.inputs).logits)
    student = student_net()
    d2 = Distiller(teacher, student, {"kd": (KD(T=4.0), 1.0), "at": (AT("1", "2"), 10.0)},
                   ce_weight=0.5)
    d2.attach_source(cache)
    rows = count_rows(teacher)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=4, optimizer="sgd", lr=0.05, schedule="constant")
    val = TensorLoader(x[:16].float(), y[:16], 16, transform=lambda b, e, i: NORM.apply(b))
    fit(d2, loader(x, y, augment, shuffle=shuffle, transform=tf), val, cfg, torch.device("cpu"))
    assert sum(rows) == 0 and cache.misses == 0
    assert_same_students(online, student, exact=fill_batch == 16 and not shuffle)


# ---------------------------------------------------------------- teacher forwards


def test_no_teacher_forward_after_the_first_epoch_without_augmentation():
    _, cache, rows = train(None, "memory", features=False, epochs=3, min_rows=1)
    assert sum(rows) == N  # epoch 1 computed every sample once; epochs 2 and 3 only hit
    assert cache.stats() == {"hits": 2 * N, "misses": N, "padded": 0, "filled": N, "entries": N}


def test_teacher_forwards_equal_distinct_views_seen():
    augment = crop_flip()
    epochs = 6
    _, cache, rows = train(augment, "memory", features=False, epochs=epochs, min_rows=1)
    index = torch.arange(N)
    seen = {(i, int(v)) for e in range(epochs)
            for i, v in zip(index.tolist(), augment.view_id(augment.draw(SEED, e, index)), strict=True)}
    assert sum(rows) == len(seen) == cache.misses
    assert cache.hits == epochs * N - len(seen) > 0


def test_small_miss_sets_are_padded_to_min_rows():
    """BLAS takes other kernels for very few rows (MKL: 1-3 rows at one thread, up to 11 at two;
    on AVX-512 CPUs 8 and 16 rows already differ), so a lone miss run on its own can differ in
    the last bits from the same sample run in a full batch; padding with hit rows keeps the
    teacher at min_rows rows. What holds on any CPU: the teacher runs once, on the 2 misses plus
    the first 6 hits in batch order, and each stored row is bit for bit that 8-row forward (and
    the 14-row one before it); against one 16-row forward it agrees only to rounding."""
    x, y = images()
    torch.manual_seed(1)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, C))
    d = Distiller(wide, student_net(), {"kd": (KD(), 1.0)})
    ld = loader(x, y, None)
    cache, _ = open_cache("memory", d, ld, min_rows=8)
    idx = torch.arange(16)
    inputs = ld.transform(x[idx], 0, idx)
    cache.lookup(inputs[:14], idx[:14], d.live.outputs)  # 14 misses
    seen = []
    wide.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    logits = cache.lookup(inputs, idx, d.live.outputs).logits  # 2 misses + 6 hit rows of padding
    assert len(seen) == 1 and cache.padded == 6
    padded = torch.cat([inputs[:6], inputs[14:]])  # the first 6 hits, then the misses, in order
    assert torch.equal(seen[0], padded)
    with torch.no_grad():
        assert torch.equal(logits[14:], wide(padded)[6:])  # the same 8-row computation
        assert torch.equal(logits[:14], wide(inputs[:14]))  # the same 14-row computation
        # 8 or 14 rows vs 16: other matmul blocking on some CPUs (seen: 2.1e-7 on AVX-512)
        torch.testing.assert_close(logits, wide(inputs), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- metadata


def test_disk_cache_round_trips_through_a_fresh_object(tmp_path):
    d, cache = small_cache(tmp_path)
    x, y = images()
    ld = loader(x, y, None)
    idx = torch.arange(20)
    logits = cache.lookup(ld.transform(x[idx], 0, idx), idx, d.live.outputs).logits
    cache.flush()
    _, again = small_cache(tmp_path)
    assert again.stats()["filled"] == 20
    rows = count_rows(d.teacher)
    logits2 = again.lookup(ld.transform(x[idx], 0, idx), idx, d.live.outputs).logits
    assert rows == [] and torch.equal(logits, logits2)


@pytest.mark.parametrize("change", ["teacher", "data", "transform"])
def test_stale_disk_cache_is_detected(tmp_path, change):
    d, cache = small_cache(tmp_path, augment=crop_flip())
    idx = torch.arange(8)
    x, y = images()
    cache.lookup(crop_flip()(x[idx], SEED, 0, idx), idx, d.live.outputs)
    cache.flush()
    kwargs = {"augment": crop_flip()}
    if change == "teacher":
        teacher = teacher_net()
        with torch.no_grad():
            teacher[0].bias[0] += 1e-3
        kwargs["teacher"] = teacher
    elif change == "data":
        x2 = x.clone()
        x2[-1, 0, 0, 0] ^= 1
        kwargs["x"] = x2
    else:
        kwargs["augment"] = Augment([RandomCrop(8, padding=2), HorizontalFlip(), NORM], 8)
    key = {"teacher": "teacher_sha256", "data": "data_sha256", "transform": "transform"}[change]
    with pytest.raises(DistillError, match=key):
        small_cache(tmp_path, rebuild=False, **kwargs)
    with pytest.warns(UserWarning, match="stale"):
        _, rebuilt = small_cache(tmp_path, rebuild=True, **kwargs)
    assert rebuilt.stats()["filled"] == 0


# ---------------------------------------------------------------- storage formats


def test_fp16_halves_the_bytes_and_stays_within_fp16_tolerance():
    x, y = images()
    ld = loader(x, y, None)
    d = Distiller(teacher_net(), student_net(), {"kd": (KD(), 1.0), "at": (AT("1", "2"), 1.0)})
    full, _ = open_cache("memory", d, ld)
    half = TeacherCache(N, {"logits": (C,), "2": (8, 8, 8)}, {}, dtype="fp16")
    bitmap = N  # one filled flag per entry, whatever the dtype
    assert full.nbytes - bitmap == 2 * (half.nbytes - bitmap)
    idx = torch.arange(N)
    inputs = ld.transform(x, 0, idx)
    a = full.lookup(inputs, idx, d.live.outputs)
    b = half.lookup(inputs, idx, d.live.outputs)
    a_logits, a_feats, b_logits, b_feats = a.logits, a.features, b.logits, b.features
    assert b_logits.dtype == torch.float32
    torch.testing.assert_close(b_logits, a_logits, rtol=2**-10, atol=1e-4)
    torch.testing.assert_close(b_feats["2"], a_feats["2"], rtol=2**-10, atol=1e-4)


def test_fp16_refuses_values_beyond_its_range():
    half = TeacherCache(2, {"logits": (3,)}, {}, dtype="fp16")
    big = torch.tensor([[1e5, 0.0, 0.0], [0.0, 1.0, 2.0]])
    with pytest.raises(DistillError, match="fp16"):
        half.lookup(torch.zeros(2, 1), torch.arange(2), lambda x: Outputs(big))


def test_topk_reconstruction_matches_the_hand_formula():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    cache = TeacherCache(1, {"logits": (5,)}, {}, topk=2)
    got = cache.lookup(torch.zeros(1, 1), torch.tensor([0]), lambda x: Outputs(z)).logits
    lse = math.log(sum(math.exp(v) for v in z[0].tolist()))
    p0, p1 = math.exp(2.0 - lse), math.exp(1.0 - lse)
    rest = (1 - p0 - p1) / 3  # the remaining mass, spread evenly over the 3 other classes
    expected = torch.tensor([[2.0, 1.0] + [lse + math.log(rest)] * 3])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(F.softmax(got, -1), torch.tensor([[p0, p1, rest, rest, rest]]))
    assert torch.equal(got[0, :2], z[0, :2])  # the stored logits come back unchanged
    # filled flag + k fp32 values + k int32 indices + the fp32 log-sum-exp, per entry
    assert cache.nbytes == 1 + 2 * 4 + 2 * 4 + 4
    torch.testing.assert_close(  # the helper on its own, one row
        topk_logits(torch.tensor([[2.0, 1.0]]), torch.tensor([[0, 1]]), torch.tensor([lse]), 5),
        expected)


def test_memory_budget_is_enforced():
    with pytest.raises(DistillError, match="budget"):
        TeacherCache(1000, {"logits": (100,)}, {}, augment=crop_flip(), memory_budget=1 << 20)


# ---------------------------------------------------------------- modes and refusals


def test_non_enumerable_augmentation_is_refused():
    cutout = Augment([HorizontalFlip(), Cutout(3), NORM], 8)
    x, y = images()
    d = Distiller(teacher_net(), student_net(), {"kd": (KD(), 1.0)})
    ld = loader(x, y, cutout)
    with pytest.raises(DistillError, match="replayed"):
        open_cache("memory", d, ld)
    with pytest.raises(DistillError, match="enumerated"):
        TeacherCache(N, {"logits": (C,)}, {}, augment=cutout)
    cache, why = open_cache("auto", d, ld, epochs=100)
    assert cache is None and "off" in why and d.source is d.live
    cache, why = open_cache("auto", d, loader(x, y, None), epochs=10, mixup=True)
    assert cache is None and "mixup" in why


def test_auto_decides_on_exactness_and_expected_hits():
    x, y = images()
    d = Distiller(teacher_net(), student_net(), {"kd": (KD(), 1.0)})
    assert open_cache("auto", d, loader(x, y, None), epochs=1)[0] is None  # nothing to reuse
    cache, why = open_cache("auto", d, loader(x, y, None), epochs=2)
    assert cache is not None and d.source is cache and why.startswith("memory")
    assert expected_hit_rate(1, 30) == pytest.approx(29 / 30)
    assert expected_hit_rate(162, 30) < 0.25 < expected_hit_rate(162, 240)
    with pytest.raises(DistillError, match="exact"):
        open_cache("auto", d, loader(x, y, None), epochs=2, dtype="fp16")
    no_terms = Distiller(teacher_net(), student_net())
    assert open_cache("memory", no_terms, loader(x, y, None))[0] is None


def test_a_transform_that_changes_with_the_epoch_but_draws_no_view_is_refused():
    """The cache keys views by the loader's own draws (Batch.view), so a seed mismatch cannot
    happen; a loader whose opaque transform re-draws every epoch has no views to key by."""
    x, y = images()
    d = Distiller(teacher_net(), student_net(), {"kd": (KD(), 1.0)})
    augment = crop_flip()
    opaque = TensorLoader(x, y, 16, shuffle=True, seed=SEED, transform=lambda b, e, i: augment(b, SEED, e, i))
    with pytest.raises(DistillError, match="epoch"):
        open_cache("memory", d, opaque)
    # with an augmentation too: its draw fixes the view, the transform after it must not change
    crops = Augment([RandomCrop(8, padding=1), HorizontalFlip()], 8)
    per_epoch = loader(x, y, crops, transform=lambda b, e, i: NORM.apply(b) + 0.1 * e)
    with pytest.raises(DistillError, match="epoch"):
        open_cache("memory", d, per_epoch)
    assert open_cache("memory", d, loader(x, y, crops, transform=lambda b, e, i: NORM.apply(b)))[0]


def test_the_cache_keys_the_view_the_loader_drew():
    """A training batch carries its draw's view id; the cache stores under exactly that key."""
    x, y = images()
    augment = crop_flip()
    d = Distiller(teacher_net(), student_net(), {"kd": (KD(), 1.0)})
    ld = loader(x, y, augment)
    cache, _ = open_cache("memory", d, ld)
    batch = next(iter(ld))
    assert torch.equal(batch.view, augment.view_id(augment.draw(SEED, 0, batch.index)))
    cache.targets(batch)
    assert bool(cache.filled[cache.keys(batch.index, batch.view)].all()) and int(cache.filled.sum()) == len(batch)


def test_checkpoints_record_the_cache_they_used(tmp_path):
    from distill.checkpoint import Checkpointer, TrainState

    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    distiller = Distiller(teacher, student, {"kd": (KD(), 1.0)})
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    cache, _ = open_cache("memory", distiller, TensorLoader(x, y, 8), epochs=5)
    opt = torch.optim.SGD(distiller.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = Checkpointer(tmp_path, "distill")
    ckpt.save(distiller, opt, sched, TrainState(epoch=1), distiller.state_dict())
    ref = ckpt.load()["cache"]
    assert ref == cache.reference() and ref["storage"] == "memory" and len(ref["meta_sha256"]) == 64
