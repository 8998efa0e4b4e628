"""Hidden-state terms for language models (`lm_hidden`): what they cost per step and what they
do to the built-in pydoc example, on CPU with one thread.

* step: one training step's forward + backward of the Distiller (not the optimizer) at the
  pydoc config's shapes (teacher GPT-2 3 x 96, student 2 x 48, 32 rows of 128 byte tokens,
  every position but the first a target), for ce 0.5 + forward_kl 0.5, and the same plus
  `lm_hidden` (mse, then cosine) on the map [[1, 2], [2, 3]]. The variants alternate within each
  of --repeats rounds, so load from other processes falls on all of them alike; reported: the
  median seconds of each and the ratio to the token terms alone.
* quality (skipped with --no-quality): `distill run configs/lm/pydoc.yaml` trains the teacher
  once (stages=[teacher]); then the distill stage from that teacher, once per variant, each a
  whole `distill run` (stages=[distill], teacher.checkpoint=...). Reported: the distilled
  student's validation and test perplexity.

    PYTHONPATH=src python benchmarks/lm_hidden.py [--repeats 20] [--no-quality] [--out benchmarks/results/lm_hidden.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import git_state, machine_info

ROOT = Path(__file__).resolve().parents[1]
MAP = "[[1, 2], [2, 3]]"
VARIANTS = {
    "token terms": [],
    "+ lm_hidden mse": [f"loss.hid={{type: lm_hidden, weight: 1.0, layers: {MAP}}}"],
    "+ lm_hidden cosine": [f"loss.hid={{type: lm_hidden, weight: 1.0, loss: cosine, layers: {MAP}}}"],
}


def distillers() -> tuple[dict, object]:
    from distill.contracts import Batch
    from distill.lm.distiller import lm_distiller
    from distill.lm.models import create_lm
    from distill.losses.lm import ForwardKL, LMHidden

    def gpt(layers: int, width: int, heads: int):
        return create_lm("gpt2", {"n_layer": layers, "n_embd": width, "n_head": heads, "n_positions": 128,
                                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}, 258)

    torch.manual_seed(0)
    teacher, student = gpt(3, 96, 4), gpt(2, 48, 2)
    ids = torch.randint(0, 256, (32, 128))
    batch = Batch(ids, mask=torch.ones_like(ids), index=torch.arange(32))
    out = {}
    for name, hidden in (("token terms", None), ("+ lm_hidden mse", "mse"), ("+ lm_hidden cosine", "cosine")):
        terms = {"forward_kl": (ForwardKL(), 0.5)}
        if hidden:
            terms["hid"] = (LMHidden([[1, 2], [2, 3]], loss=hidden), 1.0)
        d = lm_distiller(teacher, student, terms, ce_weight=0.5)
        d.setup(batch)
        out[name] = d
    return out, batch


def step_seconds(repeats: int) -> dict:
    torch.set_num_threads(1)
    models, batch = distillers()
    seconds = {name: [] for name in models}
    for _ in range(repeats + 1):
        for name, d in models.items():
            d.zero_grad(set_to_none=True)
            start = time.perf_counter()
            d(batch).loss.backward()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s[1:]) for name, s in seconds.items()}  # the first warms up
    base = median["token terms"]
    return {name: {"median_s": m, "ratio": m / base} for name, m in median.items()}


def distill_run(out: Path, *overrides: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "distill", "run", "configs/lm/pydoc.yaml", *overrides, "--out", str(out),
           "--quiet", "--no-report"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return json.loads((out / "summary.json").read_text())["stages"]


def quality() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        teacher = distill_run(Path(tmp) / "teacher", "stages=[teacher]")["teacher"]
        ckpt = Path(tmp) / "teacher" / "teacher.safetensors"
        result = {"teacher": {"val_ppl": teacher["val_ppl"], "test_ppl": teacher["test_ppl"]}}
        for i, (name, extra) in enumerate(VARIANTS.items()):
            stage = distill_run(Path(tmp) / f"v{i}", "stages=[distill]", f"teacher.checkpoint={ckpt}", *extra)["distill"]
            result[name] = {"val_ppl": stage["val_ppl"], "test_ppl": stage["test_ppl"], "overrides": extra}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_hidden.json")
    args = parser.parse_args()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": 1, "machine": machine_info(),
              "git": git_state(), "step": step_seconds(args.repeats)}
    if not args.no_quality:
        result["quality"] = quality()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
