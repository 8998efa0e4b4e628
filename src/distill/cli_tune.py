"""`distill tune`: its arguments and its command (the search itself is distill.tune_search)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from .cli_args import positive, seed_count, trust_flags
from .config import load_config
from .errors import DistillError
from .runtime import Interrupted
from .trust import require_trust


def cmd_tune(args) -> int:
    """`distill tune`: an optuna search over the distill stage (distill.tune), then the best and
    the default config over --seeds for test numbers."""
    from .tune_report import comparison_rows
    from .tune_search import default_tune_dir, read_record, tune

    if args.resume:
        if args.config or args.overrides or args.out:
            raise DistillError("--resume continues the search with the config saved in its folder; "
                               "drop the config file, the overrides and --out (--trials M and --seeds "
                               "S extend it).")
        out = Path(args.resume)
        record = read_record(out)
        if record is not None:  # resuming imports the code its config names
            require_trust(record["config"], out, args.trust_code)
        cfg = None
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else default_tune_dir(cfg)
    try:
        result = tune(cfg, out, trials=args.trials, space=args.space, seeds=args.seeds,
                      resume=bool(args.resume), quiet=args.quiet, trust_checkpoint=args.trust_checkpoint)
    except (Interrupted, KeyboardInterrupt):
        print(f"Stopped. Finished trials are kept in {out}; continue with: distill tune --resume {out}",
              file=sys.stderr)
        return 130
    if not args.quiet:
        from rich.table import Table

        t = Table(title=f"test {result['metric']}: default vs tuned (selection on validation)")
        for column in ("config", "seeds", "scratch", "distilled", "gain"):
            t.add_column(column, justify="left" if column == "config" else "right")
        for row in comparison_rows(result):
            t.add_row(*row)
        Console().print(t)
        print(f"Search folder: {out}; best config: {out / 'best.yaml'}; report: {out / 'tune.md'}")
    return 0


def add_tune_parser(sub) -> None:
    """`distill tune [CONFIG] [key=value ...] --trials N --space KEY=LOW..HIGH[:log] ...`."""
    p = sub.add_parser("tune", help="search distillation settings with optuna; re-run the best over --seeds")
    p.add_argument("config", nargs="?", help="YAML config (default: the built-in digits demo)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    p.add_argument("--trials", type=positive, metavar="N",
                   help="trials that finish (complete, pruned or diverged); default 30")
    p.add_argument("--space", action="append", metavar="KEY=LOW..HIGH[:log]",
                   help="a searched key (repeatable); default loss.kd.T=1..10 loss.kd.weight=0..1 "
                   "(loss.ce.weight = 1 - it) train.lr=1e-4..1e-2:log")
    p.add_argument("--seeds", type=seed_count, metavar="S",
                   help="seeds the best and the default config are re-run over for test numbers (default 1)")
    p.add_argument("--out", help="search folder (default: runs/<name>-tune-<timestamp>/)")
    p.add_argument("--resume", metavar="OUT", help="continue an interrupted search until N trials finished")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    trust_flags(p, "resume a search whose config names package.module:attr code")
    p.set_defaults(func=cmd_tune)
