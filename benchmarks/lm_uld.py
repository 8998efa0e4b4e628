"""Cross-tokenizer distillation (ULD) on the built-in pydoc text: a BPE teacher, another student tokenizer.

1. The pydoc topics (pydoc_data, shipped with Python) written as one .txt file, one example per
   paragraph (data.name=text).
2. A byte-level BPE tokenizer with --bpe-vocab tokens trained on that text with the `tokenizers`
   package (locally; on all of it, as a pretrained model's tokenizer would have seen it: only
   the tokenizer, never the models, sees the validation and test paragraphs).
3. The teacher (configs/lm/pydoc.yaml's teacher) trained on its own BPE rows: `distill run`
   with data.tokenizer=<bpe>, data.packing=false, stages=[teacher].
4. The student (the config's student) on its own tokenizer: the byte tokenizer, or with
   --student-bpe-vocab N a second BPE of N tokens trained the same way, from scratch and
   distilled from that teacher through data.teacher_tokenizer=<bpe>, teacher.checkpoint=<step 3>,
   with ce (weight 0.5, the config's) + uld at each of --uld-weights, stages=[scratch, distill],
   per seed. Reports validation and test perplexity (per student token) and the paired gain
   (distilled - scratch; lower is better).

    python benchmarks/lm_uld.py                                # byte student, 1 seed, 1 thread
    python benchmarks/lm_uld.py --student-bpe-vocab 1024 --uld-weights 0.1 0.5 1.0 --seeds 3

Extra arguments are dotted key=value overrides for the student runs. Writes
benchmarks/results/lm_uld.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import distill
from common import ROOT, git_state, machine_info

CONFIG = ROOT / "configs" / "lm" / "pydoc.yaml"


def write_corpus(path: Path) -> Path:
    from pydoc_data.topics import topics

    path.write_text("\n\n".join(topics[k].strip() for k in sorted(topics)), encoding="utf-8")
    return path


def train_bpe(text: Path, folder: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(text)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>").save_pretrained(str(folder))
    return folder


def timed_run(overrides: list[str], out: Path) -> tuple[dict, float]:
    cfg = distill.load_config(CONFIG, overrides)
    start = time.perf_counter()
    summary = distill.run(cfg, out, quiet=True)
    return summary, time.perf_counter() - start


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def fmt(d: dict) -> str:
    return f"{d['mean']:.3f}" + (f" ± {d['std']:.3f}" if d["std"] is not None else "")


def summarise(runs: list[dict]) -> dict:
    stages = ("scratch", "distill")
    table = {s: {k: mean_std([r["stages"][s][k] for r in runs]) for k in ("val_ppl", "test_ppl")} for s in stages}
    gain = {k: mean_std([r["stages"]["distill"][k] - r["stages"]["scratch"][k] for r in runs])
            for k in ("val_ppl", "test_ppl")}
    seconds = {s: mean_std([r["stages"][s]["seconds"] for r in runs]) for s in stages}
    return {"runs": runs, "table": table, "gain": gain, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--bpe-vocab", type=int, default=512)
    parser.add_argument("--student-bpe-vocab", type=int, default=0, help="0: the byte tokenizer")
    parser.add_argument("--uld-weights", type=float, nargs="+", default=[1.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_uld.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lm_uld-"))
    text = write_corpus(work / "pydoc.txt")
    bpe = train_bpe(text, work / "bpe", args.bpe_vocab)
    own = train_bpe(text, work / "student-bpe", args.student_bpe_vocab) if args.student_bpe_vocab else "byte"
    data = ["data.name=text", f"data.path={text}", "data.packing=false", f"train.threads={args.threads}"]
    teacher_run, teacher_wall = timed_run([*data, f"data.tokenizer={bpe}", "stages=[teacher]"], work / "teacher")
    teacher = teacher_run["stages"]["teacher"]
    print(f"teacher on BPE-{args.bpe_vocab}: {teacher_wall:.0f} s, val ppl {teacher['val_ppl']:.3f} per BPE token",
          flush=True)
    student = [*data, f"data.tokenizer={own}", f"data.teacher_tokenizer={bpe}",
               f"teacher.checkpoint={work / 'teacher' / 'teacher.safetensors'}", "stages=[scratch, distill]",
               "loss.forward_kl.weight=0", *args.overrides]
    sweep = {}
    for weight in args.uld_weights:
        runs = []
        for seed in range(args.seeds):
            summary, wall = timed_run([*student, f"loss.uld.weight={weight}", f"seed={seed}"],
                                      work / f"uld-{weight}-seed-{seed}")
            runs.append({"seed": seed, "wall_seconds": wall, "stages": summary["stages"], "data": summary["data"]})
            print(f"uld {weight}, seed {seed}: {wall:.0f} s, val ppl scratch "
                  f"{summary['stages']['scratch']['val_ppl']:.3f}, distill {summary['stages']['distill']['val_ppl']:.3f}",
                  flush=True)
        sweep[str(weight)] = summarise(runs)
    result = {"config": str(CONFIG.relative_to(ROOT)), "data": data, "student_overrides": student,
              "bpe_vocab": args.bpe_vocab, "student_tokenizer": "byte" if own == "byte" else f"bpe-{args.student_bpe_vocab}",
              "teacher": teacher, "teacher_wall_seconds": teacher_wall, "uld_weights": sweep,
              "machine": machine_info(), "git": git_state()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{args.seeds} seed(s); student ({result['student_tokenizer']}) perplexity (lower is better)\n")
    print("| uld weight | scratch val ppl | distill val ppl | gain val | gain test | s (scratch / distill) |")
    print("|---|---|---|---|---|---|")
    for weight, r in sweep.items():
        print(f"| {weight} | {fmt(r['table']['scratch']['val_ppl'])} | {fmt(r['table']['distill']['val_ppl'])} | "
              f"{fmt(r['gain']['val_ppl'])} | {fmt(r['gain']['test_ppl'])} | "
              f"{r['seconds']['scratch']['mean']:.0f} / {r['seconds']['distill']['mean']:.0f} |")
    print(f"\nteacher (BPE-{args.bpe_vocab}, its own rows): val ppl {teacher['val_ppl']:.3f} per BPE token")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
