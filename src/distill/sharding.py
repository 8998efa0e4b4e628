"""FSDP2 for language-model runs (`train.parallel: fsdp`) and activation checkpointing
(`train.activation_checkpointing`).

Under torchrun with fsdp, `fit` trains a *working copy* of the Distiller whose student is
sharded with `torch.distributed.fsdp.fully_shard`: one FSDP group per transformer block (the
classes the Hugging Face model lists in `_no_split_modules`), then the Distiller itself as the
root group, which holds the rest (embeddings, final norm, output layer). The root being the
Distiller, not the student, is what makes the chunked loss work on a sharded head:
`lm.chunked` applies the output layer outside the model's forward, but inside
`Distiller.forward`, so the root's pre-forward all-gather has put the unsharded weight in place
when `Head.of(student)` reads it, and the loss's autograd Function returns its gradient to that
unsharded tensor. GPT-2's head is its input embedding: one parameter, one gradient, summed by
autograd over both uses, then reduce-scattered once into the shard by the root's post-backward.

The teacher is sharded the same way (one group per block, then the teacher as its own root
group), inference only: it is outside the Distiller's module tree, so never in the optimizer,
the gradients or the checkpoint. Its root group (embeddings, final norm, output layer) is
gathered around each Distiller forward by hooks, since the chunked loss reads the teacher's
output layer there too, after the teacher's trunk has run (`shard_teacher`).

The caller's parameters (student and teacher) are freed while the copy trains (`release`). At
the end of `fit` the copy's weights are gathered (full tensors) back into the caller's
Distiller and its teacher, and the selected weights into `FitResult.best_state`, so the stage's
weights file, the later stages and everything that reads them are as with DDP.

Mixed precision is FSDP's `MixedPrecisionPolicy` (parameters all-gathered in bf16, gradients
reduced in fp32) instead of autocast; fp16 is refused (see `check_precision`). Gradient accumulation skips the
reduce-scatter on non-final micro-batches (`set_requires_gradient_sync`).

One process (no torchrun) with fsdp: nothing to shard; it trains exactly as ddp does in one
process (autocast for bf16/fp16).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .errors import DistillError
from .runtime import DTYPES, distributed, wrap_ddp


def sharded(cfg) -> bool:
    """FSDP is on: train.parallel=fsdp under torchrun (more than one process)."""
    return cfg.parallel == "fsdp" and distributed()


def check_even_shares(rows: dict[str, int], batch_size: int, accumulate: int, world: int) -> None:
    """Under FSDP every process must run the same forward passes (each is a collective
    all-gather), so every process's share of every batch must hold at least `accumulate`
    rows (training) and one row (validation): shares differ by at most a row, but a process
    with fewer rows runs fewer micro-batches, and one with none skips the forward."""
    for split, need in (("train", accumulate), ("val", 1)):
        n = rows[split]
        for size in {min(batch_size, n), n % batch_size or batch_size}:
            if size // world < need:
                raise DistillError(
                    f"train.parallel=fsdp: a {split} batch of {size} rows gives some of the {world} "
                    f"processes fewer than {need} row(s) ({split} has {n} rows, data.batch_size={batch_size}"
                    f"{f', train.accumulate={accumulate}' if split == 'train' else ''}), and every process "
                    "must run the same forward passes. Choose data.batch_size so that the last batch "
                    f"too has at least {need * world} rows, or use train.parallel=ddp."
                )


def check_precision(precision: str) -> None:
    """fp16 needs a GradScaler whose inf check spans every process's shard of the gradients
    (else one process skips a step that another takes); distill's does not, so bf16 only."""
    if precision == "fp16":
        raise DistillError("train.parallel=fsdp trains in fp32 or bf16: fp16's gradient scaler would "
                           "check each process's gradient shard on its own. Set train.precision=bf16.")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: modules of the classes Hugging Face marks as never to be
    split across devices (`_no_split_modules`, e.g. GPT2Block, LlamaDecoderLayer)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise DistillError(
            f"train.parallel=fsdp shards a transformer block by block, but the student "
            f"({type(model).__name__}) names no block classes (_no_split_modules). Use a Hugging Face "
            "causal LM (gpt2, llama, ...) or train.parallel=ddp."
        )
    return found


def working_copy(distiller: nn.Module, cfg) -> nn.Module:
    """The Distiller that `fit` trains: itself, or under FSDP a copy (student, teacher and the
    live teacher source around it) whose parameters are the caller's own tensors until
    fully_shard replaces them by shards, so no second full copy exists; `release` then frees
    the caller's. A stored teacher source (a cache) is shared, not copied."""
    if not sharded(cfg):
        return distiller
    memo = {} if distiller.source is distiller.live else {id(distiller.source): distiller.source}
    memo.update({id(t): t for m in _models(distiller) for t in (*m.parameters(), *m.buffers())})
    return copy.deepcopy(distiller, memo)


