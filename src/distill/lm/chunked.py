"""Token losses computed chunk by chunk from hidden states, so [tokens, vocab] never exists whole.

The naive way (`logits = model(ids).logits`, then log_softmax, then the loss) holds several
float32 tensors of shape [batch, length, vocab] at once: the student's logits, their
log-softmax at each temperature, the teacher's logits and log-probabilities, the products
inside the sum, and in backward the gradient of each. At vocab 128k and 4k tokens one such
tensor is 2 GiB. Here the output layer is applied inside the loss, to `chunk` counted tokens at
a time: each chunk's logits, losses and gradients (with respect to the hidden states and the
output layer's weights) are formed and dropped before the next, and backward only scales the
stored gradients. Peak memory is a few [chunk, vocab] tensors; see benchmarks/lm_loss.py.

Only counted positions (target tokens) reach the output layer: padding and masked prompt
tokens cost nothing. The teacher's side of a chunk is either its hidden states and output layer
(online) or its stored top-k log-probabilities (offline), in which case every divergence is
taken over k + 1 bins: the k stored tokens and one bin for the rest of the mass, on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .logit_transform import IDENTITY, LogitTransform, logit_transform

# Logits per chunk: 16 MiB in fp32, under glibc's 32 MiB mmap threshold, so chunk buffers are
# reused from the heap instead of freshly mapped and page-faulted each chunk (benchmarks/lm_loss.py)
CHUNK_ELEMENTS = 1 << 22
TAIL_FLOOR = 1e-9  # smallest "rest of the vocabulary" mass; keeps its log finite


@dataclass
class Head:
    """An output layer as its weight [V, H], optional bias [V] and the model's fixed transform
    of its output (soft-capping, scaling; distill.lm.logit_transform):
    logits = transform(h @ W.T + b)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    transform: LogitTransform = IDENTITY

    @classmethod
    def of(cls, model: torch.nn.Module) -> Head:
        layer = model.get_output_embeddings()
        return cls(layer.weight, getattr(layer, "bias", None), logit_transform(model.config))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits, with the matmul in the weight's dtype (autocast off: see module doc)
        and the transform in float32."""
        return self.transform(F.linear(hidden.to(self.weight.dtype), self.weight, self.bias).float())


@dataclass
class TeacherRows:
    """The teacher's side for the counted rows: online (`hidden` + `head`) or offline top-k
    (`topk_logp` [M, k] log-probabilities at temperature `topk_T`, `topk_ids` [M, k]); the
    online teacher's hooked layers at the same rows in `features` (path -> [M, d]) when
    hidden-state terms read them (distill.lm.features). `valid` [M] (bool), when given, marks
    the rows that have a teacher position at all (a teacher with its own tokenizer can have
    fewer target tokens than the student: the other rows' terms count 0;
    distill.lm.cross_tokenizer)."""

    hidden: torch.Tensor | None = None
    head: Head | None = None
    topk_logp: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_T: float = 1.0
    features: dict[str, torch.Tensor] | None = None
    valid: torch.Tensor | None = None

    def rows(self, sl: slice) -> TeacherRows:
        if self.hidden is not None:
            valid = self.valid[sl] if self.valid is not None else None
            return TeacherRows(hidden=self.hidden[sl], head=self.head, valid=valid)
        return TeacherRows(topk_logp=self.topk_logp[sl], topk_ids=self.topk_ids[sl], topk_T=self.topk_T)


def log_rest(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(logp)) per row: the log-mass outside the given bins, floored."""
    return torch.log((-torch.expm1(torch.logsumexp(logp, -1))).clamp(min=TAIL_FLOOR))


def with_rest(logp: torch.Tensor) -> torch.Tensor:
    """Append the rest-of-vocabulary bin to top-k log-probabilities: [M, k] -> [M, k + 1]."""
    return torch.cat([logp, log_rest(logp)[:, None]], dim=-1)


def _log_softmax(logits: torch.Tensor, T: float) -> torch.Tensor:
    return F.log_softmax(logits if T == 1 else logits / T, -1)


