"""Command line: `distill run [CONFIG] [key=value ...]`.

User errors (DistillError) print one paragraph naming the fix and exit with status 2; nothing
already written is touched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from .cli_args import positive, seed_count, trust_flags
from .cli_generate import add_generate_parser
from .cli_tune import add_tune_parser
from .config import load_config, to_yaml
from .errors import DistillError, clip, plain
from .listing import cmd_losses, cmd_models
from .runtime import Interrupted, is_main, resolve_device, stop_requested
from .tables import seeds_table, summary_table
from .tasks import export_formats, make_task, task_of_run
from .trust import Trust, code_paths
from .version import __version__


def _resume_target(args):
    """(config, folder, seeds) of `--resume RUN`: a single run (whose schedule overrides
    restart the stages they change) or a --seeds folder."""
    from .restart import restart_once
    from .seeds import read_record

    if args.config or args.out:
        raise DistillError(
            "--resume continues a run with the config saved in its folder; drop the config "
            "file and --out (overrides of train.* restart the stages they change)."
        )
    out = Path(args.resume)
    record = read_record(out)  # a --seeds folder: its base config and N
    if record is not None:
        cfg, n, done = record
        if args.seeds not in (1, n):
            raise DistillError(f"'{out}' is a --seeds {n} run; resume it with --seeds {n} or "
                               "without --seeds.")
        if done:
            raise DistillError(f"'{out}' already holds a finished --seeds run ({n} seeds). "
                               f"Choose another --out, or delete it; `distill report {out}` "
                               "writes its report again.")
    else:
        _check_single_resume(out, args.seeds)
        cfg, n = load_config(out / "config.yaml"), 1
        if args.overrides and not args.print_config:
            cfg, redo = restart_once(out, args.overrides, cfg.train.device)
            print(f"Restarting {', '.join(redo)} from epoch 0 with {' '.join(args.overrides)}.",
                  file=sys.stderr)
    if record is not None and args.overrides:
        raise DistillError("--resume of a --seeds folder takes no overrides; resume each "
                           f"seed's folder ({out}/seed-<k>) with them, or start a new run.")
    return cfg, out, n


def cmd_run(args) -> int:
    from .engine import NonFiniteLoss
    from .seeds import check_resume_trust
    from .stages import default_run_dir, run

    if args.resume:
        if not args.print_config:  # resuming runs the folder's code: refused before anything changes
            check_resume_trust(Path(args.resume), args.trust_code)
        cfg, out, n = _resume_target(args)
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        n = args.seeds
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if n > 1:
        return _run_seeds(cfg, n, out, args)
    try:
        summary = run(cfg, out, quiet=args.quiet, resume=bool(args.resume),
                      trust_checkpoint=args.trust_checkpoint)
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{e} To retry with other settings: {_resume_command(cfg, out)} "
                            "train.lr=<lower> (restarts the stages it changes).") from None
    except Interrupted as stop:
        saved = "A checkpoint was written. " if stop.checkpointed else ""
        print(f"Stopped. {saved}Continue with: {_resume_command(cfg, out)}", file=sys.stderr)
        return 130
    if not is_main():  # under torchrun only rank 0 reports
        return 0
    own = Trust(code=True, checkpoint=args.trust_checkpoint)  # the run just imported its code
    report = None if args.no_report else make_task(cfg).write_report(out, own)
    if not args.quiet:
        console = Console()
        console.print(summary_table(summary))
        console.print(f"Run folder: {out}  ({summary['wall_seconds']:.1f} s)" + (f"; report: {report}" if report else ""))
    return 0


def _resume_command(cfg, out: Path) -> str:
    """The command that continues `out`, with --trust-code when its config names code."""
    return f"distill run --resume {out}" + (" --trust-code" if code_paths(cfg) else "")


def _check_single_resume(out: Path, seeds: int) -> None:
    """`--resume out` without a seeds record: out must hold one run's config.yaml."""
    if not (out / "config.yaml").exists():
        hint = "" if not any(out.glob("seed-*/config.yaml")) else (
            f" It holds seed-<k>/ runs but no seeds-run.json (written since --seeds folders "
            f"resume as one): continue each unfinished one with `distill run --resume "
            f"{out}/seed-<k>`, then `distill report {out}`.")
        raise DistillError(f"'{out}' holds no run to resume (no config.yaml there).{hint}")
    if seeds > 1:
        raise DistillError(f"'{out}' holds one run, not a --seeds run: resume it without --seeds.")


