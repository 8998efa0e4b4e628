"""Peak memory and time of the chunked token loss (distill.lm.chunked) vs the naive one, on CPU.

One case is N counted tokens (default 2048) with student hidden states [N, H_s] (H_s = 256,
requires grad), a student output layer [V, H_s] (requires grad), teacher hidden states [N, H_t]
and output layer [V, H_t] (H_t = 512, no grad) and random targets, at vocab V = 32k and 128k. The
loss is 0.5 * ce + 0.5 * forward KL (T = 1), summed over the tokens and divided by N:

* naive: the usual way: float32 student logits F.linear(h, W) [N, V], the teacher's logits under
  no_grad, log_softmax of both, ce and sum p * (log p - log q) over the whole [N, V] tensors,
  then backward;
* chunked: distill.lm.chunked.token_loss(h, Head(W), targets, count=N, terms={"forward_kl":
  ForwardKL(T=1.0)}, weights=..., teacher=TeacherRows(hidden=h_t, head=Head(W_t))), then
  backward. The chunk is CHUNK_ELEMENTS logits' worth of rows unless --chunks asks for others.

Every (variant, vocab[, chunk]) runs in a fresh subprocess (this script with --child), which
makes its inputs from a fixed seed (the same in every child), reads ru_maxrss (the process's
peak RSS so far), runs forward + backward once and reads ru_maxrss again: the difference is the
extra peak over the inputs (it includes the gradients that stay, [N, H_s] and [V, H_s], in both
variants). Two things keep that baseline at the child's RSS with its inputs: the child first
resets its peak (writes 5 to /proc/self/clear_refs, where allowed; this drops its import-time
transients), and the parent never holds more than its imports, because on Linux a spawned
child's ru_maxrss starts at its parent's peak RSS (vfork + exec carries it over). The gap
between baseline and RSS is recorded (baseline_gap_mib, ~0), and the peak is also read as VmHWM
from /proc/self/status (peak_extra_vmhwm_mib) as a cross-check.

Then, in the same child, the median wall time of --repeats more forward + backward passes, with
the process's user and system CPU time beside it (getrusage; system time is mostly the page
faults of fresh large allocations, which glibc maps anew above 32 MiB). torch uses --threads
threads (default 1) in every child. Each chunked child compares its loss and gradients with
those the naive child saved (max |diff|), after its measurements.

Targets: chunked peak <= 0.25x naive, chunked time <= 1.2x naive.

    python benchmarks/lm_loss.py                      # 32k and 128k, default chunk (~7 min)
    python benchmarks/lm_loss.py --chunks 32 64 128 256   # also a chunk-rows sweep (~23 min)

Results go to benchmarks/results/lm_loss.json: the "main" section, and with --chunks also the
"chunk_sweep" section (a run replaces only the sections it writes; the sweep shares the main
section's naive runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from common import git_state, machine_info
from distill.lm import chunked
from distill.lm.chunked import Head, TeacherRows, token_loss
from distill.losses.lm import ForwardKL

SEED = 0
WEIGHTS = {"ce": 0.5, "forward_kl": 0.5}
VOCABS = [32_768, 131_072]
TARGET_PEAK, TARGET_TIME = 0.25, 1.2
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "lm_loss.json"
MIB = 1024 * 1024


# ---------------------------------------------------------------- the two losses


def make_inputs(vocab: int, tokens: int, h_s: int, h_t: int) -> dict:
    """Inputs from a fixed seed; logits come out with a std of about 2 on both sides. Scaled in
    place: a temporary as large as a weight would raise ru_maxrss above the inputs' RSS."""
    g = torch.Generator().manual_seed(SEED)
    return {
        "h": torch.randn(tokens, h_s, generator=g).requires_grad_(),
        "w": torch.randn(vocab, h_s, generator=g).mul_(2 / h_s**0.5).requires_grad_(),
        "h_t": torch.randn(tokens, h_t, generator=g),
        "w_t": torch.randn(vocab, h_t, generator=g).mul_(2 / h_t**0.5),
        "y": torch.randint(0, vocab, (tokens,), generator=g),
    }


def naive_loss(h, w, h_t, w_t, y, chunk=None) -> torch.Tensor:
    logits = F.linear(h, w).float()
    with torch.no_grad():
        t_logits = F.linear(h_t, w_t).float()
    logq = F.log_softmax(logits, -1)
    logp = F.log_softmax(t_logits, -1)
    ce = -logq.gather(1, y[:, None]).sum()
    kl = (logp.exp() * (logp - logq)).sum()
    return (WEIGHTS["ce"] * ce + WEIGHTS["forward_kl"] * kl) / len(h)


