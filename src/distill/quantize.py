"""int8 ONNX models (`distill export --format onnx --quantize int8`) with onnxruntime.quantization,
and the measurement that goes with them: test accuracy, file size and batch-1 latency of the
fp32 and the int8 model, on this machine, in one run.

Which quantization, by the ops in the fp32 graph:

- a graph with a Conv (cnn, resnet*, wrn*, vgg*, mobilenetv2, shufflenet*): static
  quantization, QDQ format, int8 weights per output channel and uint8 activations, the
  activation ranges calibrated (MinMax) on a few hundred training samples of the run fed as raw
  inputs through the same graph. Static is what lets onnxruntime run its integer convolution
  kernels; dynamic quantization leaves convolutions in float (or uses slow ConvInteger).
- a graph of MatMul/Gemm only (mlp and other linear-only models): dynamic quantization, int8
  weights, activations quantized per batch at run time: no calibration, and it keeps the
  accuracy of models whose activations have wide ranges.

The nodes that prepare the raw input (the export wrapper's Cast, scale and (x - mean) / std,
named outside "/model/") stay float in both. Latencies are medians of `repeats` batch-1 runs
after `warmup` untimed ones, fp32 and int8 alternating, on one onnxruntime thread (intra- and
inter-op) with the CPU provider: measurements of this machine, never asserted by tests.
"""

from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import DistillError
from .io import atomic_write

LATENCY_REPEATS = 200  # timed batch-1 runs per model (benchmarks/int8.py sets more)
CONV_OPS = {"Conv", "ConvTranspose"}
LINEAR_OPS = {"MatMul", "Gemm"}
INSTALL = ("ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
           "pip install 'distill[export]'.")


def onnxruntime():
    """The onnxruntime module, or a DistillError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DistillError(INSTALL) from None
    return ort


def session(path: Path, threads: int | None = 1):
    """An onnxruntime CPU session of `path` (`threads` intra- and inter-op threads; None: its
    default); a file onnxruntime cannot load is a DistillError naming it."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3  # errors only: its warnings about initializers are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ...: onnxruntime's own classes
        raise DistillError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0][:300]}. The file "
                           "is corrupt or not an ONNX model; export it again (distill export RUN "
                           "--format onnx).") from None


def graph_ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _float_prep(path: Path) -> list[str]:
    """Nodes outside the student ("/model/..."): the export wrapper's input preparation."""
    import onnx

    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    return [n for n in names if not n.startswith("/model/")] if any(n.startswith("/model/") for n in names) else []


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def quantize_int8(model: Path, out: Path, calibration: Callable[[], list[dict[str, np.ndarray]]]) -> dict:
    """Write the int8 version of ONNX `model` to `out` (module docstring); `calibration()` gives
    the raw input batches for static quantization (called only when it is static). Returns what
    was done: {"method", "why", "format", "weights", "activations", "per_channel", "calibration"}."""
    onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ops = graph_ops(model)
    if not ops & (CONV_OPS | LINEAR_OPS):
        raise DistillError(f"'{model}' has no Conv, MatMul or Gemm to quantize (its ops: "
                           f"{', '.join(sorted(ops))}); use the fp32 model.")
    static = bool(ops & CONV_OPS)
    keep = _float_prep(model)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # per-channel axis notes on BatchNorm weights, etc.
        try:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
            if static:
                batches = calibration()
                samples = sum(len(next(iter(b.values()))) for b in batches)
                info = {"method": "static", "format": "QDQ", "weights": "int8, per channel",
                        "activations": "uint8, MinMax-calibrated", "per_channel": True,
                        "calibration": {"samples": samples, "split": "train", "method": "MinMax"},
                        "why": "the graph has convolutions: static QDQ runs them in onnxruntime's integer kernels"}

                def write(tmp_out: Path) -> None:
                    quantize_static(str(pre), str(tmp_out), _Reader(batches), quant_format=QuantFormat.QDQ,
                                    per_channel=True, weight_type=QuantType.QInt8,
                                    activation_type=QuantType.QUInt8, nodes_to_exclude=keep)
            else:
                info = {"method": "dynamic", "format": "QOperator (MatMulInteger)", "weights": "int8",
                        "activations": "uint8, ranges computed per batch at run time", "per_channel": False,
                        "calibration": None,
                        "why": "the graph is linear layers only (MatMul/Gemm): dynamic quantization needs no "
                               "calibration and keeps activations' full range"}

                def write(tmp_out: Path) -> None:
                    quantize_dynamic(str(pre), str(tmp_out), weight_type=QuantType.QInt8, nodes_to_exclude=keep)
            atomic_write(out, write)
        except DistillError:
            raise
        except Exception as e:
            raise DistillError(f"onnxruntime could not quantize '{model}': {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300] if str(e) else ''}. The fp32 model is "
                               "unaffected; use it, or export without --quantize.") from None
        finally:
            logging.disable(logging.NOTSET)
    return info


