"""`distill predict TARGET FILES...`: class probabilities for raw input files.

TARGET is an export folder (`distill export RUN --format onnx|torchscript`: preprocess.json,
labels.json and the model) or a run folder, which is exported first into a temporary folder
(ONNX when onnxruntime is installed, else TorchScript, which needs nothing optional), so both
paths run the same raw-input graph. Files are read as preprocess.json's "kind" says, by
INPUT_READERS[kind](files, preprocess, options) -> (names, {input name: batch array}):

- "image": PNG/JPEG/... decoded exactly as an image-folder dataset decodes them
  (distill.data.image_folder.decode_image: Pillow, converted to RGB (L for 1 channel), data.size
  resize, data.crop centre crop), or .npz files with an array "x" of uint8 (N, C, H, W).
  An image that does not end up the model's size is refused, unless --resize (resize to it).
- "features": .npz / .npy arrays (x: (N, *shape), or (N, features)), or .csv files with a header
  row, the columns handled as the csv source does (the label column, when present, is dropped;
  every other column is a feature, in file order; a run from a CSV checks the names).
- "text": one text per line of a .txt file, or --text "..." (text_items); tokenizing them is
  the text task's (read_texts), which fills this entry.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data.image_folder import IMAGE_EXTENSIONS, decode_image
from .data.tables import _feature, load_npz
from .errors import DistillError, clip
from .export import INT8, LABELS, MODEL_FILES, PREPROCESS
from .quantize import INSTALL, session
from .tasks import task_of_run
from .trust import NO_TRUST, Trust

BATCH = 64  # rows per model call


@dataclass
class Options:
    """What the command line adds to the files: --text values, --resize."""

    texts: list[str] = field(default_factory=list)
    resize: bool = False
    folder: Path | None = None  # the export folder (a text export's tokenizer.json is read from it)


Reader = Callable[[list[Path], dict, Options], tuple[list[str], dict[str, np.ndarray]]]


# ---------------------------------------------------------------- reading inputs


def _exists(f: Path) -> None:
    if not f.is_file():
        raise DistillError(f"Input file '{f}' does not exist{' (it is a folder)' if f.is_dir() else ''}. "
                           "Give image, .npz, .npy, .csv or .txt files.")


def _array(f: Path) -> np.ndarray:
    """Array "x" of an .npz file, or an .npy file's array."""
    if f.suffix.lower() == ".npy":
        try:
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DistillError(f"Could not read '{f}' as an .npy array: {clip(str(e), 200)}.") from None
    arrays = load_npz(f, "predict reads an .npz file's array 'x' (inputs, N x ...)")
    if "x" not in arrays:
        raise DistillError(f"'{f}' has no array named 'x' (it has {sorted(arrays)}); save the inputs "
                           "with np.savez(path, x=...).")
    return arrays["x"]


def _rows(x: np.ndarray, shape: tuple[int, ...], f: Path) -> np.ndarray:
    """`x` as (N, *shape): one sample, N samples, or N flat rows of the same size."""
    if tuple(x.shape) == shape:
        return x[None]
    if x.ndim >= 1 and tuple(x.shape[1:]) == shape:
        return x
    if x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
        return x.reshape(len(x), *shape)
    raise DistillError(f"The inputs in '{f}' have shape {tuple(x.shape)}; the model takes samples shaped "
                       f"{shape} (give (N, {', '.join(map(str, shape))})).")


