"""Run by test_fsdp.py under torchrun (2 gloo processes): one accumulated step of a tiny GPT-2
(head tied to the input embedding, chunked loss with a teacher term) under FSDP2, each process
on its half of the batch, against the gradients one process computes on the whole batch.
Rank 0 writes {parameter name: max |FSDP grad - reference grad|} and the reference norms as JSON,
whether the trained copy's teacher was sharded, and how far the caller's teacher, freed while the
copy trained, is from its original weights once `finish` has gathered them back.

usage: torchrun --nproc_per_node=2 fsdp_grads.py OUT.json [ac] [bf16]
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch.distributed.tensor import DTensor

from distill.config_schema import TrainConfig
from distill.contracts import Batch
from distill.engine import FiniteWatch, accumulate_step
from distill.lm.distiller import lm_distiller
from distill.lm.models import create_lm
from distill.losses.lm import ForwardKL
from distill.runtime import init_distributed, rank, world_size
from distill.sharding import finish, release, working_copy, wrap

V, CPU = 40, torch.device("cpu")


def build():
    kw = {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 32,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    torch.manual_seed(0)
    student = create_lm("gpt2", kw, V)
    torch.manual_seed(1)
    teacher = create_lm("gpt2", kw, V)
    return lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.5)}, ce_weight=1.0, chunk=5)


def rows() -> Batch:
    """8 right-padded rows of ragged lengths (so the halves count different token numbers)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V - 1, (8, 12), generator=g)
    mask = torch.zeros(8, 12, dtype=torch.long)
    for r in range(8):
        mask[r, 2:12 - r] = 1
        ids[r, 12 - r:] = V - 1
    return Batch(ids, mask=mask, index=torch.arange(8))


def grads(cfg: TrainConfig, distiller, model, batch: Batch) -> dict:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    accumulate_step(model, distiller, batch, cfg, scaler, CPU, FiniteWatch(distiller, CPU), 0, 0)
    return {n: p.grad for n, p in distiller.named_parameters()}


def main() -> None:
    out, flags = sys.argv[1], set(sys.argv[2:])
    precision = "bf16" if "bf16" in flags else "fp32"
    cfg = TrainConfig(parallel="fsdp", accumulate=2, activation_checkpointing="ac" in flags, precision=precision)
    reference = build()  # before the process group: one process, the whole batch, no sharding
    world, os.environ["WORLD_SIZE"] = os.environ["WORLD_SIZE"], "1"  # the engine reads it
    ref = grads(TrainConfig(accumulate=2), reference, reference, rows())
    os.environ["WORLD_SIZE"] = world
    init_distributed(CPU)
    caller = build()
    work = working_copy(caller, cfg)
    model = wrap(work, cfg, CPU)
    release(caller, work)
    half = rows().split(world_size())[rank()]
    got = {n: g.full_tensor() for n, g in grads(cfg, work, model, half).items()}
    teacher_sharded = all(isinstance(p, DTensor) for p in work.teacher.parameters())
    finish(caller, work, cfg, {})
    original = build().teacher.state_dict()
    restored = max((caller.teacher.state_dict()[k] - v).abs().max().item() for k, v in original.items())
    if rank() == 0:
        diffs = {n: (got[n].float() - ref[n]).abs().max().item() for n in ref}
        norms = {n: ref[n].norm().item() for n in ref}
        with open(out, "w") as f:
            json.dump({"diff": diffs, "norm": norms, "names": sorted(got), "teacher_sharded": teacher_sharded,
                       "teacher_restored": restored}, f)


if __name__ == "__main__":
    main()
