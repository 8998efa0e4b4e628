"""Export a run's student for deployment (`distill export`; `Task.export`).

`--format onnx` or `torchscript` writes an export folder (default RUN/export/, for another
stage RUN/export-<stage>/; or --out DIR), one model per folder:

    model.onnx | model.torchscript.pt   the graph: RAW inputs -> logits (one output)
    labels.json                         ["name of class 0", "name of class 1", ...]
    preprocess.json                     what to do before the graph, and what the graph does
    model.int8.onnx, quantization.json  with --quantize int8 (distill.quantize)
    .distill.json                       distill's marker: the folder is distill's, these files too

The graph takes what a deployer has: for a classifier uint8 NCHW images (resize and crop stay
outside, described in preprocess.json) or raw float features; the normalization distill's
loaders apply runs inside it (distill.raw_inputs). Each export is checked twice: the raw-input
graph in torch against the student on distill's own normalized inputs of the same test rows,
and the exported file (onnxruntime, or the loaded TorchScript) against the torch graph; both
within PARITY_TOLERANCE. `--format safetensors` copies the stage's weights (one file).

A task plugs in by building an `ExportBundle` (its raw-input module, example inputs by name,
its preprocess record, class names, and raw batches for int8 calibration and accuracy) and
calling `write_export`; the classifier's bundle is `classifier_bundle`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .classifier_run import load_run, rebuild
from .data import raw_splits
from .errors import DistillError
from .io import atomic_write, write_json, write_text
from .models.outputs import LogitsOnly
from .quantize import measure, onnxruntime, quantize_int8, session
from .raw_inputs import as_raw, class_names, preprocess_record, raw_input_model
from .run_folder import check, claim, owned_files, record_files, require
from .run_reader import require_stage, run_stages, weights_file
from .trust import NO_TRUST, Trust
from .version import __version__

FORMATS = ("onnx", "torchscript", "safetensors")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INT8, QUANTIZATION, LABELS, PREPROCESS = "model.int8.onnx", "quantization.json", "labels.json", "preprocess.json"
QUANTIZE = ("int8",)
OPSET = 17  # onnxruntime's quantizer wants >= 13 for per-channel QDQ
PARITY_TOLERANCE = 1e-4
SCHEMA = 1  # of preprocess.json and quantization.json
CALIBRATION_SAMPLES = 256  # training samples that calibrate static int8 quantization
Batches = Iterable[tuple[dict[str, np.ndarray], np.ndarray]]


@dataclass
class ExportBundle:
    """What a task hands `write_export`.

    module: takes the raw inputs positionally, in `example`'s order, and returns logits (B, K).
    example: input name -> a few rows of real raw inputs (batch first), e.g. {"input": uint8
        (8, 3, 32, 32)} or {"input_ids": int64 (8, T), "attention_mask": int64 (8, T)}.
    preprocess: the task's record, JSON-able: at least "kind" (the key of distill.predict's
        INPUT_READERS) and "num_classes"; written into preprocess.json.
    labels: class index -> name (labels.json).
    dynamic_axes: per input name, {dim: name} beyond the batch (e.g. {1: "sequence"}).
    calibration: () -> raw training batches ({name: array}) for static int8 calibration.
    test: () -> (raw batch, labels) over the run's test split, for the int8/fp32 accuracy.
    files: more files of the export, name -> text (a text run's tokenizer.json).
    """

    task: str
    module: nn.Module
    example: dict[str, torch.Tensor]
    preprocess: dict
    labels: list[str]
    dynamic_axes: dict[str, dict[int, str]] | None = None
    calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None
    test: Callable[[], Batches] | None = None
    files: dict[str, str] = field(default_factory=dict)

    def axes(self) -> dict[str, dict[int, str]]:
        extra = self.dynamic_axes or {}
        return {**{name: {0: "batch", **extra.get(name, {})} for name in self.example}, "logits": {0: "batch"}}


def default_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / ("export" if stage == "distill" else f"export-{stage}")


def check_request(run_dir: Path, fmt: str, formats: tuple[str, ...], task: str, quantize: str | None) -> None:
    """Refuse a format the task does not export, or --quantize without onnx."""
    if fmt not in formats:
        raise DistillError(f"'{run_dir}' is a {task} run, which exports as one of {', '.join(formats)}; "
                           f"--format {fmt} is another kind of run's. Use --format {', '.join(formats[:-1])} or {formats[-1]}.")
    if quantize is not None and (fmt != "onnx" or quantize not in QUANTIZE):
        raise DistillError(f"--quantize {quantize} makes an int8 ONNX model: use it with --format onnx "
                           f"(--quantize {' or '.join(QUANTIZE)}).")


def check_out(out: Path) -> None:
    """The export folder may be written: new, empty, or an export folder distill wrote."""
    if out.suffix in (".onnx", ".pt") and not out.is_dir():
        raise DistillError(f"--out '{out}' looks like a file name, but --out names the export folder (it "
                           f"will hold the model, {LABELS} and {PREPROCESS}). Give a folder, e.g. "
                           f"--out {out.with_suffix('')}.")
    check(out, "export", "distill export --out")


def write_export(bundle: ExportBundle, fmt: str, out: Path, stage: str, quantize: str | None = None) -> dict:
    """Write the export folder `out` (module docstring) from `bundle`; returns {"path" (the
    model), "format", "max_abs_diff", "dir", "labels", "preprocess"} (+ "quantization", "int8")."""
    out = Path(out)
    if fmt == "onnx":
        onnxruntime()  # before anything is written
    check_out(out)
    claim(out, "export", "distill export --out")
    fd = hold(out)  # a second export into this folder at the same time is refused
    try:
        return _write_locked(bundle, fmt, out, stage, quantize)
    finally:
        os.close(fd)


def hold(folder: Path) -> int:
    """An exclusive lock on the export folder itself (flock on its directory: no lock file is
    left among the deployable files); released when the descriptor closes or the process ends."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DistillError(f"'{folder}' is in use by another distill process (an export running into it); wait "
                           "for it, or export into another folder.") from None
    return fd