def read_images(files: list[Path], pre: dict, opts: Options) -> tuple[list[str], dict[str, np.ndarray]]:
    img = pre["image"]
    shape = (img["channels"], img["height"], img["width"])
    names, rows = [], []
    for f in files:
        if f.suffix.lower() in (".npz", ".npy"):
            x = _array(f)
            whole = x.dtype.kind in "iu" and x.size and x.min() >= 0 and x.max() <= 255
            if x.dtype != np.uint8 and not whole:  # integers in 0..255 are images, as training reads them
                raise DistillError(f"The inputs in '{f}' are {x.dtype}; this model takes 8-bit images "
                                   f"(N, {', '.join(map(str, shape))}) of integers in 0..255, as the run trained on.")
            x = x.astype(np.uint8)
            x = _rows(x, shape, f)
            names += [f"{f}[{i}]" for i in range(len(x))] if len(x) > 1 else [str(f)]
            rows.append(x)
            continue
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DistillError(f"'{f}' is not an image file ({', '.join(IMAGE_EXTENSIONS)}) or an .npz; "
                               "this model takes images.")
        if img["mode"] is None:
            raise DistillError(f"This model takes {shape[0]}-channel images, which no image file holds; "
                               "give its inputs as an .npz file with a uint8 array 'x'.")
        x = decode_image(f, img["size"], img["crop"], img["mode"])
        if x.shape != shape:
            if not opts.resize:
                done = (f"after the run's data.size={img['size']} and data.crop={img['crop']}"
                        if img["size"] or img["crop"] else "(the run resized nothing: its images were all this size)")
                raise DistillError(
                    f"Image '{f}' is {x.shape[1]}x{x.shape[2]} {done}, but the model takes "
                    f"{shape[1]}x{shape[2]} images. Resize it to {shape[1]}x{shape[2]}, or pass --resize "
                    "to resize it to that exactly (bilinear; the aspect ratio is not kept).")
            x = decode_image(f, [shape[1], shape[2]], None, img["mode"])
        names.append(str(f))
        rows.append(x[None])
    return names, {pre["inputs"][0]["name"]: np.concatenate(rows)}


def _csv_rows(f: Path, pre: dict) -> np.ndarray:
    feats = pre["features"]
    label, columns = feats.get("label_column") or "label", feats.get("columns")
    try:
        text = f.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DistillError(f"Could not read '{f}' as UTF-8 text ({e}).") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    keep = [i for i, h in enumerate(header) if h != label]
    got = [header[i] for i in keep]
    layout = f"predict reads a CSV with a header row and {feats['count']} numeric feature columns"
    if columns is not None and got != columns:
        raise DistillError(f"'{f}' has the feature columns {clip(', '.join(got), 300)}; the run trained on "
                           f"{clip(', '.join(columns), 300)} (in that order; a '{label}' column is ignored).")
    if len(got) != feats["count"]:
        raise DistillError(f"'{f}' has {len(got)} feature columns; the model takes {feats['count']}. {layout}.")
    rows = []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DistillError(f"'{f}' line {reader.line_num} has {len(row)} fields but the header has {len(header)}.")
        rows.append([_feature(row[i], f"'{f}' line {reader.line_num}, column '{header[i]}'", layout) for i in keep])
    if not rows:
        raise DistillError(f"'{f}' has a header but no data rows.")
    return np.asarray(rows, dtype=np.float32)


def read_features(files: list[Path], pre: dict, opts: Options) -> tuple[list[str], dict[str, np.ndarray]]:
    shape = tuple(pre["features"]["shape"])
    names, rows = [], []
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".csv":
            x = _csv_rows(f, pre).reshape(-1, *shape)
            names += [f"{f}:row {i + 1}" for i in range(len(x))]
        elif suffix in (".npz", ".npy"):
            x = _rows(_array(f), shape, f)
            if x.dtype.kind not in "biuf":
                raise DistillError(f"The inputs in '{f}' are of type {x.dtype}; they must be numbers.")
            names += [f"{f}[{i}]" for i in range(len(x))] if len(x) > 1 else [str(f)]
        else:
            raise DistillError(f"'{f}' is not a .csv, .npz or .npy file; this model takes {pre['features']['count']} "
                               "features per sample.")
        if not np.isfinite(x).all():
            raise DistillError(f"The inputs in '{f}' hold NaN or Inf; fill in or drop those values.")
        rows.append(np.asarray(x, dtype=np.float32))
    return names, {pre["inputs"][0]["name"]: np.concatenate(rows)}


def text_items(files: list[Path], opts: Options) -> list[tuple[str, str]]:
    """(name, text) for each line of each .txt file (blank lines skipped), then each --text."""
    items = []
    for f in files:
        if f.suffix.lower() != ".txt":
            raise DistillError(f"'{f}' is not a .txt file; this model takes texts (one per line of a .txt "
                               "file, or --text \"...\").")
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DistillError(f"Could not read '{f}' as UTF-8 text ({e}).") from None
        items += [(f"{f}:{i + 1}", line) for i, line in enumerate(lines) if line.strip()]
    return items + [(f"--text {i + 1}", t) for i, t in enumerate(opts.texts)]


