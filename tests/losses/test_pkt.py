import math

import pytest
import torch

from distill.distiller import Outputs
from distill.losses.pkt import PKT, pkt_loss


def test_hand_value_two_samples():
    # student rows orthogonal: K = [[1, .5], [.5, 1]] -> P_s rows (2/3, 1/3) and (1/3, 2/3)
    # teacher at 45 degrees: cos = 1/sqrt2, K01 = c = (1 + 1/sqrt2) / 2
    c = (1 + 1 / math.sqrt(2)) / 2
    a, b = 1 / (1 + c), c / (1 + c)
    row_kl = a * math.log(a / (2 / 3)) + b * math.log(b / (1 / 3))  # both rows are alike
    expected = (row_kl + row_kl) / 2
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert pkt_loss(s, t, eps=0.0).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-4)  # default eps 1e-7


def test_hand_value_antipodal_teacher_pair():
    # student: three orthogonal unit vectors -> every row (.5, .25, .25) up to order
    # teacher: t0 = -t1 (K = 0), t2 orthogonal to both (K = .5)
    #   rows: (2/3, 0, 1/3), (0, 2/3, 1/3), (1/4, 1/4, 1/2)
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])  # norms don't matter
    t = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    row0 = (2 / 3) * math.log((2 / 3) / 0.5) + 0.0 + (1 / 3) * math.log((1 / 3) / 0.25)
    row1 = row0
    row2 = 0.25 * math.log(0.25 / 0.25) + 0.25 * math.log(0.25 / 0.25) + 0.5 * math.log(0.5 / 0.5)
    expected = (row0 + row1 + row2) / 3
    got = pkt_loss(s, t, eps=0.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def test_module_grad_flows_to_student_only():
    torch.manual_seed(0)
    f_s = torch.randn(6, 3, 2, 2, requires_grad=True)
    f_t = torch.randn(6, 10, requires_grad=True)
    term = PKT("s.layer", "t.layer")
    assert term.student_layers == ["s.layer"] and term.teacher_layers == ["t.layer"]
    loss = term(_outputs(f_s, "s.layer"), _outputs(f_t, "t.layer"), None)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert loss.item() == pytest.approx(pkt_loss(f_s.detach().flatten(1), f_t.detach()).item())
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None


def test_zero_when_student_equals_teacher():
    torch.manual_seed(1)
    e = torch.randn(5, 7)
    assert pkt_loss(e, e).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt_loss(4.0 * e, e).item() == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_batch_repeat_invariance():
    torch.manual_seed(2)
    s, t = torch.randn(5, 6), torch.randn(5, 4)
    one = pkt_loss(s, t)
    two = pkt_loss(torch.cat([s, s]), torch.cat([t, t]))
    assert two.item() == pytest.approx(one.item(), rel=1e-4)


def test_zero_feature_row_is_finite():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 0.5]])
    loss = pkt_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_fp32_for_half_inputs():
    torch.manual_seed(3)
    s, t = torch.randn(4, 5).half(), torch.randn(4, 5).half()
    assert pkt_loss(s, t).dtype == torch.float32


def test_bad_values():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pkt_loss(torch.randn(2, 3), torch.randn(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="module path"):
        PKT("layer1", "")
    with pytest.raises(ValueError, match="differ in size"):
        pkt_loss(torch.randn(2, 3), torch.randn(3, 3))


def test_autocast_does_not_reach_the_loss():
    torch.manual_seed(4)
    s, t = torch.randn(16, 64), torch.randn(16, 64)
    ref = pkt_loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pkt_loss(s, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
