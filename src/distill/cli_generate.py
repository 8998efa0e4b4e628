"""`distill generate`: a teacher writes completions for prompts (sequence-level KD; the work
itself is distill.lm.generate)."""

from __future__ import annotations

import argparse
import sys

from .cli_args import positive, trust_flags
from .errors import DistillError
from .runtime import Interrupted
from .trust import Trust


def _probability(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None


def cmd_generate(args) -> int:
    from .lm.generation import generate  # needs the lm extra; `distill --help` must not

    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k),
                                  ("top_p", args.top_p)) if v is not None}
    if args.greedy and sampling:
        raise DistillError(f"--greedy takes the most likely token; drop {', '.join('--' + k.replace('_', '-') for k in sampling)} "
                           "(or drop --greedy to sample).")
    try:
        result = generate(args.model, args.prompts, args.out, stage=args.stage, tokenizer=args.tokenizer,
                          max_new_tokens=args.max_new_tokens, greedy=args.greedy, seed=args.seed,
                          batch_size=args.batch_size, device=args.device, quiet=args.quiet,
                          trust=Trust(code=args.trust_code, checkpoint=args.trust_checkpoint), **sampling)
    except (Interrupted, KeyboardInterrupt):
        print(f"Stopped. The completions written so far are kept in {args.out}.partial; rerun the "
              "same command to continue.", file=sys.stderr)
        return 130
    if result["note"]:
        print(f"note: {result['note']}.", file=sys.stderr)
    if not args.quiet:
        done = (f"{result['generated']} generated ({result['new_tokens']:,} new tokens)"
                + (f", {result['reused']} kept from the stopped run" if result["reused"] else "")
                if result["generated"] else "already complete")
        print(f"Wrote {result['path']}: {result['prompts']} prompts, {done}.")
    return 0


def add_generate_parser(sub) -> None:
    """`distill generate MODEL --prompts FILE.jsonl --out FILE.jsonl [decoding options]`."""
    p = sub.add_parser("generate", help="a language model writes completions for prompts (sequence-level KD data)")
    p.add_argument("model", help="a language-model run folder (see --stage), or a local Hugging Face model folder")
    p.add_argument("--prompts", required=True, metavar="FILE.jsonl",
                   help="one JSON object per line with a 'prompt' (or 'text') field")
    p.add_argument("--out", required=True, metavar="FILE.jsonl",
                   help="the {prompt, completion} lines (data.name: jsonl reads them); a stopped run continues")
    p.add_argument("--stage", default="teacher", help="a run folder's stage (default teacher)")
    p.add_argument("--tokenizer", help="a model folder's tokenizer: byte or a local folder (default: the model folder's)")
    p.add_argument("--max-new-tokens", type=positive, default=128, metavar="N", help="tokens per completion at most (default 128)")
    p.add_argument("--greedy", action="store_true", help="take the most likely token each step (default: sample)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1)")
    p.add_argument("--top-k", type=positive, metavar="K", help="sample from the K most likely tokens only")
    p.add_argument("--top-p", type=_probability, metavar="P", help="sample from the smallest set holding probability P (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed writes the same file (default 0)")
    p.add_argument("--batch-size", type=positive, default=16, metavar="B", help="prompts per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    trust_flags(p)
    p.set_defaults(func=cmd_generate)