def read_texts(files: list[Path], pre: dict, opts: Options) -> tuple[list[str], dict[str, np.ndarray]]:
    """The text task's reader: text_items(files, opts), tokenized as preprocess.json says, as
    {"input_ids": int64 (N, T), "attention_mask": int64 (N, T)} (distill.text.export.tokenize)."""
    from .text.export import tokenize

    width = pre["inputs"][0]["shape"][-1]
    if width != pre.get("max_length"):
        raise DistillError(f"preprocess.json's max_length {pre.get('max_length')!r} is not the model's input "
                           f"length {width!r}; export the run again.")
    items = text_items(files, opts)
    if not items:
        raise DistillError("No text to classify: give .txt files (one text per line) or --text \"...\".")
    return [name for name, _ in items], tokenize([t for _, t in items], pre, opts.folder)


INPUT_READERS: dict[str, Reader] = {"image": read_images, "features": read_features, "text": read_texts}


# ---------------------------------------------------------------- the model


@dataclass
class Exported:
    """An export folder read back: its record, class names and a function batch -> logits."""

    folder: Path
    preprocess: dict
    labels: list[str]
    run: Callable[[dict[str, np.ndarray]], np.ndarray]


def _json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DistillError(f"Could not read {what} '{path}' ({clip(str(e), 200)}); export the run again.") from None


def open_export(folder: str | Path, int8: bool = False) -> Exported:
    """The export folder's model (model.int8.onnx with `int8`), record and labels, checked."""
    folder = Path(folder)
    pre = _json(folder / PREPROCESS, "the export record")
    need = ("kind", "model", "inputs", "num_classes")
    inputs = pre.get("inputs") if isinstance(pre, dict) else None
    well_formed = isinstance(inputs, list) and inputs and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("shape"), list) for i in inputs)
    if not isinstance(pre, dict) or any(k not in pre for k in need) or pre["kind"] not in INPUT_READERS or not well_formed:
        raise DistillError(f"'{folder / PREPROCESS}' is not a distill export record (it needs {', '.join(need)}, "
                           f"and a kind of {', '.join(INPUT_READERS)}); export the run again.")
    labels = _json(folder / LABELS, "the class names")
    if pre["model"] not in (*MODEL_FILES.values(), INT8):  # a name in the folder, never a path out of it
        raise DistillError(f"'{folder / PREPROCESS}' names the model {pre['model']!r}, not one of distill's "
                           "model files; export the run again.")
    if not isinstance(labels, list) or len(labels) != pre["num_classes"] or not all(isinstance(n, str) for n in labels):
        raise DistillError(f"'{folder / LABELS}' should list {pre['num_classes']} class names (strings); export the run again.")
    path = folder / (INT8 if int8 else pre["model"])
    if not path.is_file():
        hint = " (export with --quantize int8)" if int8 else "; export the run again"
        raise DistillError(f"'{folder}' has no {path.name}{hint}.")
    names = [i["name"] for i in pre["inputs"]]
    if path.suffix == ".onnx":
        try:
            sess = session(path, threads=None)
        except DistillError as e:
            if str(e) == INSTALL:
                raise DistillError(f"{INSTALL} Or export with --format torchscript, which needs nothing "
                                   "optional.") from None
            raise
        return Exported(folder, pre, labels, lambda feed: sess.run(None, feed)[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # torch's own errors for a damaged archive
        raise DistillError(f"Could not load '{path}' as TorchScript ({clip(str(e).splitlines()[0] if str(e) else type(e).__name__, 200)}); "
                           "it is corrupt; export the run again.") from None

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(feed[n]) for n in names)).numpy()

    return Exported(folder, pre, labels, run)


def _ranked(logits: np.ndarray, labels: list[str], top_k: int) -> list[list[dict]]:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
    return [[{"label": labels[j], "index": int(j), "prob": float(p[i, j])} for j in row] for i, row in enumerate(order)]


