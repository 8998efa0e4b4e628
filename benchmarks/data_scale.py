"""How distill's data path scales: memory, time to the first step, loader throughput, cache bytes.

Five parts, each selectable with --part (default: all of them):

  rss         peak memory of a short `distill run` (stages [scratch], student resnet8x4,
              train.max_steps steps of batch 64, data.loader=stream, data.workers=1) against N on
              memory-mapped `data.name: npy` folders of 3x32x32 uint8 images in 10 classes, N =
              20k, 200k and 2M (2M is 6.1 GB on disk, written chunk-wise with
              np.lib.format.open_memmap under --data-dir, reused when present), beside the memory
              loader (data.workers=1, which reads its up-front decode) at 20k and 200k, and the
              memory loader asked for the 2M folder (it must
              refuse before reading: exit code, first line of the error and its peak RSS are
              kept). Validation is capped (data.val_max) and the test split held near 512 rows
              (data.test_fraction = 512 / N), so every run evaluates the same amount.
  throughput  images/s of training the same resnet8x4 on the same 20k images through the
              memory loader and the streaming loader with 0, 1 and 2 workers, in this process
              (build_data, then a plain PyTorch loop of SGD steps over data.train), interleaved
              round by round (one warm-up round dropped, the median of --rounds); beside it the
              loaders alone (batches fetched and touched, no model).
  folder      an image folder of 20,000 32x32 RGB PNGs in 10 class folders (Pillow, written once
              under --data-dir): time to the first step and peak memory of a short `distill run`,
              lazy (data.loader=stream, decoded per sample in the workers) vs decoded up front
              (data.loader=memory), with 1 and with 0 workers; the files read into the page cache
              first, --folder-repeats interleaved repeats (the fastest first step, the highest peak).
  stats       build_data on a folder of 1,500 128x128 PNGs (70 MiB as uint8), one process each:
              the code before the data-scaling work (commit 59d6945, a git worktree at --before,
              created if missing, run with PYTHONPATH=<worktree>/src; all in its one process) vs
              this checkout with data.loader=memory and stream, data.workers 0 and 1 (the
              workers also read the statistics pass and the memory loader's up-front decode):
              the main process's peak RSS (what the issue asks), the tree's, the time, and the
              statistics pass (channel_stats) and the up-front decode inside it.
  table       what scales how (memory, time to the first step, teacher-cache bytes per sample):
              the measured points and their extrapolation to ImageNet-1k (1,281,167 images, 1000
              classes; cache entries priced by distill.cache.TeacherCache.nbytes itself). Computed
              from the other parts' results in the JSON file, so it can be redone alone.

Memory. Each `distill run` is a child process; a thread here polls it and its descendants (the
DataLoader workers) every 50 ms from /proc (no psutil in this environment): the main process's
RSS (VmRSS; its exact peak is the kernel's VmHWM, read by the child itself as it ends), split
into anonymous (RssAnon) and file-backed (RssFile) pages; the workers' private pages (USS,
from their smaps_rollup, every 250 ms); the tree's distinct pages = main RSS + workers' USS, and its
anonymous part = main RssAnon + workers' Private_Dirty (a page a forked worker shares with the
main process is counted once; the file pages a worker maps are clean, so not in it); and the tree's PSS sum (smaps_rollup Pss, Pss_Anon: shared pages
divided among the processes sharing them), sampled less often because reading the main
process's smaps_rollup walks its page tables under its mmap lock (~30 ms per GB mapped; it
slowed the 2M statistics pass 2x when read every 50 ms), so at most 2% of the time. A
memory-mapped file's pages count in RSS once touched: they are page cache (reclaimable, shared
with every process mapping the file), not memory distill allocated, so the tables show them
apart. The page cache is warm: this machine's page cache does not keep a 6 GB file for long,
so each x.npy is read sequentially before its run unless 98% of it is resident (mincore), and
the residency before and after each run is in the JSON. Memory figures are MiB (written MB).

Time. The child is this script (--child-run) calling distill's own CLI in-process, after
registering a global optimizer-step hook (torch.optim.optimizer.register_optimizer_step_post_hook)
and wrapping distill.data's phases (open_source, make_splits, choose_loader, Splits.decoded: the
memory loader's up-front decode, _transforms, which holds the statistics pass channel_stats,
_loaders, fingerprint) to time them; "first step" is seconds from
the start of the child process to the end of the first optimizer step, interpreter start-up and
imports included. torch runs on one thread (train.threads=1 / torch.set_num_threads(1)); the
number of DataLoader workers is in every row.

    python benchmarks/data_scale.py                  # everything (~22 min, ~6.9 GB in --data-dir)
    python benchmarks/data_scale.py --part rss stats # some parts (the others' results are kept)
    python benchmarks/data_scale.py --quick          # a small smoke version (~4 min), written
                                                     # to --data-dir/data_scale_quick.json

Results go to benchmarks/results/data_scale.json (one section per part; a run replaces only
the sections it ran, and the table is recomputed from what the file holds).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "data_scale.json"
BEFORE_COMMIT = "59d6945"
PARTS = ["rss", "throughput", "folder", "stats", "table"]
SHAPE = (3, 32, 32)
CLASSES = 10
BATCH = 64
STUDENT = "resnet8x4"
THREADS = 1
TEST_ROWS, VAL_MAX = 512, 256
POLL = 0.05
PSS_EVERY = 0.5  # at most this often, and
PSS_SHARE = 0.02  # at most this share of the time, the main process's smaps_rollup
WORKERS_EVERY, WORKERS_SHARE = 0.25, 0.05  # the workers' smaps_rollup (and whenever they change)
IMAGENET = {"images": 1_281_167, "classes": 1000, "shape": (3, 224, 224)}
TOPK = 16

# ---------------------------------------------------------------- /proc readers (no psutil here)


def _kb_fields(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])  # kB
    return out


STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty")


def status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of a process, in kB."""
    return _kb_fields(f"/proc/{pid}/status", STATUS_KEYS)


def rollup(pid: int) -> dict[str, int]:
    return _kb_fields(f"/proc/{pid}/smaps_rollup", ROLLUP_KEYS)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


