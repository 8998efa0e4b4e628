"""The language-model training path, this checkout against another one, side by side.

`distill run task=language_model` on the built-in pydoc text with small GPT-2 models (the
teacher trained once per round, then the distilled student with forward KL) is run from each
source tree in turn, alternating, --rounds times; each run's distill-stage epochs are read from
its metrics.jsonl (`seconds`: the training pass plus validation). Reported: the median epoch
seconds of each tree and their ratio. torch uses one thread (train.threads=1).

    git worktree add /tmp/before <commit>
    python benchmarks/lm_step.py --other /tmp/before [--rounds 3] [--out benchmarks/results/lm_step.json]
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

from common import git_state, machine_info

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "task=language_model", "data.name=pydoc", "data.max_length=64", "data.batch_size=16",
    "teacher.kwargs={n_layer: 2, n_embd: 64, n_head: 2, n_positions: 64}",
    "student.kwargs={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
    "teacher.train.epochs=1", "train.epochs=4", "stages=[teacher,distill]", "train.threads=1",
]


def epoch_seconds(tree: Path, out: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "distill", "run", *RUN, "--out", str(out), "--quiet", "--no-report"],
                   env=env, check=True, capture_output=True, cwd=tree)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in records if r["stage"] == "distill"][1:]  # the first epoch warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="another checkout (e.g. a git worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_step.json")
    args = parser.parse_args()
    trees = {"this": ROOT, "other": args.other.resolve()}
    seconds: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                seconds[name] += epoch_seconds(tree, Path(tmp) / f"{name}-{r}")
    median = {k: statistics.median(v) for k, v in seconds.items()}
    other = subprocess.run(["git", "-C", str(trees["other"]), "rev-parse", "HEAD"], capture_output=True,
                           text=True).stdout.strip()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": 1, "run": RUN,
              "machine": machine_info(), "git": git_state(), "other_commit": other,
              "epoch_seconds": seconds, "median": median, "this/other": median["this"] / median["other"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| tree | commit | distill epoch s (median) |\n|---|---|---:|")
    print(f"| this | {result['git'].get('commit', '')[:8]} | {median['this']:.3f} |")
    print(f"| other | {other[:8]} | {median['other']:.3f} |")
    print(f"\nthis/other: {result['this/other']:.3f}  (written to {args.out})")


if __name__ == "__main__":
    main()
