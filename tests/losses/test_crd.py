"""Contrastive representation distillation: hand-worked InfoNCE values and the queue
(generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.contracts import Batch
from distill.distiller import Outputs
from distill.losses.crd import CRD, crd_loss


def ce(logits, target):
    """-log softmax(logits)[target], plain Python."""
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_hand_value_with_queue():
    # one sample; T = 0.5. z_s = (1, 0), z_t = (.6, .8), teacher queue (0, 1), student queue (-1, 0)
    # student anchor: pos .6, negative 0    -> logits (1.2, 0)
    # teacher anchor: pos .6, negative -.6  -> logits (1.2, -1.2)
    expected = ce([1.2, 0.0], 0) + ce([1.2, -1.2], 0)
    got = crd_loss(
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[3.0, 4.0]]),  # normalized inside to (.6, .8)
        queue_t=torch.tensor([[0.0, 1.0]]),
        queue_s=torch.tensor([[-1.0, 0.0]]),
        T=0.5,
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


IN_BATCH_S = [[1.0, 0.0], [0.0, 1.0]]
IN_BATCH_T = [[1.0, 0.0], [0.6, 0.8]]


def hand_in_batch():
    # T = 1. student anchors: rows (1, .6) target 0 and (0, .8) target 1
    #        teacher anchors: rows (1, 0) target 0 and (.6, .8) target 1
    s_part = (ce([1.0, 0.6], 0) + ce([0.0, 0.8], 1)) / 2
    t_part = (ce([1.0, 0.0], 0) + ce([0.6, 0.8], 1)) / 2
    return s_part + t_part


def test_hand_value_in_batch_negatives_when_queue_empty():
    empty = torch.zeros(0, 2)
    got = crd_loss(torch.tensor(IN_BATCH_S), torch.tensor(IN_BATCH_T), empty, empty, T=1.0)
    assert got.item() == pytest.approx(hand_in_batch(), rel=1e-6)


def test_excluded_negatives_are_left_out():
    # both queue entries excluded for the only anchor: only the positive remains -> CE = 0
    z = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    out = crd_loss(z, z, q, q, T=0.1, exclude=torch.tensor([[True, True]]))
    assert out.item() == pytest.approx(0.0, abs=1e-7)
    # excluding one entry equals passing the queue without it
    part = crd_loss(z, z, q, q, T=0.1, exclude=torch.tensor([[False, True]]))
    assert part.item() == pytest.approx(crd_loss(z, z, q[:1], q[:1], T=0.1).item(), rel=1e-6)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def _identity_crd(queue_size=8, T=1.0):
    term = CRD("s", "t", feat_dim=2, queue_size=queue_size, T=T)
    term.setup({"s": (1, 2)}, {"t": (1, 2)})
    with torch.no_grad():
        for head in (term.embed_s, term.embed_t):
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    return term


def _call(term, s, t, index):
    s, t = torch.tensor(s), torch.tensor(t)
    return term(_outputs(s, "s"), _outputs(t, "t"), Batch(s, torch.zeros(len(s)), torch.tensor(index)))


def test_module_identity_heads_first_in_batch_then_queue():
    term = _identity_crd()
    first = _call(term, IN_BATCH_S, [[1.0, 0.0], [3.0, 4.0]], [0, 1])
    assert first.item() == pytest.approx(hand_in_batch(), rel=1e-6)
    assert int(term.queue_len) == 2
    assert torch.allclose(term.queue_s[:2], torch.tensor(IN_BATCH_S))
    assert torch.allclose(term.queue_t[:2], torch.tensor(IN_BATCH_T))
    # second batch, sample 5: z_s = (r, r), r = 1/sqrt2, z_t = (1, 0); the queue now supplies
    # teacher negatives (1, 0), (.6, .8) and student negatives (1, 0), (0, 1)
    r = 1 / math.sqrt(2)
    second = _call(term, [[2.0, 2.0]], [[5.0, 0.0]], [5])
    expected = ce([r, r, 1.4 * r], 0) + ce([r, 1.0, 0.0], 0)
    assert second.item() == pytest.approx(expected, rel=1e-6)
    # third batch is sample 0 again: its own queue entry (slot 0) is not a negative
    third = _call(term, [[0.0, 1.0]], [[0.0, 1.0]], [0])
    # student anchor (0, 1) vs teacher negatives (.6, .8), (1, 0); teacher anchor (0, 1) vs
    # student negatives (0, 1), (r, r)
    expected = ce([1.0, 0.8, 0.0], 0) + ce([1.0, 1.0, r], 0)
    assert third.item() == pytest.approx(expected, rel=1e-6)


def test_queue_is_a_fixed_size_ring_buffer():
    torch.manual_seed(0)
    term = CRD("s", "t", feat_dim=4, queue_size=5)
    term.setup({"s": (2, 3)}, {"t": (2, 6)})
    shapes = {name: buf.shape for name, buf in term.named_buffers()}
    for step in range(7):
        s, t = torch.randn(2, 3), torch.randn(2, 6)
        idx = torch.tensor([2 * step, 2 * step + 1])
        term(_outputs(s, "s"), _outputs(t, "t"), Batch(s, torch.zeros(2), idx))
        assert {name: buf.shape for name, buf in term.named_buffers()} == shapes
        assert int(term.queue_len) == min(2 * (step + 1), 5)
        with torch.no_grad():  # this batch's embeddings are the newest queue entries
            z_s = torch.nn.functional.normalize(term.embed_s(s), dim=1)
            z_t = torch.nn.functional.normalize(term.embed_t(t), dim=1)
        slots = [(2 * step) % 5, (2 * step + 1) % 5]
        assert torch.allclose(term.queue_s[slots], z_s, atol=1e-6)
        assert torch.allclose(term.queue_t[slots], z_t, atol=1e-6)
        assert term.queue_index[slots].tolist() == idx.tolist()
    # a batch larger than the queue keeps its newest rows only
    s, t = torch.randn(8, 3), torch.randn(8, 6)
    term(_outputs(s, "s"), _outputs(t, "t"), Batch(s, torch.zeros(8), torch.arange(100, 108)))
    assert int(term.queue_len) == 5 and term.queue_s.shape == (5, 4)
    assert sorted(term.queue_index.tolist()) == list(range(103, 108))


def test_eval_mode_does_not_enqueue():
    term = _identity_crd()
    term.eval()
    _call(term, IN_BATCH_S, IN_BATCH_T, [0, 1])
    assert int(term.queue_len) == 0 and int(term.queue_ptr) == 0


def test_queue_step_trains_both_heads_not_the_queue():
    # (the registry checks the first, in-batch step; this is the step against the queue)
    torch.manual_seed(1)
    term = CRD("layer1", "layer2", feat_dim=8, queue_size=16)
    f_s = torch.randn(4, 2, 3, 3, requires_grad=True)
    f_t = torch.randn(4, 5)
    term.setup({"layer1": tuple(f_s.shape)}, {"layer2": tuple(f_t.shape)})
    assert term.embed_s.in_features == 18 and term.embed_t.in_features == 5
    batch = Batch(f_s, None, torch.arange(4))
    term(_outputs(f_s, "layer1"), _outputs(f_t, "layer2"), batch)  # fills the queue
    loss = term(_outputs(f_s, "layer1"), _outputs(f_t, "layer2"), Batch(f_s, None, torch.arange(4, 8)))
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert term.embed_s.weight.grad.abs().sum() > 0
    assert term.embed_t.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in term.buffers())


def test_batch_repeat_invariance_with_fixed_queue():
    torch.manual_seed(2)
    z_s, z_t = torch.randn(3, 4), torch.randn(3, 4)
    q_t, q_s = torch.randn(6, 4), torch.randn(6, 4)
    one = crd_loss(z_s, z_t, q_t, q_s)
    two = crd_loss(torch.cat([z_s, z_s]), torch.cat([z_t, z_t]), q_t, q_s)
    assert torch.isfinite(one)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_works_without_sample_index():
    term = CRD("s", "t", feat_dim=3, queue_size=4)
    x = torch.randn(2, 3)
    term.setup({"s": (2, 3)}, {"t": (2, 3)})
    for _ in range(3):
        assert torch.isfinite(term(_outputs(x, "s"), _outputs(x, "t"), Batch(x, torch.zeros(2))))
    assert int(term.queue_len) == 4 and term.queue_index.tolist() == [-1, -1, -1, -1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": 0.0}, "T must be > 0"),
        ({"feat_dim": 0}, "feat_dim must be an integer >= 1"),
        ({"queue_size": 0}, "queue_size must be an integer >= 1"),
        ({"queue_size": 10.5}, "queue_size must be an integer >= 1"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CRD("a", "b", **kwargs)


def test_autocast_reaches_neither_the_queue_step_nor_the_queue():
    torch.manual_seed(4)
    s, t = torch.randn(16, 40), torch.randn(16, 24)
    losses = []
    for amp in (False, True):
        torch.manual_seed(5)
        term = CRD("s", "t", feat_dim=32, queue_size=64)
        term.setup({"s": (16, 40)}, {"t": (16, 24)})
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for step in range(2):  # in-batch, then against the queue
                idx = torch.arange(16) + 16 * step
                out = term(_outputs(s, "s"), _outputs(t, "t"), Batch(s, None, idx))
                assert out.dtype == torch.float32
                losses.append(out.item())
        assert term.queue_s.dtype == torch.float32
    assert losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert losses[3] == pytest.approx(losses[1], rel=1e-5)


def test_a_loaded_queue_is_used_as_saved():
    """The queue's fill level is mirrored on the host (no device read per step); loading a
    state dict (a resumed run) must re-read it, not keep the fresh module's empty queue."""
    torch.manual_seed(0)
    trained = CRD("s", "t", feat_dim=4, queue_size=8)
    trained.setup({"s": (2, 3)}, {"t": (2, 5)})
    for step in range(3):
        f_s, f_t = torch.randn(2, 3), torch.randn(2, 5)
        trained(_outputs(f_s, "s"), _outputs(f_t, "t"), Batch(f_s, None, torch.arange(2 * step, 2 * step + 2)))
    fresh = CRD("s", "t", feat_dim=4, queue_size=8)
    fresh.setup({"s": (2, 3)}, {"t": (2, 5)})
    fresh.load_state_dict(trained.state_dict())
    f_s, f_t = torch.randn(2, 3), torch.randn(2, 5)
    batch = Batch(f_s, None, torch.tensor([6, 7]))
    trained.eval(), fresh.eval()
    expected = trained(_outputs(f_s, "s"), _outputs(f_t, "t"), batch)
    assert fresh(_outputs(f_s, "s"), _outputs(f_t, "t"), batch).item() == pytest.approx(expected.item(), rel=1e-6)
    empty = CRD("s", "t", feat_dim=4, queue_size=8)
    empty.setup({"s": (2, 3)}, {"t": (2, 5)})
    empty.load_state_dict({**trained.state_dict(), "queue_len": torch.tensor(0)})
    assert empty(_outputs(f_s, "s"), _outputs(f_t, "t"), batch).item() != pytest.approx(expected.item(), rel=1e-6)