def _run_seeds(cfg, n: int, out: Path, args) -> int:
    """Every stage for seeds seed..seed+N-1 into out/seed-<k>/, then mean +- std and the paired gain.

    out/seeds-run.json (the base config and N) is written before the first seed starts, so an
    interrupted folder resumes like one run: `--resume out` skips finished seeds, continues the
    interrupted one from its checkpoint, runs the rest, then writes the aggregate report."""
    from .run_folder import claim, legacy, sweep
    from .seeds import aggregate, check_new_folder, load_summary, write_folder_report, write_record
    from .stages import run

    seeds = list(range(cfg.seed, cfg.seed + n))
    created = marked = False
    if not args.resume and is_main():  # rank 0 checks and writes; under torchrun the others follow its runs
        check_new_folder(out, seeds)
        resolve_device(cfg.train.device)  # a device this machine lacks: refused before any file
        created = not out.exists()
        marked = claim(out, "seeds", "--out")  # distill's marker first; a folder of yours is refused
        write_record(out, cfg, n)
    elif is_main():
        claim(out, "seeds", "--resume", adopt=legacy(out, "seeds"))  # an older folder gets the marker
    # Which seeds finished or started, read once before any process writes a seed folder.
    finished = {s for s in seeds if (out / f"seed-{s}" / "summary.json").is_file()}
    started = {s for s in seeds if (out / f"seed-{s}" / "config.yaml").is_file()}
    summaries = []
    try:
        for seed in seeds:
            run_dir = out / f"seed-{seed}"
            if seed in finished:
                summaries.append(load_summary(run_dir))
                continue
            resume = seed in started  # interrupted: continue from its checkpoint
            seed_cfg = load_config(run_dir / "config.yaml") if resume else cfg.model_copy(update={"seed": seed})
            try:
                summaries.append(run(seed_cfg, run_dir, quiet=args.quiet, resume=resume,
                                     trust_checkpoint=args.trust_checkpoint))
            except DistillError:
                if seed == seeds[0] and not args.resume and not (run_dir / "config.yaml").exists():
                    _forget_record(out, created, marked)  # refused before it started: leave no folder
                raise
            if stop_requested():  # Ctrl-C after the seed's last step: stop before the next one
                raise KeyboardInterrupt
        own = Trust(code=True, checkpoint=args.trust_checkpoint)  # the seeds just ran this code
        report = None if args.no_report or not is_main() else write_folder_report(out, trust=own)
        if is_main():
            write_record(out, cfg, n, finished=True)
            sweep(out)  # orphaned .tmp files of killed writes: only distill's own names
    except (Interrupted, KeyboardInterrupt) as stop:
        done = sum((out / f"seed-{s}" / "summary.json").is_file() for s in seeds)
        saved = "A checkpoint was written. " if isinstance(stop, Interrupted) and stop.checkpointed else ""
        print(f"Stopped with {done} of {n} seeds finished. {saved}Continue with: "
              f"{_resume_command(cfg, out)}", file=sys.stderr)
        return 130
    if not args.quiet and is_main():
        Console().print(seeds_table(aggregate(summaries)))
        print(f"Runs: {out}/seed-*" + (f"; report: {report}" if report else ""))
    return 0


def _forget_record(out: Path, created: bool, marked: bool) -> None:
    """Undo write_record (and the marker) when the first seed was refused before its folder existed."""
    from .run_folder import release
    from .seeds import RECORD

    if is_main():
        (out / RECORD).unlink(missing_ok=True)
        if marked:
            release(out)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _trust(args) -> Trust:
    return Trust(code=args.trust_code, checkpoint=args.trust_checkpoint)


def cmd_report(args) -> int:
    from .seeds import write_folder_report

    print(f"Wrote {write_folder_report(args.run_dir, trust=_trust(args))}")
    return 0


def cmd_eval(args) -> int:
    """Every saved model of a run folder (or one weights file of it), evaluated by its task."""
    overrides = [f"data.path={args.data}", *args.overrides] if args.data else list(args.overrides)
    task = task_of_run(args.target)
    Console().print(task.evaluation_table(task.evaluate_run(Path(args.target), overrides, args.split, _trust(args))))
    return 0


def cmd_export(args) -> int:
    """A stage's model in one of the formats of the run's task (--format)."""
    run_dir = Path(args.run_dir)
    if args.quantize and args.format != "onnx":
        raise DistillError(f"--quantize {args.quantize} makes an int8 ONNX model: use it with --format onnx.")
    task = task_of_run(run_dir)
    result = task.export(run_dir, args.format, args.out, args.stage, _trust(args), args.quantize)
    parity = f" (max |exported - torch| difference {result['max_abs_diff']:.2e})" if "max_abs_diff" in result else ""
    print(f"Wrote {result['path']}{parity}")
    if "dir" in result:
        print(f"Export folder {result['dir']}: the model takes raw inputs; labels.json names the classes, "
              "preprocess.json says what to do before the graph.")
    if "int8" in result:
        from .quantize import int8_table

        Console().print(int8_table(result["int8"]))
    return 0