def _check_call(files, top_k, opts: Options) -> None:
    """The Python API's arguments (the CLI's are typed by argparse)."""
    if isinstance(files, str | Path) or not isinstance(files, list | tuple):
        raise DistillError(f"files must be a list of paths (e.g. [\"a.png\"]); got {type(files).__name__}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DistillError(f"top_k must be a whole number >= 1; got {top_k!r}.")
    texts = opts.texts
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise DistillError("Options(texts=...) must be a list of strings, e.g. Options(texts=[\"some text\"]).")


def predict_with(exported: Exported, files, top_k: int = 5, opts: Options | None = None) -> list[dict]:
    """[{"input": name, "top": [{"label", "index", "prob"}, ...]}] for every input in `files`."""
    opts = opts or Options()
    _check_call(files, top_k, opts)
    files = [Path(f) for f in files]
    for f in files:
        _exists(f)
    if not files and not opts.texts:
        raise DistillError("Give the files to predict (images, .npz, .npy, .csv; .txt or --text for texts).")
    pre = exported.preprocess
    if pre["kind"] != "text" and opts.texts:
        raise DistillError(f"--text is for text models; this export takes {pre['kind']} inputs. Give files instead.")
    if pre["kind"] != "text" and not files:
        raise DistillError(f"Give the files to predict: this export takes {pre['kind']} inputs.")
    opts = replace(opts, folder=exported.folder)
    names, feed = INPUT_READERS[pre["kind"]](files, pre, opts)
    n = len(names)
    if n == 0 or min(len(v) for v in feed.values()) == 0:
        raise DistillError(f"{', '.join(map(str, files)) or 'The inputs'} hold no samples to predict.")
    logits = np.concatenate([exported.run({k: v[i:i + BATCH] for k, v in feed.items()}) for i in range(0, n, BATCH)])
    top = _ranked(logits, exported.labels, max(1, min(top_k, len(exported.labels))))
    return [{"input": name, "top": t} for name, t in zip(names, top, strict=True)]


def predict(target: str | Path, files, top_k: int = 5, stage: str = "distill", opts: Options | None = None,
            int8: bool = False, trust: Trust = NO_TRUST) -> list[dict]:
    """`distill predict`: TARGET an export folder or a run folder (module docstring)."""
    target = Path(target)
    if (target / PREPROCESS).is_file():
        exported = open_export(target, int8)
        if stage != "distill" and stage != exported.preprocess.get("stage"):
            raise DistillError(f"--stage {stage} picks a stage of a run folder; the export folder '{target}' holds "
                               f"one model, of the {exported.preprocess.get('stage')!r} stage. Give the run folder, "
                               "or an export of that stage.")
        return predict_with(exported, files, top_k, opts)
    if not (target / "config.yaml").is_file():
        what = "does not exist" if not target.exists() else "is neither a run folder (no config.yaml) nor an export folder (no preprocess.json)"
        raise DistillError(f"'{target}' {what}. Give a run folder written by `distill run`, or an export "
                           "folder written by `distill export RUN --format onnx` (or torchscript).")
    if int8:
        raise DistillError(f"--int8 uses an export folder's model.int8.onnx; '{target}' is a run folder. Export "
                           f"it first: distill export {target} --format onnx --quantize int8, then predict "
                           f"from {target}/export.")
    for f in files:  # before the run is rebuilt and exported
        _exists(Path(f))
    task, fmt = task_of_run(target), "onnx" if _has_onnxruntime() else "torchscript"
    if fmt not in task.export_formats:
        raise DistillError(f"'{target}' is a task={task.name} run, which exports as {', '.join(task.export_formats)}; "
                           "distill predict runs models exported as ONNX or TorchScript (classifier runs).")
    with tempfile.TemporaryDirectory(prefix="distill-predict-") as tmp:
        task.export(target, fmt, Path(tmp) / "export", stage, trust)
        return predict_with(open_export(Path(tmp) / "export"), files, top_k, opts)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def predictions_table(results: list[dict]):
    """A rich Table of `predict`'s results: each input's classes, most probable first."""
    from .tables import narrow_table

    t = narrow_table("predictions (probability %)")
    for col in ("input", "rank", "class", "prob %"):
        t.add_column(col, justify="right" if col in ("rank", "prob %") else "left")
    for r in results:
        for rank, c in enumerate(r["top"], start=1):
            t.add_row(r["input"] if rank == 1 else "", str(rank), c["label"], f"{100 * c['prob']:.2f}")
    return t