class TreeMonitor:
    """Polls a process and its descendants; keeps the peaks (kB).

    Every POLL seconds the main process's /proc/<pid>/status (counters: cheap, exact); each
    worker's smaps_rollup (its private pages) every WORKERS_EVERY seconds, or less often if that
    would take more than WORKERS_SHARE of the time, and whenever the set of workers changes. The tree's distinct pages are the main process's RSS plus
    the workers' private pages (USS): a page a worker shares with the main process (copy-on-write
    heap, the same file pages) is counted once. The anonymous part: the main process's RssAnon
    plus the workers' Private_Dirty (what they allocated or copied on write; the file pages
    they read are clean). The main process's own smaps_rollup walks its
    page tables (~30 ms per GB mapped, under its mmap lock, which slows its page faults), so the
    tree's PSS sum is sampled only as often as keeps that under PSS_SHARE of the time."""

    def __init__(self, pid: int):
        self.pid, self.stop_flag = pid, threading.Event()
        self.peak = {"main_rss": 0, "main_hwm": 0, "main_anon": 0, "main_file": 0, "tree_unique": 0,
                     "tree_unique_anon": 0, "workers_uss": 0, "workers_dirty": 0, "tree_pss": 0, "tree_pss_anon": 0,
                     "tree_pss_file": 0, "processes": 0}
        self.samples = self.pss_samples = 0
        self.poll_seconds = 0.0
        self.next_pss = self.next_workers = 0.0
        self.workers: dict[int, dict] = {}
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()

    def _loop(self):
        while not self.stop_flag.is_set():
            start = time.perf_counter()
            with contextlib.suppress(OSError, ValueError):
                self._sample(start)
            spent = time.perf_counter() - start
            self.poll_seconds += spent
            self.stop_flag.wait(max(0.0, POLL - spent))

    def _sample(self, now: float):
        main = status(self.pid)
        kids = descendants(self.pid)
        if now >= self.next_workers or set(kids) != set(self.workers):
            start = time.perf_counter()
            workers = {}
            for p in kids:
                with contextlib.suppress(OSError):
                    workers[p] = rollup(p)
            self.workers = workers
            self.next_workers = now + max(WORKERS_EVERY, (time.perf_counter() - start) / WORKERS_SHARE)
        workers = self.workers
        uss = sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in workers.values())
        dirty = sum(r.get("Private_Dirty", 0) for r in workers.values())  # their own anonymous pages
        cur = {"main_rss": main.get("VmRSS", 0), "main_hwm": main.get("VmHWM", 0),
               "main_anon": main.get("RssAnon", 0), "main_file": main.get("RssFile", 0),
               "workers_uss": uss, "workers_dirty": dirty, "tree_unique": main.get("VmRSS", 0) + uss,
               "tree_unique_anon": main.get("RssAnon", 0) + dirty, "processes": 1 + len(workers)}
        if now >= self.next_pss:
            start = time.perf_counter()
            r = rollup(self.pid)
            cost = time.perf_counter() - start
            self.next_pss = now + max(PSS_EVERY, cost / PSS_SHARE)
            cur["tree_pss"] = r.get("Pss", 0) + sum(w.get("Pss", 0) for w in workers.values())
            cur["tree_pss_anon"] = r.get("Pss_Anon", 0) + sum(w.get("Pss_Anon", 0) for w in workers.values())
            cur["tree_pss_file"] = r.get("Pss_File", 0) + sum(w.get("Pss_File", 0) for w in workers.values())
            self.pss_samples += 1
        for k, v in cur.items():
            self.peak[k] = max(self.peak[k], v)
        self.samples += 1


# ---------------------------------------------------------------- the instrumented child


PHASES = ("open_source", "make_splits", "choose_loader", "decoded", "_transforms", "channel_stats",
          "_loaders", "fingerprint", "build_data")
METHODS = {"decoded": ("distill.data.splits", "Splits", "decoded")}  # the memory loader's up-front decode


def _instrument(events: list, t0: float) -> None:
    """Wrap distill.data's phases wherever distill's modules hold them (by identity)."""
    import functools

    import distill.data as dd

    for name in PHASES:
        owner = None
        if name in METHODS:  # a class's method: (module, class, attribute)
            mod, cls, attr = METHODS[name]
            owner = getattr(sys.modules.get(mod), cls, None)
            original = getattr(owner, attr, None)
        else:
            original = getattr(dd, name, None)
        if original is None or not callable(original):
            continue  # not in this version of distill

        def wrapper(*a, __f=original, __name=name, **kw):
            start = time.time() - t0
            try:
                return __f(*a, **kw)
            finally:
                s = status()
                events.append({"phase": __name, "start": round(start, 3),
                               "seconds": round(time.time() - t0 - start, 3),
                               "rss_mb": mb(s.get("VmRSS")), "anon_mb": mb(s.get("RssAnon")),
                               "file_mb": mb(s.get("RssFile")), "hwm_mb": mb(s.get("VmHWM"))})

        functools.update_wrapper(wrapper, original)
        if owner is not None:
            setattr(owner, METHODS[name][2], wrapper)
            continue
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("distill"):
                for attr, value in list(vars(mod).items()):
                    if value is original:
                        setattr(mod, attr, wrapper)


def child_run(out: Path, argv: list[str]) -> int:
    """`distill <argv>` in this process, timed: phases, first and last optimizer step."""
    t0 = float(os.environ.get("DATA_SCALE_T0", time.time()))
    imported = None
    events: list[dict] = []
    steps = {"n": 0, "first": None, "last": None, "first_rss": None, "last_rss": None, "first_cpu": None}
    rc, error = None, None
    try:
        import torch.optim.optimizer as topt

        import distill.cli
        import distill.stages  # noqa: F401  (every module that may hold a phase by name)
        import distill.tasks.classification  # noqa: F401

        imported = time.time() - t0
        _instrument(events, t0)

        def on_step(optimizer, args, kwargs):
            now = time.time() - t0
            steps["n"] += 1
            steps["last"] = now
            s = status()  # ~0.1 ms
            here = {"rss_mb": mb(s.get("VmRSS")), "anon_mb": mb(s.get("RssAnon")),
                    "file_mb": mb(s.get("RssFile")), "hwm_mb": mb(s.get("VmHWM"))}
            steps["last_rss"] = here
            if steps["first"] is None:
                steps["first"] = now
                steps["first_rss"] = here
                t = os.times()  # CPU time so far: less sensitive than wall time to a busy machine
                steps["first_cpu"] = {"self": round(t.user + t.system, 2),
                                      "reaped_children": round(t.children_user + t.children_system, 2)}

        topt.register_optimizer_step_post_hook(on_step)
        rc = distill.cli.main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # recorded; the parent reports it
        rc, error = 1, f"{type(e).__name__}: {e}"
    finally:
        s = status()
        out.write_text(json.dumps({
            "rc": rc, "error": error, "import_seconds": imported, "events": events,
            "steps": steps["n"], "first_step_seconds": steps["first"],
            "last_step_seconds": steps["last"], "at_first_step": steps["first_rss"],
            "at_last_step": steps["last_rss"], "cpu_at_first_step": steps["first_cpu"],
            "end_seconds": time.time() - t0, "hwm_mb": mb(s.get("VmHWM")),
            "rss_end_mb": mb(s.get("VmRSS"))}))
    return int(rc or 0)


def child_build(spec: dict, out: Path) -> int:
    """build_data on one DataConfig in this process (this checkout's distill, or the one on
    PYTHONPATH): seconds, the statistics pass, and the peak RSS."""
    t0 = time.time()
    import distill.data as dd

    try:
        from distill.config_schema import DataConfig
    except ImportError:  # pragma: no cover - older layouts
        from distill.config import DataConfig
    events: list[dict] = []
    _instrument(events, t0)
    base = status()
    start = time.time()
    data = dd.build_data(DataConfig(**spec))
    seconds = time.time() - start
    s = status()
    out.write_text(json.dumps({
        "distill_file": dd.__file__, "seconds": seconds, "events": events,
        "rss_before_mb": mb(base.get("VmRSS")), "hwm_before_mb": mb(base.get("VmHWM")),
        "hwm_mb": mb(s.get("VmHWM")), "rss_after_mb": mb(s.get("VmRSS")),
        "anon_after_mb": mb(s.get("RssAnon")), "loader": getattr(data, "loader", "memory (before)"),
        "counts": getattr(data, "counts", None)}))
    return 0


# ---------------------------------------------------------------- data on disk