def _write_locked(bundle: ExportBundle, fmt: str, out: Path, stage: str, quantize: str | None) -> dict:
    names = [MODEL_FILES[fmt], LABELS, PREPROCESS, *bundle.files] + ([INT8, QUANTIZATION] if quantize else [])
    before = owned_files(out)
    record_files(out, [*before, *names])  # listed before they exist, so a killed export leaves none unowned
    for stale in set(before) - set(names):  # one model per folder: the previous export's other files go
        (out / stale).unlink(missing_ok=True)
    record_files(out, names)
    model_path = out / MODEL_FILES[fmt]
    args = tuple(bundle.example.values())
    with torch.no_grad():
        expected = bundle.module(*args)
    got = _torchscript(bundle.module, args, model_path) if fmt == "torchscript" else _onnx(bundle, model_path)
    diff = (got - expected).abs().max().item()
    if diff > PARITY_TOLERANCE:
        raise DistillError(f"The exported {fmt} model disagrees with torch by {diff:.2e} (> {PARITY_TOLERANCE}); "
                           f"it was written to {model_path} but should not be trusted.")
    for name, text in bundle.files.items():
        write_text(out / name, text)
    write_json(out / LABELS, list(bundle.labels))
    write_json(out / PREPROCESS, _preprocess_file(bundle, fmt, stage, diff, expected.shape[-1]))
    result = {"path": str(model_path), "format": fmt, "max_abs_diff": diff, "dir": str(out),
              "labels": str(out / LABELS), "preprocess": str(out / PREPROCESS)}
    if quantize:
        result["int8"] = _int8(bundle, out, stage)
        result["quantization"] = str(out / QUANTIZATION)
    return result


