"""Sequence-level KD on the built-in example: configs/lm/pydoc.yaml's teacher writes completions,
configs/lm/seqkd.yaml trains students on them, and every model is scored on pydoc's test split.

1. `distill run configs/lm/pydoc.yaml` (seed 0): the teacher, a scratch student and a
   word-level-KD student, all on the reference text.
2. Prompts: the first 48 characters of each paragraph (longer than 64) of the *training* topics
   only (the run's own split), so no validation or test text reaches the teacher's prompts.
3. `distill.lm.generate` with the teacher (greedy, 80 new tokens): timed, tokens per second.
4. `distill run configs/lm/seqkd.yaml`: scratch = Seq-KD (CE on the completions), distill =
   Seq-KD + word-level KD.
5. Test perplexity on pydoc's test split (the reference text) of every student, so the
   students trained on text and on the teacher's completions are compared on the same tokens.

    python benchmarks/lm_seqkd.py                    # greedy; 1 thread; about 12 minutes on 2 cores
    python benchmarks/lm_seqkd.py --top-p 0.9 --pydoc-run /tmp/lm_seqkd-x/pydoc --out sampled.json
    python benchmarks/lm_seqkd.py train.epochs=1     # dotted overrides of both runs

`--top-p P` (or `--temperature T`) samples instead of decoding greedily; `--pydoc-run DIR`
reuses step 1's run folder of an earlier call.

Writes benchmarks/results/lm_seqkd.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import distill
from common import ROOT, git_state, machine_info
from distill.lm import evaluate_lm, generate
from distill.lm.data import _split, build_lm_data, read_examples
from distill.lm.tools import load_run

PYDOC, SEQKD = ROOT / "configs" / "lm" / "pydoc.yaml", ROOT / "configs" / "lm" / "seqkd.yaml"


def train_prompts(cfg, path: Path) -> int:
    """Prompts from the paragraphs of the run's training topics (distill.lm.data's split)."""
    examples = read_examples("pydoc", None)
    train = _split(len(examples), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)["train"]
    prompts = [p[:48] for i in sorted(train) for p in examples[i].completion.split("\n\n") if len(p) > 64]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return len(prompts)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--top-p", type=float, help="sample (nucleus) instead of greedy decoding")
    parser.add_argument("--temperature", type=float, help="sample at this temperature instead of greedy decoding")
    parser.add_argument("--pydoc-run", help="reuse the run folder of step 1 (written by an earlier call)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_seqkd.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = [f"train.threads={args.threads}", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="lm_seqkd-"))
    pydoc_cfg = distill.load_config(PYDOC, base)
    pydoc = Path(args.pydoc_run) if args.pydoc_run else work / "pydoc"
    if args.pydoc_run:
        pydoc_summary, pydoc_s = json.loads((pydoc / "summary.json").read_text()), None
    else:
        pydoc_summary, pydoc_s = timed(lambda: distill.run(pydoc_cfg, pydoc, quiet=True))
    n_prompts = train_prompts(pydoc_cfg, work / "prompts.jsonl")
    sampling = {k: v for k, v in (("top_p", args.top_p), ("temperature", args.temperature)) if v is not None}
    gen, gen_s = timed(lambda: generate(pydoc, work / "prompts.jsonl", work / "seqkd.jsonl", greedy=not sampling,
                                        max_new_tokens=args.max_new_tokens, batch_size=64, **sampling))
    seqkd_cfg = distill.load_config(SEQKD, [*base, f"data.path={work / 'seqkd.jsonl'}",
                                            f"teacher.checkpoint={pydoc / 'teacher.safetensors'}"])
    seqkd_summary, seqkd_s = timed(lambda: distill.run(seqkd_cfg, work / "seqkd", quiet=True))
    data = build_lm_data(pydoc_cfg.data, seed=pydoc_cfg.seed)  # the reference text's test split
    test = {}
    for name, run_dir, stage in [("teacher", pydoc, "teacher"), ("scratch on text", pydoc, "scratch"),
                                 ("word-KD on text", pydoc, "distill"), ("Seq-KD", work / "seqkd", "scratch"),
                                 ("Seq-KD + word-KD", work / "seqkd", "distill")]:
        model, _ = load_run(run_dir, stage, data=data)
        test[name] = evaluate_lm(model, data.test, "cpu")["ppl"]
    result = {"config": [str(PYDOC.relative_to(ROOT)), str(SEQKD.relative_to(ROOT))], "overrides": base,
              "prompts": n_prompts, "decoding": sampling or "greedy", "generate": {**gen, "seconds": gen_s, "tokens_per_second": gen["new_tokens"] / gen_s},
              "pydoc_run_seconds": pydoc_s, "seqkd_run_seconds": seqkd_s, "pydoc_test_ppl": test,
              "seqkd_val_ppl": {s: seqkd_summary["stages"][s]["val_ppl"] for s in ("scratch", "distill")},
              "pydoc_val_ppl": {s: pydoc_summary["stages"][s]["val_ppl"] for s in ("teacher", "scratch", "distill")},
              "seqkd_counts": seqkd_summary["data"], "machine": machine_info(), "git": git_state()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_prompts} prompts, {gen['new_tokens']:,} new tokens in {gen_s:.1f} s "
          f"({gen['new_tokens'] / gen_s:,.0f} tokens/s); {gen['no_eos']} stopped at the limit\n")
    print("| model | pydoc test perplexity |\n|---|---|")
    for name, ppl in test.items():
        print(f"| {name} | {ppl:.3f} |")


if __name__ == "__main__":
    main()
