"""fp32 vs int8 ONNX students: test accuracy, file size and batch-1 latency (`distill export
--format onnx --quantize int8`).

Trains (or, with --reuse, reuses) small runs and exports each one's student with int8
quantization; the numbers are the export's own quantization.json (distill.quantize), so this
script measures exactly what a user gets:

* digits-cnn: the built-in digits (1 x 8 x 8 float features, standardized inside the graph),
  teacher cnn [32, 64] -> student cnn [16, 32], distilled. A conv graph: static QDQ int8,
  calibrated on 256 training samples.
* digits-mlp: the same data, teacher mlp [256, 256] -> student mlp [64]. Linear layers only:
  dynamic int8.
* folder-resnet8x4: a synthetic folder of 960 RGB 32 x 32 PNGs in 4 classes (stripes in four
  orientations with random phase, colour and noise), read as raw uint8 images; the student
  resnet8x4 (1.2 M parameters) trained alone (stages=[scratch], exported with --stage scratch).
  Static QDQ int8.

Timing: one torch thread for training (train.threads=1) and one onnxruntime thread (intra- and
inter-op) for every latency; batch 1, the median of --repeats runs after 20 warm-up runs, fp32
and int8 alternating (quantize.measure). Latencies are of this machine (recorded in the JSON),
test accuracy is on each run's test split (raw inputs through the exported graph).

    python benchmarks/int8.py                      # writes benchmarks/results/int8.json
    python benchmarks/int8.py --reuse --work /tmp/int8-runs --repeats 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import git_state, machine_info
from distill import quantize
from distill.cli import main as distill
from distill.export import export

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "int8.json"
COMMON = ["--quiet", "--no-report", "train.threads=1", "data.label_fraction=1.0"]
SETTINGS = {
    "digits-cnn": ("distill", ["teacher.model=cnn", "student.model=cnn", "student.kwargs.channels=[16,32]",
                               "stages=[teacher,distill]", "train.epochs=30", "train.lr=0.003"]),
    "digits-mlp": ("distill", ["teacher.model=mlp", "teacher.kwargs.hidden=[256,256]", "student.model=mlp",
                               "student.kwargs.hidden=[64]", "stages=[teacher,distill]", "train.epochs=30"]),
    "folder-resnet8x4": ("scratch", ["data.name=folder", "student.model=resnet8x4", "stages=[scratch]",
                                     "train.epochs=6", "data.batch_size=32"]),
}


def stripes(root: Path, per_class: int = 240, size: int = 32) -> Path:
    """4 classes of striped RGB images (0, 45, 90, 135 degrees), random phase, period, colours
    and pixel noise: a conv net learns them in a few epochs, not trivially at once."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    directions = [(1, 0), (1, 1), (0, 1), (1, -1)]
    for c, (dx, dy) in enumerate(directions):
        (root / f"stripes{c * 45:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period, phase = rng.uniform(4, 9), rng.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (dx * xx + dy * yy) / (period * np.hypot(dx, dy)) + phase)
            fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            img = wave[..., None] * fg + (1 - wave[..., None]) * bg + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"stripes{c * 45:03d}" / f"{i:03d}.png")
    return root


def train(name: str, work: Path, reuse: bool) -> tuple[Path, str, float | None]:
    """(run folder, stage to export, training wall seconds or None when reused)."""
    stage, overrides = SETTINGS[name]
    run = work / name
    if reuse and (run / "summary.json").is_file():
        return run, stage, None
    if name.startswith("folder"):
        images = work / "stripes"
        if not images.is_dir():
            stripes(images)
        overrides = [*overrides, f"data.path={images}"]
    start = time.perf_counter()
    if distill(["run", "--out", str(run), *COMMON, *overrides]) != 0:
        sys.exit(f"the {name} run failed")
    return run, stage, time.perf_counter() - start


def table(results: dict) -> str:
    lines = ["| setting | method | test acc fp32 / int8 % | agree % | size fp32 / int8 (KB) | size ratio "
             "| latency fp32 / int8 (ms) | latency ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        f, q = r["fp32"], r["int8"]
        lines.append(f"| {name} | {r['method']} | {f['acc']:.2f} / {q['acc']:.2f} | {r['agreement']:.2f} "
                     f"| {f['size_bytes'] / 1024:,.1f} / {q['size_bytes'] / 1024:,.1f} | {r['ratio']['size_bytes']:.3f} "
                     f"| {f['latency_ms']:.3f} / {q['latency_ms']:.3f} | {r['ratio']['latency_ms']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-int8-bench"), help="run folders")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=300, help="timed batch-1 runs per model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quantize.LATENCY_REPEATS = args.repeats
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.settings:
        run, stage, seconds = train(name, args.work, args.reuse)
        record = export(run, "onnx", run / "export", stage, quantize="int8")["int8"]
        summary = json.loads((run / "summary.json").read_text())
        results[name] = {**record, "stage": stage, "run_test_acc": summary["stages"][stage]["test_acc"],
                         "train_seconds": seconds, "overrides": SETTINGS[name][1]}
        print(f"{name}: fp32 {record['fp32']['acc']:.2f}% int8 {record['int8']['acc']:.2f}% "
              f"({record['method']})", flush=True)
    out = {"benchmark": "int8", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "threads": {"torch": torch.get_num_threads(), "onnxruntime": 1}, "repeats": args.repeats,
           "machine": machine_info(), "git": git_state(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table(results))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
