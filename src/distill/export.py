"""Export a classification run's student alone (`ClassificationTask.export`): ONNX (checked
against torch with onnxruntime), TorchScript (checked against torch), or safetensors weights."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch

from .classifier_run import load_run
from .errors import DistillError
from .models.outputs import LogitsOnly
from .run_folder import require
from .run_reader import weights_file
from .trust import NO_TRUST, Trust

FORMATS = ("onnx", "torchscript", "safetensors")
PARITY_TOLERANCE = 1e-4


def load_student(run_dir: Path, stage: str = "distill", trust: Trust = NO_TRUST):
    """(the stage's model in eval mode, a sample input batch) rebuilt from a run folder; a
    config naming code needs `trust.code` (distill.trust)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or weights_file(run_dir, stage) is None:
        raise DistillError(
            f"'{run_dir}' has no finished '{stage}' stage (config.yaml and {stage}.safetensors are "
            "needed). Give a run folder written by `distill run`, or pick --stage."
        )
    model, data = load_run(run_dir, stage, trust)
    return model, next(iter(data.test)).inputs[:8]


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, stage: str = "distill",
           trust: Trust = NO_TRUST) -> dict:
    """Write the exported student; return {"path", "format", "max_abs_diff" (onnx/torchscript)}."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise DistillError(f"'{run_dir}' is a classification run, which exports as one of "
                           f"{', '.join(FORMATS)}; --format {fmt} is another kind of run's. Use "
                           "--format onnx, torchscript or safetensors.")
    suffix = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}[fmt]
    if not out and (run_dir / "config.yaml").exists():  # (without it load_student says what is missing)
        require(run_dir, "run", "distill export")  # the default file lands in the run folder
    out = Path(out) if out else run_dir / f"{stage}-export{suffix}"
    if fmt == "safetensors":
        load_student(run_dir, stage, trust)  # checks the weights fit the configured architecture
        shutil.copyfile(run_dir / f"{stage}.safetensors", out)
        return {"path": str(out), "format": fmt}
    model, x = load_student(run_dir, stage, trust)
    model = LogitsOnly(model).eval()  # one graph output, whatever the forward returns
    with torch.no_grad():
        expected = model(x)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            scripted = torch.jit.trace(model, x)
            scripted.save(str(out))
            with torch.no_grad():
                got = torch.jit.load(str(out))(x)
    else:
        got = torch.from_numpy(_onnx(model, x, out))
    diff = (got - expected).abs().max().item()
    if diff > PARITY_TOLERANCE:
        raise DistillError(
            f"The exported {fmt} model disagrees with torch by {diff:.2e} (> {PARITY_TOLERANCE}); "
            f"it was written to {out} but should not be trusted."
        )
    return {"path": str(out), "format": fmt, "max_abs_diff": diff}


def _onnx(model: torch.nn.Module, x: torch.Tensor, out: Path):
    try:
        import onnxruntime
    except ImportError:
        raise DistillError(
            "ONNX export needs the optional packages onnx, onnxscript and onnxruntime: "
            "pip install 'distill[export]'."
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(out), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]