def npy_folder(root: Path, n: int) -> Path:
    """x.npy (n, 3, 32, 32) uint8 and y.npy (n,) int64, 10 classes; written once, chunk-wise."""
    import numpy as np
    from numpy.lib.format import open_memmap

    d = root / f"npy_{n}"
    with contextlib.suppress(OSError, ValueError):
        x, y = np.load(d / "x.npy", mmap_mode="r"), np.load(d / "y.npy", mmap_mode="r")
        if x.shape == (n, *SHAPE) and x.dtype == np.uint8 and y.shape == (n,):
            return d
    d.mkdir(parents=True, exist_ok=True)
    need = n * math.prod(SHAPE) + n * 8 + (256 << 20)
    free = shutil.disk_usage(d).free
    if free < need:
        raise SystemExit(f"{d}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")
    log(f"writing {d} ({n * math.prod(SHAPE) / 1e9:.2f} GB) ...")
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (1 << 16, *SHAPE), dtype=np.uint8)  # random pixels, reused
    tmp = d / "x.partial.npy"
    x = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *SHAPE))
    for s in range(0, n, len(block)):
        e = min(n, s + len(block))
        x[s:e] = block[: e - s] + np.uint8((s // len(block)) % 256)
    x.flush()
    del x
    os.replace(tmp, d / "x.npy")
    np.save(d / "y.npy", rng.integers(0, CLASSES, n).astype(np.int64))
    return d


def png_folder(root: Path, n: int, side: int) -> Path:
    """n random-pixel side x side RGB PNGs in 10 class folders; written once."""
    import numpy as np
    from PIL import Image

    d = root / f"png{side}_{n}"
    done = d / ".complete"
    if done.is_file():
        return d
    log(f"writing {n} PNGs of {side}x{side} to {d} ...")
    shutil.rmtree(d, ignore_errors=True)
    rng = np.random.default_rng(1)
    block = rng.integers(0, 256, (256, side, side, 3), dtype=np.uint8)
    for c in range(CLASSES):
        (d / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = block[i % len(block)] + np.uint8(i // len(block))
        Image.fromarray(img).save(d / f"class_{i % CLASSES}" / f"img_{i:06d}.png")
    done.write_text("ok\n")
    return d


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------- one `distill run`, measured


def run_distill(tag: str, overrides: list[str], work: Path, timeout: float) -> dict:
    run_dir, out = work / "runs" / tag, work / "child" / f"{tag}.json"
    shutil.rmtree(run_dir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = ["run", "--quiet", "--no-report", "--out", str(run_dir), *overrides]
    stdout, stderr = work / "child" / f"{tag}.out", work / "child" / f"{tag}.err"
    load = os.getloadavg()
    env = {**os.environ, "DATA_SCALE_T0": repr(time.time())}
    start = time.perf_counter()
    with open(stdout, "w") as so, open(stderr, "w") as se:
        p = subprocess.Popen([sys.executable, __file__, "--child-run", str(out), "--", *cmd],
                             stdout=so, stderr=se, cwd=work, env=env)
        with TreeMonitor(p.pid) as mon:
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
    wall = time.perf_counter() - start
    child = json.loads(out.read_text()) if out.is_file() else {}
    err = stderr.read_text().strip().splitlines()
    error_lines = [line for line in err if line.startswith("error:")] or err[-1:]
    phases = {}
    for e in child.get("events", []):  # a phase run more than once (fingerprint): summed
        ph = phases.setdefault(e["phase"], {"calls": 0, "seconds": 0.0})
        ph["calls"] += 1
        ph["seconds"] = round(ph["seconds"] + e["seconds"], 3)
        ph["anon_mb_after"] = e["anon_mb"]
        ph["file_mb_after"] = e["file_mb"]
        ph["hwm_mb_after"] = e["hwm_mb"]
    steps = child.get("steps") or 0
    first, last = child.get("first_step_seconds"), child.get("last_step_seconds")
    peak = mon.peak
    return {
        "tag": tag, "command": "distill " + " ".join(cmd), "rc": rc, "wall_seconds": round(wall, 2),
        "error_first_line": error_lines[0] if rc and error_lines else None,
        "child_error": child.get("error"),
        "import_seconds": child.get("import_seconds"),
        "first_step_seconds": first, "steps": steps,
        "steps_per_s_after_first": (steps - 1) / (last - first) if steps > 1 and last > first else None,
        "at_first_step": child.get("at_first_step"),
        # VmHWM here is the peak up to the last optimizer step: what follows it is the final
        # validation and test (eval batch max(batch_size, 512)) and saving
        "at_last_step": child.get("at_last_step"),
        "cpu_seconds_at_first_step": child.get("cpu_at_first_step"), "loadavg_before": load,
        "phases": phases,
        # the main process's exact peak RSS (the kernel's high-water mark, read as it ended)
        "main_peak_rss_mb": child.get("hwm_mb") or mb(peak["main_hwm"]),
        "main_peak_anon_mb": mb(peak["main_anon"]), "main_peak_file_mb": mb(peak["main_file"]),
        "tree_peak_pss_mb": mb(peak["tree_pss"]), "tree_peak_pss_anon_mb": mb(peak["tree_pss_anon"]),
        "tree_peak_pss_file_mb": mb(peak["tree_pss_file"]),
        "tree_peak_unique_mb": mb(peak["tree_unique"]), "tree_peak_unique_anon_mb": mb(peak["tree_unique_anon"]),
        "workers_peak_uss_mb": mb(peak["workers_uss"]), "workers_peak_private_dirty_mb": mb(peak["workers_dirty"]),
        "max_processes": peak["processes"], "monitor_samples": mon.samples,
        "monitor_pss_samples": mon.pss_samples,
        "monitor_cpu_seconds": round(mon.poll_seconds, 2),
    }


def common_overrides(n: int, steps: int, workers: int | None) -> list[str]:
    o = ["stages=[scratch]", f"student.model={STUDENT}", f"train.max_steps={steps}",
         f"train.threads={THREADS}", "train.checkpoint_every=0", "cache=off",
         f"data.batch_size={BATCH}", f"data.eval_batch_size={BATCH}", "data.label_fraction=1.0",
         f"data.val_max={VAL_MAX}", f"data.test_fraction={min(0.2, max(TEST_ROWS / n, 20 / n)):.6g}"]
    if workers is not None:
        o.append(f"data.workers={workers}")
    return o


# ---------------------------------------------------------------- part 1: rss against N


def part_rss(args, work: Path) -> dict:
    sizes = [2_000, 20_000] if args.quick else [20_000, 200_000, 2_000_000]
    steps = 5 if args.quick else args.steps
    memory_sizes = sizes[:2] if not args.quick else sizes[:1]
    rows = []
    folders = {n: npy_folder(args.data_dir, n) for n in sizes}
    for n in sizes:
        log(f"rss: stream N={n} ...")
        cache = warm(folders[n] / "x.npy")
        o = [f"name=rss-stream-{n}", "data.name=npy", f"data.path={folders[n]}", "data.loader=stream",
             *common_overrides(n, steps, 1)]
        row = run_distill(f"rss-stream-{n}", o, work, args.timeout)
        cache["resident_after_run"] = round(resident(folders[n] / "x.npy"), 4)
        rows.append({"loader": "stream", "workers": 1, "n": n, "page_cache": cache, **row})
        log(f"  rc={row['rc']} first step {row['first_step_seconds']} s, main peak "
            f"{row['main_peak_rss_mb']} MB (anon {row['main_peak_anon_mb']}), tree PSS "
            f"{row['tree_peak_pss_mb']} MB (anon {row['tree_peak_pss_anon_mb']})")
    big = sizes[-1]
    log(f"rss: stream N={big}, no workers (the statistics pass maps the file in the main process) ...")
    cache = warm(folders[big] / "x.npy")
    o = [f"name=rss-stream-w0-{big}", "data.name=npy", f"data.path={folders[big]}", "data.loader=stream",
         *common_overrides(big, steps, 0)]
    row = run_distill(f"rss-stream-w0-{big}", o, work, args.timeout)
    cache["resident_after_run"] = round(resident(folders[big] / "x.npy"), 4)
    rows.append({"loader": "stream", "workers": 0, "n": big, "page_cache": cache, **row})
    log(f"  rc={row['rc']} first step {row['first_step_seconds']} s, main peak {row['main_peak_rss_mb']} MB "
        f"(anon {row['main_peak_anon_mb']}, file-backed {row['main_peak_file_mb']})")
    for n in memory_sizes:
        log(f"rss: memory N={n} ...")
        cache = warm(folders[n] / "x.npy")
        o = [f"name=rss-memory-{n}", "data.name=npy", f"data.path={folders[n]}", "data.loader=memory",
             *common_overrides(n, steps, 1)]
        row = run_distill(f"rss-memory-{n}", o, work, args.timeout)
        cache["resident_after_run"] = round(resident(folders[n] / "x.npy"), 4)
        rows.append({"loader": "memory", "workers": 1, "n": n, "page_cache": cache, **row})
        log(f"  rc={row['rc']} first step {row['first_step_seconds']} s, main peak "
            f"{row['main_peak_rss_mb']} MB (anon {row['main_peak_anon_mb']})")
    log(f"rss: memory N={big} (expected to be refused) ...")
    o = [f"name=rss-memory-refused-{big}", "data.name=npy", f"data.path={folders[big]}",
         "data.loader=memory", *common_overrides(big, steps, 1)]
    if args.quick:  # the quick sizes fit the default budget: a small one exercises the refusal
        o.append("data.memory_limit_mb=10")
    row = run_distill(f"rss-memory-refused-{big}", o, work, args.timeout)
    rows.append({"loader": "memory", "workers": 1, "n": big, "expect_refusal": True, **row})
    log(f"  rc={row['rc']} {row['error_first_line']!r} main peak {row['main_peak_rss_mb']} MB")
    mid = sizes[-2]
    log(f"rss: reading the training rows of N={mid} from a cold file, distill's order vs sorted ...")
    try:
        cold = cold_read_order(folders[mid], mid)
    except Exception as e:  # recorded; the runs above stand
        cold = {"error": f"{type(e).__name__}: {e}"}
    log(f"  {cold}")
    if args.cold and not args.quick:
        log(f"rss: stream N={big}, page cache dropped for x.npy first (posix_fadvise) ...")
        evict(folders[big] / "x.npy")
        o = [f"name=rss-stream-cold-{big}", "data.name=npy", f"data.path={folders[big]}",
             "data.loader=stream", *common_overrides(big, steps, 1)]
        row = run_distill(f"rss-stream-cold-{big}", o, work, args.timeout)
        rows.append({"loader": "stream", "workers": 1, "n": big, "cold_cache": True, **row})
    stream = {r["n"]: r for r in rows if r["loader"] == "stream" and r["workers"] == 1 and not r.get("cold_cache")}
    lo, hi = stream[sizes[0]], stream[sizes[-1]]

    def ratio(key):
        a, b = lo.get(key), hi.get(key)
        return round(b / a, 3) if a and b else None

    refused = next(r for r in rows if r.get("expect_refusal"))
    growth = {"main_rss (anon + file-backed)": ratio("main_peak_rss_mb"), "main_anon": ratio("main_peak_anon_mb"),
              "tree_anon": ratio("tree_peak_unique_anon_mb"), "tree_pss": ratio("tree_peak_pss_mb"),
              "tree_pss_anon": ratio("tree_peak_pss_anon_mb")}
    top = {"main_rss (anon + file-backed)": hi["main_peak_rss_mb"], "main_anon": hi["main_peak_anon_mb"],
           "tree_anon": hi["tree_peak_unique_anon_mb"], "tree_unique (anon + file-backed)": hi["tree_peak_unique_mb"],
           "tree_pss": hi["tree_peak_pss_mb"], "tree_pss_anon": hi["tree_peak_pss_anon_mb"]}
    met = {
        "growth <= 1.3x": {k: v is not None and v <= 1.3 for k, v in growth.items()},
        "peak < 1536 MB": {k: v is not None and v < 1536 for k, v in top.items()},
        "refused before reading": refused["rc"] not in (0, None) and bool(refused["error_first_line"])
        and "data.loader=memory" in (refused["error_first_line"] or "")
        and (refused["main_peak_file_mb"] or 0) < 512,
    }
    targets = {
        "met": met,
        f"stream peak growth {sizes[0]} -> {sizes[-1]}, <= 1.3x": {
            "main_rss (anon + file-backed)": ratio("main_peak_rss_mb"),
            "main_anon": ratio("main_peak_anon_mb"), "tree_anon": ratio("tree_peak_unique_anon_mb"),
            "tree_pss": ratio("tree_peak_pss_mb"), "tree_pss_anon": ratio("tree_peak_pss_anon_mb")},
        f"stream peak at {sizes[-1]} < 1.5 GB (1536 MB)": {
            "main_rss (anon + file-backed)": hi["main_peak_rss_mb"], "main_anon": hi["main_peak_anon_mb"],
            "tree_anon": hi["tree_peak_unique_anon_mb"], "tree_unique (anon + file-backed)": hi["tree_peak_unique_mb"],
            "tree_pss": hi["tree_peak_pss_mb"], "tree_pss_anon": hi["tree_peak_pss_anon_mb"]},
        f"memory loader refuses {sizes[-1]} before reading": {
            "rc": refused["rc"], "error": refused["error_first_line"],
            "main_peak_rss_mb": refused["main_peak_rss_mb"],
            "main_peak_file_mb": refused["main_peak_file_mb"]},
    }
    return {"sizes": sizes, "steps": steps, "batch_size": BATCH, "student": STUDENT,
            "page_cache": "warm (each x.npy read sequentially first unless >= 98% resident)"
            + (", plus one cold row" if args.cold and not args.quick else ""), "cold_read_order": cold,
            "disk_bytes": {str(n): disk_bytes(folders[n]) for n in sizes}, "rows": rows,
            "targets": targets}


def resident(path: Path) -> float:
    """The share of `path`'s pages in the page cache (mincore on a fresh read-only map)."""
    import ctypes
    import mmap

    import numpy as np

    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    try:
        a = np.frombuffer(m, dtype=np.uint8)
        vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
        if libc.mincore(ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(size), vec):
            return float("nan")
        share = float((np.frombuffer(vec, dtype=np.uint8) & 1).mean())
        del a
    finally:
        m.close()
    return share


def warm(path: Path) -> dict:
    """Read `path` once, sequentially, unless nearly all of it is already in the page cache
    (the page cache of this machine does not keep a 6 GB file for long)."""
    before = resident(path)
    start = time.perf_counter()
    if before < 0.98:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass
    return {"resident_before": round(before, 4), "warm_read_seconds": round(time.perf_counter() - start, 2),
            "resident_after": round(resident(path), 4)}


def cold_read_order(folder: Path, n: int) -> dict:
    """Seconds to read the training rows of the runs' splits from a cold file, chunk by chunk
    as the statistics pass does (1365 rows: channel_stats' 32 MiB of float64), in the order
    distill reads them (the split's shuffled row order) and sorted; the file is evicted from
    the page cache (posix_fadvise DONTNEED) before each, and opened afresh."""
    import numpy as np

    from distill.config_schema import DataConfig
    from distill.data.source import open_source
    from distill.data.splits import make_splits

    cfg = DataConfig(name="npy", path=str(folder), label_fraction=1.0, val_max=VAL_MAX,
                     test_fraction=min(0.2, TEST_ROWS / n))
    source = open_source(cfg)
    rows = np.asarray(make_splits(source, cfg, CLASSES).teacher_train.rows)
    del source
    chunk = (1 << 22) // math.prod(SHAPE)
    out = {"n": n, "rows": len(rows), "chunk_rows": chunk, "bytes": len(rows) * math.prod(SHAPE)}
    for label, order in (("distill_order", rows), ("sorted", np.sort(rows))):
        evict(folder / "x.npy")
        out[f"resident_before_{label}"] = round(resident(folder / "x.npy"), 4)
        x = np.load(folder / "x.npy", mmap_mode="r")
        start = time.perf_counter()
        for s in range(0, len(order), chunk):
            np.ascontiguousarray(x[order[s : s + chunk]])
        out[f"{label}_seconds"] = round(time.perf_counter() - start, 2)
        del x
    out["distill_order_over_sorted"] = round(out["distill_order_seconds"] / out["sorted_seconds"], 2)
    warm(folder / "x.npy")
    return out


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- part 2: throughput


def part_throughput(args, work: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from distill.config_schema import DataConfig
    from distill.data import build_data
    from distill.models import create_model
    from distill.models.outputs import logits_of

    torch.set_num_threads(THREADS)
    n = 2_000 if args.quick else 20_000
    steps = 3 if args.quick else args.tp_steps
    rounds = 1 if args.quick else args.rounds
    batches = 20 if args.quick else 100
    folder = npy_folder(args.data_dir, n)
    torch.manual_seed(0)
    student = create_model(STUDENT, CLASSES, SHAPE)
    variants = {}
    for name, kind, workers in (("memory", "memory", 0), ("stream-w0", "stream", 0),
                                ("stream-w1", "stream", 1), ("stream-w2", "stream", 2)):
        cfg = DataConfig(name="npy", path=str(folder), loader=kind, workers=workers, batch_size=BATCH,
                         label_fraction=1.0, val_max=VAL_MAX, test_fraction=TEST_ROWS / n)
        start = time.perf_counter()
        data = build_data(cfg, seed=0)
        model = copy.deepcopy(student).train()
        variants[name] = {"loader": data.train, "kind": data.loader, "workers": workers, "model": model,
                          "opt": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                          "build_seconds": time.perf_counter() - start, "train": [], "train_cpu": [],
                          "loader_only": []}
    train_rows = len(next(iter(variants.values()))["loader"].y)
    batches = min(batches, len(next(iter(variants.values()))["loader"]))

    def train_pass(v):
        it = iter(v["loader"])
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            b = next(it)
            loss = F.cross_entropy(logits_of(v["model"](b.inputs)), b.targets, ignore_index=-1)
            v["opt"].zero_grad(set_to_none=True)
            loss.backward()
            v["opt"].step()
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
        it.close()
        return steps * BATCH / seconds, steps * BATCH / cpu

    def loader_pass(v):
        it = iter(v["loader"])
        start = time.perf_counter()
        images = 0
        for _ in range(batches):
            b = next(it)
            b.inputs.sum()  # touch the batch
            images += len(b.inputs)
        seconds = time.perf_counter() - start
        it.close()
        return images / seconds

    log(f"throughput: {len(variants)} variants x ({rounds} rounds + 1 warm-up) x {steps} steps ...")
    names = list(variants)
    for r in range(rounds + 1):  # round 0 warms up (worker start, allocator) and is dropped
        order = names[r % len(names):] + names[:r % len(names)]  # each variant leads a round in turn
        for name in order:
            v = variants[name]
            ips, cpu_ips = train_pass(v)
            v["last"] = ips
            if r:
                v["train"].append(ips)
                v["train_cpu"].append(cpu_ips)
        for name in order:
            v = variants[name]
            ips = loader_pass(v)
            if r:
                v["loader_only"].append(ips)
        log(f"  round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(
            f"{k} {v['last']:.1f}" for k, v in variants.items()) + " images/s")
    rows, mem = [], None
    for name, v in variants.items():
        row = {"variant": name, "loader": v["kind"], "workers": v["workers"],
               "build_data_seconds": round(v["build_seconds"], 3),
               "train_images_per_s": statistics.median(v["train"]),
               "train_images_per_s_rounds": v["train"],
               "train_images_per_main_thread_cpu_s": statistics.median(v["train_cpu"]),
               "loader_only_images_per_s": statistics.median(v["loader_only"]),
               "loader_only_rounds": v["loader_only"]}
        if name == "memory":
            mem = row
        rows.append(row)
    for row in rows:
        row["train_ratio_vs_memory"] = row["train_images_per_s"] / mem["train_images_per_s"]
        row["train_ratio_vs_memory_paired"] = statistics.median(
            a / b for a, b in zip(row["train_images_per_s_rounds"], mem["train_images_per_s_rounds"], strict=True))
        row["loader_only_ratio_vs_memory"] = row["loader_only_images_per_s"] / mem["loader_only_images_per_s"]
    for v in variants.values():  # stop the workers
        v["loader"]._loader = None
    best = max((r for r in rows if r["loader"] == "stream"), key=lambda r: r["train_images_per_s"])
    return {"n": n, "train_rows": train_rows, "steps_per_pass": steps, "rounds": rounds,
            "loader_only_batches": batches, "batch_size": BATCH, "student": STUDENT,
            "torch_threads": torch.get_num_threads(), "optimizer": "sgd lr 0.01 momentum 0.9",
            "rows": rows,
            "targets": {"stream >= 0.8x memory at its best worker count": {
                "best": best["variant"], "ratio": round(best["train_ratio_vs_memory"], 3),
                "met": best["train_ratio_vs_memory"] >= 0.8}}}


# ---------------------------------------------------------------- part 3: an image folder


def read_all(folder: Path) -> float:
    """Read every file under `folder` once (into the page cache): seconds."""
    start = time.perf_counter()
    for f in folder.rglob("*"):
        if f.is_file():
            f.read_bytes()
    return time.perf_counter() - start


def part_folder(args, work: Path) -> dict:
    n = 2_000 if args.quick else 20_000
    steps = 3 if args.quick else args.folder_steps
    repeats = 1 if args.quick else args.folder_repeats
    folder = png_folder(args.data_dir, n, 32)
    variants = (("stream", 1), ("memory", 1), ("stream", 0), ("memory", 0))
    runs: dict[tuple, list] = {v: [] for v in variants}
    warm_seconds = []
    for rep in range(repeats):  # interleaved: machine load drifts over every variant alike
        warm_seconds.append(round(read_all(folder), 2))  # the page cache does not keep files long here
        for kind, workers in variants:
            log(f"folder: {kind}, {workers} worker(s), repeat {rep + 1}/{repeats} ...")
            o = [f"name=folder-{kind}", "data.name=folder", f"data.path={folder}", f"data.loader={kind}",
                 *common_overrides(n, steps, workers)]
            row = run_distill(f"folder-{kind}-w{workers}-{n}", o, work, args.timeout)
            runs[(kind, workers)].append(row)
            log(f"  rc={row['rc']} first step {row['first_step_seconds']} s, main peak "
                f"{row['main_peak_rss_mb']} MB, tree PSS {row['tree_peak_pss_mb']} MB "
                f"{row['error_first_line'] or ''}")
    rows = []
    for (kind, workers), reps in runs.items():
        ok = [r for r in reps if r["rc"] == 0 and r["first_step_seconds"] is not None] or reps
        best = min(ok, key=lambda r: r["first_step_seconds"] or math.inf)  # its phases are shown
        row = {"loader": kind, "workers": workers, "n": n, **best,
               "first_step_seconds_all": [r["first_step_seconds"] for r in reps]}
        for key in ("main_peak_rss_mb", "main_peak_anon_mb", "main_peak_file_mb", "tree_peak_pss_mb",
                    "tree_peak_pss_anon_mb", "tree_peak_unique_mb", "tree_peak_unique_anon_mb"):
            row[key] = max((r[key] for r in reps if r[key] is not None), default=None)  # the worst peak
        rows.append(row)
    return {"n": n, "image": "32x32 RGB PNG, random pixels", "disk_bytes": disk_bytes(folder),
            "steps": steps, "repeats": repeats, "warm_read_seconds": warm_seconds,
            "aggregate": "first step: the fastest repeat (its phases shown); memory: the highest peak",
            "rows": rows}


# ---------------------------------------------------------------- part 4: the statistics pass


def ensure_before(path: Path) -> Path | None:
    if (path / "src" / "distill" / "__init__.py").is_file():
        return path
    out = subprocess.run(["git", "worktree", "add", "--detach", str(path), BEFORE_COMMIT], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        log(f"stats: no worktree of {BEFORE_COMMIT} at {path}: {out.stderr.strip()}")
        return None
    return path


def part_stats(args, work: Path) -> dict:
    n = 300 if args.quick else 1_500
    folder = png_folder(args.data_dir, n, 128)
    before = ensure_before(args.before)
    variants = [("before (59d6945)", {"name": "folder", "path": str(folder)}, before, 0)]
    for kind in ("memory", "stream"):
        for workers in (0, 1):
            variants.append((f"now, loader={kind}, workers={workers}", {"name": "folder", "path": str(folder),
                             "loader": kind, "workers": workers}, None, workers))
    repeats = 1 if args.quick else 2
    results: dict[str, list] = {v[0]: [] for v in variants}
    for _ in range(repeats):
        for name, spec, tree, _workers in variants:
            if name.startswith("before") and tree is None:
                continue
            out = work / "child" / "stats.json"
            out.unlink(missing_ok=True)
            env = dict(os.environ)
            if tree is not None:
                env["PYTHONPATH"] = str(tree / "src")
            with open(work / "child" / "stats.err", "w") as err:
                p = subprocess.Popen([sys.executable, __file__, "--child-build", json.dumps(spec), str(out)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=work)
                with TreeMonitor(p.pid) as mon:
                    rc = p.wait(timeout=args.timeout)
            if rc or not out.is_file():
                text = (work / "child" / "stats.err").read_text().strip().splitlines()
                results[name].append({"error": (text or ["?"])[-1]})
                continue
            results[name].append({**json.loads(out.read_text()), "tree": dict(mon.peak)})
    rows = []
    for name, _, _tree, workers in variants:
        reps = [r for r in results[name] if "error" not in r]
        if not reps:
            rows.append({"variant": name, "error": (results[name] or [{"error": "not run"}])[0]["error"]})
            continue
        stats_s = [sum(e["seconds"] for e in r["events"] if e["phase"] == "channel_stats") for r in reps]
        rows.append({
            "variant": name, "distill_file": reps[0]["distill_file"], "loader": reps[0]["loader"],
            "workers": workers, "build_data_seconds": statistics.median(r["seconds"] for r in reps),
            "decode_seconds": statistics.median(sum(e["seconds"] for e in r["events"] if e["phase"] == "decoded")
                                                for r in reps),
            "tree_peak_unique_mb": mb(max(r["tree"]["tree_unique"] for r in reps)),
            "tree_peak_unique_anon_mb": mb(max(r["tree"]["tree_unique_anon"] for r in reps)),
            "stats_seconds": statistics.median(stats_s),
            "peak_rss_mb": max(r["hwm_mb"] for r in reps),
            "rss_after_imports_mb": statistics.median(r["rss_before_mb"] for r in reps),
            "peak_above_imports_mb": max(r["hwm_mb"] - r["rss_before_mb"] for r in reps),
            "rss_after_mb": statistics.median(r["rss_after_mb"] for r in reps), "repeats": len(reps),
            "counts": reps[0]["counts"]})
    return {"n": n, "image": "128x128 RGB PNG, random pixels", "decoded_mib": n * 3 * 128 * 128 / 2**20,
            "disk_bytes": disk_bytes(folder), "before_commit": BEFORE_COMMIT, "rows": rows}


# ---------------------------------------------------------------- part 5: what scales how


def cache_entry_bytes(classes: int, dtype: str, topk: int | None) -> float:
    """Bytes per cache entry, from distill.cache.TeacherCache.nbytes itself (a small cache of
    1,000 entries, in memory; nbytes is linear in samples x views)."""
    from distill.cache import TeacherCache

    c = TeacherCache(1000, {"logits": (classes,)}, {}, dtype=dtype, topk=topk, storage="memory")
    return c.nbytes / 1000


def decode_seconds_jpeg(samples: int = 40) -> dict:
    """Pillow decoding ImageNet-sized JPEGs (500x375, random pixels, quality 90) to 224x224
    (resize of the shorter side to 256, centre crop): seconds per image, one core."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(2)
    blobs = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    start = time.perf_counter()
    for i in range(samples):
        with Image.open(io.BytesIO(blobs[i % 4])) as im:
            im = im.convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
            np.asarray(im.crop((58, 16, 282, 240)))
    return {"seconds_per_image": (time.perf_counter() - start) / samples,
            "bytes_per_file": statistics.mean(len(b) for b in blobs)}


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _ok(section: dict | None) -> dict | None:
    return section if section and "error" not in section else None


def part_table(results: dict) -> dict:
    N = IMAGENET["images"]
    sample_bytes = math.prod(IMAGENET["shape"])
    gb = N * sample_bytes / 1e9  # ImageNet's training images at 3x224x224 uint8 (the 1.28M are its training set)
    rows = []

    def add(what, scales, measured, imagenet):
        rows.append({"what": what, "scales_with": scales, "measured": measured, "imagenet_1k": imagenet})

    def phase(r, name):
        return (r["phases"].get(name) or {}).get("seconds")

    rss = _ok(results.get("rss"))
    if rss:
        ok = [r for r in rss["rows"] if r["rc"] == 0 and not r.get("cold_cache")]
        stream = sorted((r for r in ok if r["loader"] == "stream" and r["workers"] == 1), key=lambda r: r["n"])
        w0 = [r for r in ok if r["loader"] == "stream" and r["workers"] == 0]
        memory = sorted((r for r in ok if r["loader"] == "memory"), key=lambda r: r["n"])
        if len(stream) >= 2:
            _, slope = fit_line([(r["n"], r["at_first_step"]["anon_mb"]) for r in stream])
            slope = max(slope, 0.0)  # a negative fit is noise: no growth measurable
            firsts = ", ".join(f"{_n(r['n'])}: {r['at_first_step']['anon_mb']:.0f}" for r in stream)
            peaks = ", ".join(f"{_n(r['n'])}: {r['tree_peak_unique_anon_mb']:.0f}" for r in stream)
            to_last = ", ".join(f"{_n(r['n'])}: {(r.get('at_last_step') or {}).get('hwm_mb') or 0:.0f}"
                                for r in stream)
            base = stream[0]["tree_peak_unique_anon_mb"] - stream[0]["n"] * slope
            add("stream loader (1 worker): anonymous memory, MB",
                "a constant (interpreter, torch, the model, its activations; the final evaluation at batch "
                "max(batch_size, 512) sets the peak) + O(N) integers (labels, split indices, shuffle "
                "orders); no input bytes",
                f"main at the first step {firsts} (fit {slope * 2**20:.0f} B/sample); main peak RSS up to "
                f"the last step {to_last}; tree peak (main + workers' private) {peaks}",
                f"O(N) part {slope * N:.0f} MB; peak ~{base + slope * N:.0f} MB with this 32x32 model (a "
                "224x224 model's activations come on top)")
            files = ", ".join(f"{_n(r['n'])}: {r['main_peak_file_mb']:.0f}" for r in stream)
            pss = ", ".join(f"{_n(r['n'])}: {r['tree_peak_pss_file_mb']:.0f}" for r in stream)
            zero = "; ".join(f"workers=0, {_n(r['n'])}: main {r['main_peak_file_mb']:.0f}" for r in w0)
            add("memory-mapped file pages counted in RSS (page cache: reclaimable, shared), MB",
                "training rows x sample bytes, in whichever process reads them: the statistics pass (data.workers "
                "processes, or the main one with 0), then each training worker as an epoch goes by",
                f"main, 1 worker: {files} (libraries); tree PSS file-backed peak {pss}; {zero}",
                f"up to {gb / 1.074:,.0f} GiB for an .npy of ImageNet at 224 (in the main RSS with data.workers=0)")
            split_fit = fit_line([(r["n"], phase(r, "make_splits") or 0.0) for r in stream])
            big = stream[-1]
            stats_big = phase(big, "channel_stats") or phase(big, "_transforms") or 0.0
            train_gb = len_train(big["n"]) * math.prod(SHAPE) / 1e9
            per_gb = stats_big / train_gb
            firsts = ", ".join(f"{_n(r['n'])}: {r['first_step_seconds']:.1f} s "
                               f"({sum((r.get('cpu_seconds_at_first_step') or {}).values()):.1f} CPU s)"
                               for r in stream)
            cold = rss.get("cold_read_order") or {}
            cold_txt = ""
            if "distill_order_seconds" in cold:
                mbps = cold["bytes"] / cold["distill_order_seconds"] / 1e6
                mbps_sorted = cold["bytes"] / cold["sorted_seconds"] / 1e6
                cold_txt = (f"; from disk (a 193 GB file cannot stay cached on this 24 GB machine) at the cold "
                            f"rates measured on {cold['bytes'] / 1e6:.0f} MB (a larger file seeks farther), {mbps:.0f} MB/s in distill's shuffled order: ~{gb * 1e3 / mbps / 3600:.1f} h; "
                            f"sorted, {mbps_sorted:.0f} MB/s: ~{gb * 1e3 / mbps_sorted / 3600:.1f} h")
            add("time to first step, npy, stream loader",
                "start-up + splits (labels only, O(N log N)) + one read of every training row for the "
                "statistics (O(N x sample bytes))",
                f"{firsts}; at {_n(big['n'])}: splits {phase(big, 'make_splits'):.1f} s, statistics "
                f"{stats_big:.1f} s ({per_gb:.1f} s/GB, warm page cache)"
                + (f"; cold read of {_n(cold['n'])}'s training rows: {cold['distill_order_seconds']:.1f} s "
                   f"in distill's order, {cold['sorted_seconds']:.1f} s sorted" if cold_txt else ""),
                f"statistics ~{per_gb * gb / 60:.0f} min if the file were cached (at the warm rate above), "
                f"splits ~{max(0.0, split_fit[0] + split_fit[1] * N):.0f} s" + cold_txt)
        if len(memory) >= 2:
            _, slope = fit_line([(r["n"], r["at_first_step"]["anon_mb"]) for r in memory])
            firsts = ", ".join(f"{_n(r['n'])}: {r['at_first_step']['anon_mb']:.0f}" for r in memory)
            per = slope * 2**20
            refused = next((r for r in rss["rows"] if r.get("expect_refusal")), None)
            ref = (f"; {_n(refused['n'])} refused (exit {refused['rc']}) before reading, peak "
                   f"{refused['main_peak_rss_mb']:.0f} MB" if refused else "")
            add("memory loader: anonymous memory at the first step (main), MB", "N x sample bytes (one copy)",
                f"{firsts}; fit {per:.0f} B/sample = {per / math.prod(SHAPE):.2f} x the {math.prod(SHAPE)} B "
                f"sample{ref}",
                f"{per / math.prod(SHAPE) * gb / 1.074:,.0f} GiB at 224x224: refused above the budget "
                "(an eighth of RAM); data.loader=auto streams it")
    folder = _ok(results.get("folder"))
    if folder:
        parts = [f"{r['loader']} w{r['workers']}: {r['first_step_seconds']:.1f} s / {r['main_peak_rss_mb']:.0f} MB"
                 for r in folder["rows"] if r["rc"] == 0]
        add(f"image folder of {_n(folder['n'])} PNGs (32x32): first step / main peak RSS",
            "stream: the statistics pass decodes every training image; memory: the up-front decode of every "
            "image (then the statistics from RAM); both before the first step", "; ".join(parts), "see the next row")
    jpeg = results.get("_jpeg")
    if jpeg:
        per = jpeg["seconds_per_image"]
        add("statistics pass on an ImageNet folder (JPEG ~500x375 -> 224x224)",
            "one decode of every training image before the first step, in data.workers processes",
            f"{per * 1e3:.1f} ms per image, one core (Pillow, random-pixel JPEG, quality 90)",
            f"~{N * per / 60:.0f} min of decoding / data.workers (cores permitting); the same decode rate "
            f"bounds streaming at ~{1 / per:.0f} images/s per worker")
    tp = _ok(results.get("throughput"))
    if tp:
        by = {r["variant"]: r for r in tp["rows"]}
        add("training throughput, images/s (resnet8x4, 20k images 3x32x32, 1 thread)",
            "the model (the loaders alone are 200x faster)",
            ", ".join(f"{k}: {v['train_images_per_s']:.1f} ({v['train_ratio_vs_memory']:.2f}x; loader alone "
                      f"{v['loader_only_images_per_s'] / 1e3:.0f}k)" for k, v in by.items()), "-")
    stats = _ok(results.get("stats"))
    if stats:
        parts = [f"{r['variant']}: {r['peak_rss_mb']:.0f} MB ({r['peak_above_imports_mb']:.0f} above imports), "
                 f"{r['build_data_seconds']:.1f} s" for r in stats["rows"] if "error" not in r]
        add(f"build_data on {stats['n']:,} PNGs 128x128 ({stats['decoded_mib']:.0f} MiB decoded): main peak RSS",
            "before: the decoded array plus copies of its splits; now, memory: each split decoded once; "
            "stream: one chunk", "; ".join(parts), "-")
    cache = results["_cache"]
    for dtype, topk in (("fp32", None), ("fp16", None), ("fp16", TOPK)):
        e = cache[f"{dtype}/{topk}"]
        add(f"teacher cache, {'top-' + str(topk) if topk else 'full'} {dtype} logits, per entry",
            "N x views x entry bytes (entry = 1 filled byte + " +
            (f"{topk} fp16 values + {topk} int32 indices + one fp32 log-partition)" if topk
             else f"1000 {dtype} logits)"),
            f"{e:.0f} B per entry at 1000 classes (TeacherCache.nbytes)",
            f"{N * e / 1e9:.2f} GB at 1 view, {N * 10 * e / 1e9:.2f} GB at 10 views")
    small = cache.get("fp32/None/10")
    if small and rss:
        add("teacher cache of this benchmark's data (10 classes, fp32)", "N x views x entry bytes",
            f"{small:.0f} B per entry: {max(rss['sizes']) * small / 1e6:.0f} MB at {max(rss['sizes']) / 1e6:.0f}M, 1 view",
            "-")
    return {"imagenet": {**IMAGENET, "shape": list(IMAGENET["shape"])}, "topk": TOPK,
            "cache_entry_bytes": cache, "jpeg_decode": jpeg, "rows": rows}


def _n(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def len_train(n: int) -> int:
    """Training rows of the runs' splits of n samples (test ~TEST_ROWS, then validation 15%)."""
    test = round(n * min(0.2, max(TEST_ROWS / n, 20 / n)))
    return round((n - test) * 0.85)


def markdown_table(table: dict) -> str:
    lines = ["| what | scales with | measured | ImageNet-1k (1.28M images, 1000 classes) |",
             "|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['what']} | {r['scales_with']} | {r['measured']} | {r['imagenet_1k']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- printing


def print_rss(sec: dict) -> None:
    print(f"\nPeak memory of `distill run` (stages [scratch], {sec['student']}, {sec['steps']} steps of "
          f"{sec['batch_size']}, train.threads=1), npy 3x32x32 uint8, page cache {sec['page_cache']}. MB.\n")
    print("| loader | workers | N | rc | first step s | its CPU s | splits s | stats s | main peak RSS | main anon | "
          "main file-backed | main anon at first step | main peak RSS to the last step | tree anon (main + "
          "workers' private) | tree PSS | tree PSS anon | steps/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sec["rows"]:
        ph = r["phases"]
        tag = r["loader"] + (" (cold cache)" if r.get("cold_cache") else "")
        cpu = r.get("cpu_seconds_at_first_step")
        cpu = cpu["self"] + cpu["reaped_children"] if cpu else None
        print(f"| {tag} | {r['workers']} | {r['n']:,} | {r['rc']} | {_f(r['first_step_seconds'])} | {_f(cpu)} | "
              f"{_f(ph.get('make_splits', {}).get('seconds'))} | {_f(ph.get('_transforms', {}).get('seconds'))} | "
              f"{_f(r['main_peak_rss_mb'], 0)} | {_f(r['main_peak_anon_mb'], 0)} | {_f(r['main_peak_file_mb'], 0)} | "
              f"{_f((r['at_first_step'] or {}).get('anon_mb'), 0)} | {_f((r.get('at_last_step') or {}).get('hwm_mb'), 0)} | "
              f"{_f(r['tree_peak_unique_anon_mb'], 0)} | "
              f"{_f(r['tree_peak_pss_mb'], 0)} | {_f(r['tree_peak_pss_anon_mb'], 0)} | {_f(r['steps_per_s_after_first'], 2)} |")
    for r in sec["rows"]:
        if r["rc"]:
            print(f"\n{r['loader']} N={r['n']:,}: exit {r['rc']}: {r['error_first_line']}")
    c = sec.get("cold_read_order") or {}
    if "distill_order_seconds" in c:
        print(f"\nReading the {c['rows']:,} training rows of N={c['n']:,} ({c['bytes'] / 1e6:.0f} MB) from a cold "
              f"file in chunks of {c['chunk_rows']} rows: {c['distill_order_seconds']:.1f} s in distill's "
              f"(shuffled split) order, {c['sorted_seconds']:.1f} s sorted ({c['distill_order_over_sorted']:.2f}x).")
    elif c:
        print(f"\ncold read order: {c}")
    print("\nTargets:")
    for k, v in sec["targets"].items():
        print(f"- {k}: {v}")


def print_throughput(sec: dict) -> None:
    print(f"\nTraining throughput, {sec['student']} on {sec['n']:,} images 3x32x32 ({sec['train_rows']:,} "
          f"training rows), batch {sec['batch_size']}, torch threads {sec['torch_threads']}, "
          f"{sec['steps_per_pass']} SGD steps per pass, median of {sec['rounds']} interleaved rounds.\n")
    print("| loader | workers | train images/s | vs memory | vs memory (paired) | main-thread CPU images/s "
          "| loader alone images/s | loader alone vs memory |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in sec["rows"]:
        print(f"| {r['loader']} | {r['workers']} | {r['train_images_per_s']:.1f} | {r['train_ratio_vs_memory']:.3f} | "
              f"{r['train_ratio_vs_memory_paired']:.3f} | {r['train_images_per_main_thread_cpu_s']:.1f} | "
              f"{r['loader_only_images_per_s']:.0f} | {r['loader_only_ratio_vs_memory']:.3f} |")
    print(f"\nTarget: {sec['targets']}")


def print_folder(sec: dict) -> None:
    print(f"\nImage folder, {sec['n']:,} {sec['image']} ({sec['disk_bytes'] / 1e6:.0f} MB on disk, read "
          f"into the page cache first), `distill run` {sec['steps']} steps, {sec.get('repeats', 1)} interleaved "
          f"repeats ({sec.get('aggregate', '')}), MB.\n")
    print("| loader | workers | rc | first step s (each repeat) | open s | splits s | decode s | stats s | loaders s | "
          "main peak RSS | main anon | tree anon (main + workers' private) | tree PSS | tree PSS anon |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sec["rows"]:
        ph = r["phases"]
        each = ", ".join(_f(v) for v in r.get("first_step_seconds_all", []))
        print(f"| {r['loader']} | {r['workers']} | {r['rc']} | {_f(r['first_step_seconds'])} ({each}) | "
              f"{_f(ph.get('open_source', {}).get('seconds'))} | {_f(ph.get('make_splits', {}).get('seconds'))} | "
              f"{_f(ph.get('decoded', {}).get('seconds'))} | "
              f"{_f(ph.get('_transforms', {}).get('seconds'))} | {_f(ph.get('_loaders', {}).get('seconds'))} | "
              f"{_f(r['main_peak_rss_mb'], 0)} | {_f(r['main_peak_anon_mb'], 0)} | "
              f"{_f(r['tree_peak_unique_anon_mb'], 0)} | {_f(r['tree_peak_pss_mb'], 0)} | "
              f"{_f(r['tree_peak_pss_anon_mb'], 0)} |")
        if r["rc"]:
            print(f"|  | | | {r['error_first_line'] or r['child_error']} | | | | | | | | | | |")


def print_stats(sec: dict) -> None:
    print(f"\nbuild_data on {sec['n']:,} {sec['image']} ({sec['decoded_mib']:.0f} MiB decoded), one process "
          "each, main process, MB.\n")
    print("| code | loader | workers | build_data s | up-front decode s | statistics s | main peak RSS | "
          "main RSS after imports | main peak above imports | tree peak (main + workers' USS) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sec["rows"]:
        if "error" in r:
            print(f"| {r['variant']} | error: {r['error']} | | | | | | | | |")
            continue
        print(f"| {r['variant']} | {r['loader']} | {r['workers']} | {r['build_data_seconds']:.2f} | "
              f"{r['decode_seconds']:.2f} | {r['stats_seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['rss_after_imports_mb']:.0f} | {r['peak_above_imports_mb']:.0f} | {r['tree_peak_unique_mb']:.0f} |")


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- entry point


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child-run":
        sys.exit(child_run(Path(sys.argv[2]), sys.argv[4:]))
    if len(sys.argv) > 3 and sys.argv[1] == "--child-build":
        sys.exit(child_build(json.loads(sys.argv[2]), Path(sys.argv[3])))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=["all", *PARTS], default=["all"])
    parser.add_argument("--quick", action="store_true", help="a small smoke version of every part")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/data_scale"),
                        help="where the generated datasets are written once and reused")
    parser.add_argument("--before", type=Path, default=Path("/tmp/before"),
                        help=f"a git worktree of {BEFORE_COMMIT} (created if missing)")
    parser.add_argument("--steps", type=int, default=50, help="rss: train.max_steps of each run")
    parser.add_argument("--tp-steps", type=int, default=15, help="throughput: SGD steps per pass")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    parser.add_argument("--folder-steps", type=int, default=10, help="folder: train.max_steps")
    parser.add_argument("--folder-repeats", type=int, default=2, help="folder: interleaved repeats")
    parser.add_argument("--cold", action="store_true",
                        help="rss: one more 2M stream run after evicting x.npy from the page cache")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import git_state, machine_info

    parts = PARTS if "all" in args.part else args.part
    out = args.out or (args.data_dir / "data_scale_quick.json" if args.quick else DEFAULT_OUT)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    work = args.data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = {}
    if out.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            data = json.loads(out.read_text())
    started = time.perf_counter()
    for part in parts:
        if part == "table":
            continue
        load = os.getloadavg()
        t = time.perf_counter()
        try:
            section = {"rss": part_rss, "throughput": part_throughput, "folder": part_folder,
                       "stats": part_stats}[part](args, work)
        except Exception as e:  # the other parts still run; the section says what failed
            import traceback

            traceback.print_exc()
            section = {"error": f"{type(e).__name__}: {e}"}
        data[part] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
                      "threads": THREADS, "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
                      "seconds": round(time.perf_counter() - t, 1), "machine": machine_info(),
                      "git": git_state(), **section}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")  # after every part: nothing is lost
    cache = {f"{d}/{k}": cache_entry_bytes(IMAGENET["classes"], d, k)
             for d, k in (("fp32", None), ("fp16", None), ("fp16", TOPK))}
    cache["fp32/None/10"] = cache_entry_bytes(CLASSES, "fp32", None)
    table = part_table({**data, "_cache": cache, "_jpeg": decode_seconds_jpeg()})
    table["markdown"] = markdown_table(table)
    table["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data["table"] = table
    out.write_text(json.dumps(data, indent=1) + "\n")
    for part, show in (("rss", print_rss), ("throughput", print_throughput), ("folder", print_folder),
                       ("stats", print_stats)):
        if part in data and part in parts and "error" not in data[part]:
            show(data[part])
    print("\nWhat scales how:\n")
    print(table["markdown"])
    print(f"\n({time.perf_counter() - started:.0f} s; written to {out})")


if __name__ == "__main__":
    main()