def _preprocess_file(bundle: ExportBundle, fmt: str, stage: str, diff: float, k: int) -> dict:
    axes = bundle.axes()
    inputs = [{"name": name, "dtype": str(t.dtype).removeprefix("torch."),
               "shape": [axes[name].get(d, s) for d, s in enumerate(t.shape)]}
              for name, t in bundle.example.items()]
    return {
        "schema": SCHEMA, "distill": __version__, "task": bundle.task, "stage": stage, "format": fmt,
        "model": MODEL_FILES[fmt], "labels": LABELS, "opset": OPSET if fmt == "onnx" else None,
        "inputs": inputs,
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", k],
                     "meaning": "class scores (softmax gives probabilities); index i is labels.json[i]"}],
        "parity_max_abs_diff": diff,
        **bundle.preprocess,
    }


def _torchscript(module: nn.Module, args: tuple, path: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.trace(module, args)
        atomic_write(path, lambda tmp: scripted.save(str(tmp)))
        with torch.no_grad():
            return torch.jit.load(str(path))(*args)


def _onnx(bundle: ExportBundle, path: Path) -> torch.Tensor:
    args = tuple(bundle.example.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda tmp: torch.onnx.export(
            bundle.module, args, str(tmp), input_names=list(bundle.example), output_names=["logits"],
            dynamic_axes=bundle.axes(), dynamo=False, opset_version=OPSET,
        ))
    feed = {name: t.numpy() for name, t in bundle.example.items()}
    return torch.from_numpy(session(path, threads=None).run(None, feed)[0])


def _int8(bundle: ExportBundle, out: Path, stage: str) -> dict:
    """model.int8.onnx beside model.onnx, and quantization.json: both models' test accuracy,
    size and batch-1 latency, measured here, now (distill.quantize)."""
    if bundle.calibration is None or bundle.test is None:
        raise DistillError(f"This {bundle.task} export gives no calibration or test inputs, so it cannot "
                           "be quantized; export without --quantize.")
    info = quantize_int8(out / MODEL_FILES["onnx"], out / INT8, bundle.calibration)
    example = {name: t[:1].numpy() for name, t in bundle.example.items()}
    m = measure({"fp32": out / MODEL_FILES["onnx"], "int8": out / INT8}, bundle.test, example)
    fp32, int8 = m["fp32"], m["int8"]
    record = {
        "schema": SCHEMA, "distill": __version__, "task": bundle.task, "stage": stage, **info,
        "split": "test", "test_samples": m["test_samples"], "fp32": fp32, "int8": int8,
        "agreement": m.get("agreement"),
        "ratio": {k: int8[k] / fp32[k] if fp32[k] else None for k in ("size_bytes", "latency_ms")},
        "latency": m["latency"],
    }
    write_json(out / QUANTIZATION, record)
    return record


# ---------------------------------------------------------------- classification runs


def load_student(run_dir: Path, stage: str = "distill", trust: Trust = NO_TRUST):
    """(the stage's model in eval mode, a sample input batch) rebuilt from a run folder; a
    config naming code needs `trust.code` (distill.trust)."""
    _check_stage(Path(run_dir), stage)
    model, data = load_run(run_dir, stage, trust)
    return model, next(iter(data.test)).inputs[:8]


def _check_stage(run_dir: Path, stage: str) -> None:
    """A DistillError unless `stage` is one of the run's stages (distill.stage_plan) and saved
    its weights; the message names the run's stages (and those that saved weights)."""
    has_config = (run_dir / "config.yaml").exists()
    if has_config:
        require_stage(run_dir, stage)
    if not has_config or weights_file(run_dir, stage) is None:
        saved = [s for s in run_stages(run_dir) if weights_file(run_dir, s)] if has_config else []
        which = f" Stages with weights: {', '.join(saved)}." if saved else ""
        raise DistillError(
            f"'{run_dir}' has no finished '{stage}' stage (config.yaml and {stage}.safetensors are "
            f"needed). Give a run folder written by `distill run`, or pick --stage.{which}"
        )


def classifier_bundle(run_dir: Path, stage: str = "distill", trust: Trust = NO_TRUST) -> ExportBundle:
    """A classification run's ExportBundle: its student behind the raw-input wrapper
    (distill.raw_inputs), checked against distill's own pipeline on the first test rows."""
    run_dir = Path(run_dir)
    _check_stage(run_dir, stage)
    cfg, data = rebuild(run_dir, trust=trust)
    model, _ = load_run(run_dir, stage, trust, data)
    record = preprocess_record(cfg.data, data)
    if record is None:
        raise DistillError(f"'{run_dir}' has inputs of kind {data.stats.get('kind')!r}, which a "
                           "classification export does not describe; its task exports them itself.")
    module = raw_input_model(model, record)
    splits = raw_splits(cfg.data)
    n = min(8, len(splits.test))
    raw = torch.from_numpy(as_raw(splits.test.take(np.arange(n)), record))
    with torch.no_grad():
        ours, distills = module(raw), LogitsOnly(model)(next(iter(data.test)).inputs[:n])
    diff = (ours - distills).abs().max().item()
    if diff > PARITY_TOLERANCE:  # the record does not say what the loaders do: a bug, not the user's
        raise DistillError(f"The raw-input model of '{run_dir}' differs from the student on distill's "
                           f"normalized inputs by {diff:.2e}; please report this (data.name={cfg.data.name}).")

    def calibration() -> list[dict[str, np.ndarray]]:
        pool = splits.teacher_train
        rows = np.sort(np.random.default_rng(0).permutation(len(pool))[:CALIBRATION_SAMPLES])
        return [{"input": as_raw(pool.take(rows[i:i + 32]), record)} for i in range(0, len(rows), 32)]

    def test() -> Batches:
        for start, part in zip(range(0, len(splits.test), 256), splits.test.chunks(256), strict=True):
            yield {"input": as_raw(part, record)}, splits.test.labels[start:start + len(part)]

    return ExportBundle("classification", module, {"input": raw}, record, class_names(data),
                        calibration=calibration, test=test)


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, stage: str = "distill",
           trust: Trust = NO_TRUST, quantize: str | None = None,
           bundle: Callable[[Path, str, Trust], ExportBundle] = classifier_bundle,
           task: str = "classification") -> dict:
    """Export a classifier run's `stage`: an export folder for onnx / torchscript (module
    docstring), the weights file for safetensors. Returns {"path", "format"} and for a folder
    "dir", "labels", "preprocess", "max_abs_diff" (and "quantization", "int8" with `quantize`).
    `bundle` builds the task's ExportBundle (a text run's: distill.text.export.text_bundle)."""
    run_dir = Path(run_dir)
    check_request(run_dir, fmt, FORMATS, task, quantize)
    if (run_dir / "config.yaml").exists():  # before the stage's name makes any path
        require_stage(run_dir, stage)
    if not out and (run_dir / "config.yaml").exists():  # (without it _check_stage says what is missing)
        require(run_dir, "run", "distill export")  # the default output lands in the run folder
    if fmt == "safetensors":
        path = Path(out) if out else run_dir / f"{stage}-export.safetensors"
        if out and path.exists():  # distill overwrites only what it wrote: the default file in its run folder
            raise DistillError(f"--out '{path}' exists; distill writes the weights only to a new file. Give a "
                               "new file name, or leave out --out to write RUN/<stage>-export.safetensors.")
        load_student(run_dir, stage, trust)  # checks the weights fit the configured architecture
        shutil.copyfile(run_dir / f"{stage}.safetensors", path)
        return {"path": str(path), "format": fmt}
    if fmt == "onnx":
        onnxruntime()
    folder = Path(out) if out else default_dir(run_dir, stage)
    check_out(folder)  # refused before anything is rebuilt
    _check_stage(run_dir, stage)
    return write_export(bundle(run_dir, stage, trust), fmt, folder, stage, quantize)