def cmd_predict(args) -> int:
    """Top-k classes of raw input files, from an export folder or a run folder."""
    import json

    from .predict import Options, predict, predictions_table

    results = predict(args.target, args.files, args.top_k, args.stage, Options(args.text, args.resize),
                      args.int8, _trust(args))
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        Console().print(predictions_table(results))
    return 0


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="train teacher, scratch and distilled students; report the gain")
    p.add_argument("config", nargs="?", help="YAML config (default: the built-in digits demo)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.kd.T=2")
    p.add_argument("--out", help="run folder (default: runs/<name>-<timestamp>/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    trust_flags(p, "resume a run folder whose config names package.module:attr code")
    p.add_argument("--seeds", type=seed_count, default=1, metavar="N",
                   help="run every stage for N seeds (seed, seed+1, ...) and report mean +- std")
    p.add_argument("--no-report", action="store_true", help="skip report.md and its plots")
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Knowledge distillation for PyTorch.")
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    add_tune_parser(sub)
    add_generate_parser(sub)
    p = sub.add_parser("report", help="write report.md and plots for a run (or --seeds) folder")
    p.add_argument("run_dir")
    trust_flags(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("eval", help="evaluate a run folder or one of its weights files")
    p.add_argument("target", help="a run folder, or RUN_DIR/<stage>[-last].safetensors")
    p.add_argument("overrides", nargs="*", help="data.key=value overrides, e.g. data.name=npz")
    p.add_argument("--data", help="data.path to evaluate on (same dataset kind as the run's)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    trust_flags(p)
    p.set_defaults(func=cmd_eval)
    formats = export_formats()  # task -> the formats its runs export as
    p = sub.add_parser("export", help="export a run's student in a format of its task")
    p.add_argument("run_dir", help="a run folder written by distill run")
    p.add_argument("--format", required=True, choices=list(dict.fromkeys(f for fs in formats.values() for f in fs)),
                   help="by the run's task: " + "; ".join(f"{t}: {', '.join(fs)}" for t, fs in formats.items()))
    p.add_argument("--stage", default="distill", help="the stage to export (default distill): teacher, scratch, "
                   "or any other stage of the run (teacher-<name>, assistant-<i>, gen-<k>, peer-<i>, ...)")
    p.add_argument("--out", help="onnx/torchscript: the export folder (default: RUN_DIR/export/, for another "
                   "stage RUN_DIR/export-<stage>/); safetensors: the file (default: RUN_DIR/<stage>-export.safetensors)")
    p.add_argument("--quantize", choices=["int8"],
                   help="with --format onnx: also write model.int8.onnx and quantization.json (accuracy, size, latency)")
    trust_flags(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("predict", help="top-k classes of image, .npz, .npy or .csv files (raw inputs)")
    p.add_argument("target", help="an export folder (distill export) or a run folder")
    p.add_argument("files", nargs="*", help="input files: images, .npz/.npy (array x), .csv rows, .txt (texts)")
    p.add_argument("--top-k", type=positive, default=5, metavar="K", help="classes shown per input (default 5)")
    p.add_argument("--stage", default="distill",
                   help="a run folder's stage (default distill; any stage of the run, e.g. teacher, scratch, peer-1)")
    p.add_argument("--json", action="store_true", help="one JSON object per input instead of a table")
    p.add_argument("--text", action="append", default=[], help="a text to classify (text runs; repeatable)")
    p.add_argument("--resize", action="store_true",
                   help="resize images that do not end up the model's size to it (bilinear, aspect not kept)")
    p.add_argument("--int8", action="store_true", help="use the export folder's model.int8.onnx")
    trust_flags(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("models", help="list the model zoo with parameters and hookable paths")
    p.add_argument("--flops", action="store_true",
                   help="also count each model's FLOPs per sample (torch's flop counter; slower)")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("losses", help="list the distillation losses")
    p.set_defaults(func=cmd_losses)
    return parser


MAX_MESSAGE = 2000  # characters of an error message printed; the rest ends in "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options too (`distill run cfg.yaml --quiet train.epochs=3`).
    stray = [a for a in extra if a.startswith("-") or "=" not in a or args.command not in ("run", "eval", "tune")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides.extend(extra)
    # `distill run train.epochs=3`: a first positional with '=' is an override, not a file.
    if args.command in ("run", "tune") and args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        return args.func(args)
    except DistillError as e:  # one paragraph, however much of the user's input it quotes
        print(plain(f"error: {clip(str(e), MAX_MESSAGE)}"), file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable or full output folder, caught mid-run
        print(plain(
            f"error: could not write {e.filename or 'a file'}: {e.strerror or e}. Free some "
            "space or choose a writable --out; files written so far are intact."
        ), file=sys.stderr)
        return 2
    except Interrupted:  # a stop the command did not report itself: still no traceback
        print("Stopped.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