def chunk_sums(logits, targets, terms: dict, teacher: TeacherRows | None,
               vocab: int | None) -> dict[str, torch.Tensor]:
    """Sums over one chunk's rows, from the student's float32 logits [rows, V]: "ce"
    (next-token NLL, full student vocabulary), "correct" (argmax hits), and each term's
    divergence. `vocab` restricts the divergences to the first `vocab` logits of both models
    (a declared shared slice); None uses them all."""
    logp = F.log_softmax(logits, -1)
    out = {
        "ce": -logp.gather(1, targets[:, None]).sum(),
        "correct": (logits.argmax(-1) == targets).sum().float(),
    }
    if not terms:
        return out
    if teacher is None:
        raise ValueError("token terms need the teacher's side (TeacherRows)")
    s_logits = logits[:, :vocab] if vocab is not None else logits
    t_logits = None
    if teacher.hidden is not None:
        t_logits = teacher.head.logits(teacher.hidden)
        t_logits = t_logits[:, :vocab] if vocab is not None else t_logits
    by_T: dict[float, tuple] = {}  # terms sharing a temperature share the log-softmaxes
    for name, term in terms.items():
        if term.T not in by_T:
            # at T = 1 over the whole vocabulary, the CE's log-softmax is the one needed
            s = logp if term.T == 1 and vocab is None else _log_softmax(s_logits, term.T)
            if t_logits is not None:
                t = _log_softmax(t_logits, term.T)
            else:  # offline top-k: the same k + 1 bins on both sides
                if teacher.topk_T != term.T:
                    raise ValueError(f"term '{name}' has T={term.T} but the stored teacher "
                                     f"log-probabilities are at T={teacher.topk_T}")
                s = with_rest(s.gather(1, teacher.topk_ids.long()))
                t = with_rest(teacher.topk_logp.float())
            by_T[term.T] = (s, t)
        value = term.per_token(*by_T[term.T])
        out[name] = (value if teacher.valid is None else torch.where(teacher.valid, value, 0.0)).sum()
    return out


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the weighted loss and, chunk by chunk, its gradients; backward scales
    them by the incoming gradient. Returns (loss, detached per-name sums).

    Autograd runs only from a chunk's output-layer values z (through the model's logit
    transform) to its loss; the output layer's part is written out (g = dloss/dz; dh = g W,
    dW += g^T h, db += sum g) so that no [V, H] gradient is allocated per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, spec):
        grad_h = torch.zeros_like(hidden)
        # a frozen output layer (a LoRA student's) needs no dW: skip its [V, H] matmuls
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias) if bias is not None else None
        sums: dict[str, torch.Tensor] = {}
        rows, weights = spec["rows"], spec["weights"]
        for start in range(0, len(hidden), rows):
            sl = slice(start, start + rows)
            h = hidden[sl].to(weight.dtype)
            teacher = spec["teacher"].rows(sl) if spec["teacher"] is not None else None
            with torch.autocast(hidden.device.type, enabled=False):
                z = F.linear(h, weight, bias).float()
                with torch.enable_grad():
                    z.requires_grad_()
                    part = chunk_sums(spec["transform"](z), spec["targets"][sl], spec["terms"],
                                      teacher, spec["vocab"])
                    loss = sum(weights[k] * v for k, v in part.items() if k in weights)
                    (g,) = torch.autograd.grad(loss / spec["count"], [z])
                g = g.to(weight.dtype)
                grad_h[sl] = g @ weight
                if grad_w is not None:
                    grad_w.addmm_(g.T, h)
                if grad_b is not None:
                    grad_b += g.sum(0)
            for k, v in part.items():
                sums[k] = sums.get(k, 0) + v.detach()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        total = sum(weights[k] * v for k, v in sums.items() if k in weights)
        return total / spec["count"], sums

    @staticmethod
    def backward(ctx, grad_total, _grad_sums):
        grads = [None if g is None else g * grad_total for g in ctx.saved_tensors]
        return *grads, None


def chunk_rows(vocab: int, chunk: int | None = None) -> int:
    """Rows per chunk: `chunk` if given, else CHUNK_ELEMENTS logits' worth."""
    return int(chunk) if chunk else max(1, CHUNK_ELEMENTS // vocab)


def token_loss(hidden: torch.Tensor, head: Head, targets: torch.Tensor, *, count,
               terms: dict | None = None, weights: dict[str, float] | None = None,
               teacher: TeacherRows | None = None, vocab: int | None = None,
               chunk: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted token loss over counted rows, normalised by `count`; and the unweighted sums.

    hidden [M, H] are the student's last hidden states at the M counted positions and
    targets [M] the next tokens there. `weights` maps "ce" and each of `terms` (name -> token
    term) to its weight; the loss is sum_name weight * sum_rows value / count. `count` is the
    number of counted tokens the caller normalises by: this micro-batch's M, or the whole
    accumulated batch's (see `distill.lm.distiller`). Returns (loss, {"ce", "correct", names:
    sums over the rows}). Differentiable with respect to `hidden` and the head's parameters.
    """
    terms = terms or {}
    weights = weights if weights is not None else {"ce": 1.0}
    # a chunk holds the teacher's logits too: size it by the larger vocabulary
    vocab_size = max(head.weight.shape[0], teacher.head.weight.shape[0] if teacher is not None
                     and teacher.head is not None else 0)
    spec = {"rows": chunk_rows(vocab_size, chunk), "targets": targets, "terms": terms,
            "weights": weights, "teacher": teacher, "vocab": vocab, "transform": head.transform,
            "count": torch.as_tensor(count, dtype=torch.float32).clamp(min=1)}
    if len(hidden) == 0:
        zero = hidden.sum() * 0 + head.weight.sum() * 0  # keeps the graph (DDP needs every grad)
        return zero, {k: zero.detach() for k in ["ce", "correct", *terms]}
    return _ChunkedLoss.apply(hidden, head.weight, head.bias, spec)


@torch.no_grad()
def token_sums(hidden, head: Head, targets, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Evaluation: summed next-token NLL and argmax hits over the rows, chunk by chunk."""
    rows = chunk_rows(head.weight.shape[0], chunk)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(hidden), rows):
        sl = slice(start, start + rows)
        for k, v in chunk_sums(head.logits(hidden[sl]), targets[sl], {}, None, None).items():
            sums[k] = sums.get(k, 0) + v
    return sums