def _models(distiller: nn.Module) -> list[nn.Module]:
    return [distiller] + ([distiller.teacher] if distiller.teacher is not None else [])


def release(distiller: nn.Module, work: nn.Module) -> None:
    """Free the caller's parameter storage (student and teacher) while its sharded copy trains
    (`finish` refills it)."""
    if work is not distiller:
        for model in _models(distiller):
            for p in model.parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def checkpoint_activations(distiller: nn.Module) -> None:
    """Recompute each student block's activations in backward (torch.utils.checkpoint with
    use_reentrant=False, through Hugging Face's per-layer hook; only in train mode)."""
    student = distiller.student
    if not getattr(student, "supports_gradient_checkpointing", False):
        raise DistillError(f"train.activation_checkpointing recomputes a Hugging Face transformer's "
                           f"blocks; the student ({type(student).__name__}) has none it can checkpoint. "
                           "Set train.activation_checkpointing=false.")
    student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def wrap(distiller: nn.Module, cfg, device: torch.device) -> nn.Module:
    """The module the engine runs forward on: the Distiller sharded in place (FSDP), in DDP
    under torchrun, or itself. Activation checkpointing goes on first, so each block's
    checkpointed call includes FSDP's all-gather and is re-gathered when recomputed."""
    if cfg.activation_checkpointing:
        checkpoint_activations(distiller)
    if not sharded(cfg):
        return wrap_ddp(distiller, device)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    check_precision(cfg.precision)
    param_dtype = None if cfg.precision == "fp32" else DTYPES[cfg.precision]
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    broadcast_from_first(distiller)
    for block in transformer_blocks(distiller.student):
        fully_shard(block, mp_policy=policy)
    fully_shard(distiller, mp_policy=policy)  # the root: see the module docstring
    if distiller.teacher is not None:
        shard_teacher(distiller.teacher, policy, device)
        distiller.register_forward_pre_hook(lambda *_: distiller.teacher.unshard())
        distiller.register_forward_hook(lambda *_: distiller.teacher.reshard())
    return distiller


@torch.no_grad()
def broadcast_from_first(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process, as DDP does when it wraps: a module
    created after each process seeded its own random stream (lm_hidden's projectors, sized at
    setup) starts from another draw on each, and fully_shard would stitch the draws together."""
    import torch.distributed as dist

    for t in (*module.parameters(), *module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def shard_teacher(teacher: nn.Module, policy, device: torch.device) -> None:
    """Shard an inference-only teacher: each block, then the model as its root group. FSDP
    settles which group is a root at the first forward through it, and the loss runs only the
    teacher's trunk (lm.models.hidden_states), whose first block would settle as a root of its
    own; one forward of a 2-token probe through the whole teacher settles it (public API only).
    The root keeps its parameters gathered after that forward: reshard them."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(teacher):
        fully_shard(block, mp_policy=policy)
    fully_shard(teacher, mp_policy=policy)
    teacher(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False)
    teacher.reshard()


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def autocast_precision(model: nn.Module, precision: str) -> str:
    """The precision autocast runs in: none under FSDP (its policy casts the parameters)."""
    return "fp32" if is_sharded(model) else precision


def gradient_sync(model: nn.Module, last: bool):
    """A context for one micro-batch's backward: gradients are synchronised on the last one
    only (DDP's no_sync, FSDP2's set_requires_gradient_sync)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return model.no_sync() if distributed() and not last else contextlib.nullcontext()


@contextlib.contextmanager
def unsharded_root(module: nn.Module):
    """The root group's parameters (embeddings, head) gathered, for work outside the
    Distiller's forward (evaluation); each block still gathers its own."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def full_state(state: dict) -> dict:
    """A state dict with every sharded tensor gathered whole (every process calls this)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


@torch.no_grad()
def _fill(model: nn.Module, trained: nn.Module) -> None:
    """`trained`'s parameters, gathered whole, and buffers (never sharded) into `model`'s
    freed ones. By parameter, not by state dict: a LoRA student's holds only its adapters."""
    full = full_state(dict(trained.named_parameters()))
    for name, p in model.named_parameters():  # one Parameter per tied pair: the tie stays
        p.data = full[name]
    buffers = dict(trained.named_buffers())
    for name, b in model.named_buffers():
        b.data = buffers[name]


def finish(distiller: nn.Module, work: nn.Module, cfg, best_state: dict) -> dict:
    """After training: the trained weights into `distiller` (if it trained a copy) and the
    selected weights as full tensors; activation checkpointing off again."""
    if work is not distiller:
        if work.teacher is not None:  # first, and its shards let go before the student gathers
            _fill(distiller.teacher, work.teacher)
            if work.source is work.live:
                work.source = None
            work.__dict__["teacher"] = work.live = None
        _fill(distiller, work)
        best_state = full_state(best_state)
    if cfg.activation_checkpointing:  # nothing of it stays on the trained student
        work.student.activation_checkpointing_disable()
    return best_state