def chunked_loss(h, w, h_t, w_t, y, chunk=None) -> torch.Tensor:
    loss, _ = token_loss(h, Head(w), y, count=len(h), terms={"forward_kl": ForwardKL(T=1.0)},
                         weights=WEIGHTS, teacher=TeacherRows(hidden=h_t, head=Head(w_t)),
                         chunk=chunk)
    return loss


LOSSES = {"naive": naive_loss, "chunked": chunked_loss}


# ---------------------------------------------------------------- child: one measured case


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def vmhwm_mib() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def compare(ref: Path, loss, grad_h, grad_w) -> dict:
    a = torch.load(ref)
    return {
        "loss": (a["loss"] - loss).abs().item(),
        "grad_h": (a["grad_h"] - grad_h).abs().max().item(),
        "grad_w": (a["grad_w"] - grad_w).abs().max().item(),
        "grad_h_max_abs": a["grad_h"].abs().max().item(),
        "grad_w_max_abs": a["grad_w"].abs().max().item(),
    }


def cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def step(fn, x: dict, chunk) -> torch.Tensor:
    x["h"].grad = x["w"].grad = None
    loss = fn(**x, chunk=chunk)
    loss.backward()
    return loss.detach()


def child(args) -> None:
    variant, vocab = args.child[0], int(args.child[1])
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    fn = LOSSES[variant]
    x = make_inputs(vocab, args.tokens, args.student_hidden, args.teacher_hidden)
    peak_reset = reset_peak()
    rss_before, base = rss_mib(), maxrss_mib()
    start, (user, sys_) = time.perf_counter(), cpu_times()
    loss = step(fn, x, args.chunk)
    first_s, (user2, sys2) = time.perf_counter() - start, cpu_times()
    peak, hwm = maxrss_mib(), vmhwm_mib()
    first = {"loss": loss, "grad_h": x["h"].grad, "grad_w": x["w"].grad}
    if args.dump:
        torch.save(first, args.dump)
    times, users, syss = [], [], []
    for _ in range(args.repeats):
        start, (u, s) = time.perf_counter(), cpu_times()
        step(fn, x, args.chunk)
        times.append(time.perf_counter() - start)
        u2, s2 = cpu_times()
        users.append(u2 - u)
        syss.append(s2 - s)
    cpus = [u + s for u, s in zip(users, syss, strict=True)]
    diffs = compare(args.ref, **first) if args.ref else None
    rows = min(chunked.chunk_rows(vocab, args.chunk), args.tokens) if variant == "chunked" else None
    print(json.dumps({
        "variant": variant, "vocab": vocab, "chunk_rows": rows,
        "chunk_logits_mib": rows * vocab * 4 / MIB if rows else None,
        "inputs_mib": sum(t.numel() * t.element_size() for t in x.values()) / MIB,
        "rss_before_mib": rss_before, "maxrss_before_mib": base, "maxrss_after_mib": peak,
        "peak_extra_mib": peak - base, "baseline_gap_mib": base - rss_before,
        "peak_reset": peak_reset,
        "peak_extra_vmhwm_mib": hwm - rss_before if peak_reset and hwm is not None else None,
        "first_s": first_s, "first_cpu_s": user2 - user + sys2 - sys_,
        "times_s": times, "cpu_s": cpus, "user_s": users, "sys_s": syss,
        "median_s": statistics.median(times), "median_cpu_s": statistics.median(cpus),
        "median_sys_s": statistics.median(syss),
        "loss": loss.item(), "threads": torch.get_num_threads(), "max_abs_diff": diffs,
    }))


# ---------------------------------------------------------------- parent