def _predict(sess, batches: Iterable[tuple[dict[str, np.ndarray], np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = [], []
    for inputs, y in batches:
        preds.append(sess.run(None, inputs)[0].argmax(axis=1))
        labels.append(y)
    return np.concatenate(preds), np.concatenate(labels)


def _latencies(sessions: dict, example: dict[str, np.ndarray], repeats: int, warmup: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of each session, timed alternately so drift hits all alike."""
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, example)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, example)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def measure(models: dict[str, Path], test: Callable[[], Iterator[tuple[dict[str, np.ndarray], np.ndarray]]],
            example: dict[str, np.ndarray], repeats: int | None = None, warmup: int = 20, threads: int = 1) -> dict:
    """{name: {"file", "size_bytes", "acc" (% on `test()`'s batches), "latency_ms"}} for each ONNX
    model, plus "agreement" (% of test samples where int8 and fp32 predict the same class) and
    "latency" (how the times were taken). `example`: one batch-1 input; `repeats`: LATENCY_REPEATS."""
    repeats = repeats or LATENCY_REPEATS
    sessions = {name: session(path, threads) for name, path in models.items()}
    out, preds = {}, {}
    for name, sess in sessions.items():
        p, y = _predict(sess, test())
        preds[name] = p
        out[name] = {"file": models[name].name, "size_bytes": models[name].stat().st_size,
                     "acc": 100.0 * float((p == y).mean()) if len(y) else None}
    for name, ms in _latencies(sessions, example, repeats, warmup).items():
        out[name]["latency_ms"] = ms
    if {"fp32", "int8"} <= set(preds):
        out["agreement"] = 100.0 * float((preds["fp32"] == preds["int8"]).mean())
    out["test_samples"] = int(len(next(iter(preds.values()))))
    out["latency"] = {"batch": 1, "repeats": repeats, "warmup": warmup, "threads": threads,
                      "statistic": "median", "provider": "CPUExecutionProvider",
                      "onnxruntime": onnxruntime().__version__, "machine": platform.machine(),
                      "processor": platform.processor() or None,
                      "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return out


def int8_table(record: dict):
    """A rich Table of quantization.json: fp32 vs int8 accuracy, size and latency."""
    from .tables import narrow_table

    lat = record["latency"]
    t = narrow_table(f"int8 ({record['method']}) vs fp32 ONNX on {record['test_samples']} test samples; "
                     f"latency: batch 1, median of {lat['repeats']}, {lat['threads']} thread")
    for col in ("model", "test acc %", "size (KB)", "latency (ms)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name in ("fp32", "int8"):
        m = record[name]
        acc = "–" if m["acc"] is None else f"{m['acc']:.2f}"
        t.add_row(m["file"], acc, f"{m['size_bytes'] / 1024:,.1f}", f"{m['latency_ms']:.3f}")
    r = record["ratio"]
    t.add_row("int8 / fp32", "", f"{r['size_bytes']:.3f}×", f"{r['latency_ms']:.3f}×" if r["latency_ms"] else "–")
    if record.get("agreement") is not None:
        t.caption = f"int8 and fp32 predict the same class on {record['agreement']:.2f}% of the test samples."
    return t