def run_child(args, variant: str, vocab: int, chunk: int | None, ref: Path) -> dict:
    """One case in a fresh process; naive saves its loss and gradients to `ref`, chunked
    compares with them."""
    cmd = [sys.executable, __file__, "--child", variant, str(vocab), "--tokens", str(args.tokens),
           "--student-hidden", str(args.student_hidden),
           "--teacher-hidden", str(args.teacher_hidden), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--dump" if variant == "naive" else "--ref", str(ref)]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ratios(naive: dict, c: dict) -> dict:
    return {"peak": c["peak_extra_mib"] / naive["peak_extra_mib"],
            "time": c["median_s"] / naive["median_s"],
            "cpu_time": c["median_cpu_s"] / naive["median_cpu_s"]}


def measure(args, tmp: Path, vocab: int, chunks: list[int | None], started: float) -> dict:
    ref = tmp / f"naive-{vocab}.pt"

    def one(variant, chunk):
        log(f"[{time.perf_counter() - started:6.0f}s] {variant} V={vocab} chunk={chunk or 'default'}")
        return run_child(args, variant, vocab, chunk, ref)

    naive = one("naive", None)
    cases = []
    for chunk in chunks:
        c = one("chunked", chunk)
        r = ratios(naive, c)
        cases.append({"chunk_arg": chunk, "chunked": c, "ratios": r,
                      "max_abs_diff": c.pop("max_abs_diff"),
                      "targets_met": {"peak": r["peak"] <= TARGET_PEAK,
                                      "time": r["time"] <= TARGET_TIME}})
    ref.unlink()
    return {"vocab": vocab, "naive": naive, "cases": cases}


def write_sections(path: Path, sections: dict) -> None:
    data = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            data = json.loads(path.read_text())
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def print_main(rows: list[dict], threads: int) -> None:
    print(f"\nChunked vs naive token loss (0.5 ce + 0.5 forward KL), forward + backward, CPU, "
          f"torch.set_num_threads({threads}). Peak = extra ru_maxrss over the inputs (MiB), "
          "fresh process per case; time = median wall seconds.\n")
    print("| vocab | chunk rows (MiB of logits) | naive peak | chunked peak | peak ratio (<= 0.25) "
          "| naive s | chunked s | time ratio (<= 1.2) | CPU-time ratio | sys s naive / chunked "
          "| max diff loss / grad_h / grad_w |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        n = row["naive"]
        for case in row["cases"]:
            c, r, d, ok = case["chunked"], case["ratios"], case["max_abs_diff"], case["targets_met"]
            print(f"| {row['vocab']:,} | {c['chunk_rows']} ({c['chunk_logits_mib']:.0f}) | "
                  f"{n['peak_extra_mib']:,.0f} | "
                  f"{c['peak_extra_mib']:,.0f} | {r['peak']:.3f} {'met' if ok['peak'] else 'MISSED'}"
                  f" | {n['median_s']:.2f} | {c['median_s']:.2f} | {r['time']:.2f} "
                  f"{'met' if ok['time'] else 'MISSED'} | {r['cpu_time']:.2f} | "
                  f"{n['median_sys_s']:.1f} / {c['median_sys_s']:.1f} | "
                  f"{d['loss']:.1e} / {d['grad_h']:.1e} / {d['grad_w']:.1e} |")
    for row in rows:
        for case in [{"chunked": row["naive"]}, *row["cases"]]:
            c = case["chunked"]
            if c["baseline_gap_mib"] > 8:
                print(f"WARNING {c['variant']} V={c['vocab']}: ru_maxrss baseline was "
                      f"{c['baseline_gap_mib']:.0f} MiB above the RSS; its peak is understated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="counted tokens N")
    parser.add_argument("--student-hidden", type=int, default=256)
    parser.add_argument("--teacher-hidden", type=int, default=512)
    parser.add_argument("--vocabs", type=int, nargs="+", default=VOCABS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every child")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the first")
    parser.add_argument("--chunks", type=int, nargs="+", default=None,
                        help="also sweep these chunk sizes (rows) for the chunked loss; written "
                             "to the 'chunk_sweep' section")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    # internal: one measured case in this process
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "VOCAB"), help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ref", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    machine, git = machine_info(), git_state()
    started = time.perf_counter()
    config = {"tokens": args.tokens, "student_hidden": args.student_hidden,
              "teacher_hidden": args.teacher_hidden, "vocabs": args.vocabs,
              "weights": WEIGHTS, "term": "ForwardKL(T=1.0)", "dtype": "float32",
              "repeats": args.repeats, "seed": SEED,
              "chunk_elements": chunked.CHUNK_ELEMENTS,
              "targets": {"peak_ratio_max": TARGET_PEAK, "time_ratio_max": TARGET_TIME}}
    common = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "threads": args.threads, "torch": torch.__version__, "config": config,
              "machine": machine, "git": git, "loadavg_at_start": os.getloadavg()}
    sections = {}
    with tempfile.TemporaryDirectory(prefix="lm-loss-") as tmp:
        chunks = [None, *(args.chunks or [])]  # None: the default (CHUNK_ELEMENTS) first
        measured = [measure(args, Path(tmp), v, chunks, started) for v in args.vocabs]
    rows = [r | {"cases": r["cases"][:1]} for r in measured]
    common["loadavg_at_end"] = os.getloadavg()
    common["parent_maxrss_mib"] = maxrss_mib()  # each child's ru_maxrss starts here
    sections["main"] = common | {"rows": rows, "seconds": time.perf_counter() - started}
    if args.chunks:
        sweep = [r | {"cases": r["cases"][1:]} for r in measured]
        sections["chunk_sweep"] = common | {"chunks": args.chunks, "rows": sweep,
                                            "seconds": time.perf_counter() - started}
    write_sections(args.out, sections)
    print_main(rows, args.threads)
    if args.chunks:
        print("\nChunk sweep (against the same naive run of each vocab):")
        print_main(sections["chunk_sweep"]["rows"], args.threads)
    print(f"\n(written to {args.out})")


if __name__ == "__main__":
    main()
