"""Hugging Face transformers models as distill classifiers: from a local folder or a config.

Two ways to get one, shared by every task that uses transformers (image classifiers here, text
classifiers in distill.text.models):

- `load_pretrained(folder, auto_class, ...)`: a folder written by `save_pretrained` (config.json
  and weights), read with `local_files_only`: nothing is ever downloaded. Weights are read from
  safetensors only; a folder with only pickled `.bin` weights (unpickling can run code) needs
  the user's --trust-checkpoint. The folder's head must already have the data's class count:
  a new, random head would silently throw the teacher's knowledge away.
- `from_config(auto_class, kwargs, **fixed)`: a fresh model from `kwargs` as config fields
  (`model_type` plus e.g. hidden_size, num_hidden_layers, patch_size), initialised from torch's
  RNG like every distill model (the same seed, the same weights). transformers accepts any
  key silently, so a key the config class does not have is refused with the closest names.

`hf_image` (registered as `model: hf_image`) builds an AutoModelForImageClassification for the
data's input shape and classes. Its forward takes pixel values positionally and returns an
`ImageClassifierOutput`, whose `.logits` distill reads (models.outputs.logits_of).

transformers is an optional extra: `pip install 'distill[lm]'`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from ..errors import DistillError, clip

IMAGE = "AutoModelForImageClassification"
EXAMPLES = {IMAGE: "vit, deit, convnext, resnet, swin",
            "AutoModelForSequenceClassification": "bert, distilbert, roberta"}
INIT_ONLY = ("attn_implementation",)  # config arguments that are not attributes of the config


def transformers_module():
    """The transformers package (quiet: no config warnings, no progress bars), or a DistillError
    naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise DistillError(
            "Hugging Face models (a save_pretrained folder, model: hf_image, task: language_model or "
            "text_classification) need the transformers package: pip install 'distill[lm]'."
        ) from None
    transformers.logging.set_verbosity_error()  # notes about unused config keys are noise here
    transformers.logging.disable_progress_bar()  # "Loading weights" bars for small local models
    return transformers


def is_hf_folder(spec: str) -> bool:
    """Whether `spec` is a local folder holding a config.json (as save_pretrained writes)."""
    return isinstance(spec, str) and bool(spec) and (Path(spec) / "config.json").is_file()


def _first_line(e: Exception) -> str:
    return clip(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, 200)


def _new_head(auto_class: str, num_labels: int) -> str:
    return (f"transformers.{auto_class}.from_pretrained(folder, num_labels={num_labels}, "
            "ignore_mismatched_sizes=True).save_pretrained(new_folder)")


def check_weights_file(folder: Path, role: str, trust_checkpoint: bool) -> None:
    if trust_checkpoint or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise DistillError(
            f"The {role} folder '{folder}' has weights only as pickle ({', '.join(pickles[:3])}), and "
            "unpickling a file can run code. Save it as safetensors (model.save_pretrained(folder), "
            "the default), or pass --trust-checkpoint if you trust whoever wrote the folder."
        )
    raise DistillError(
        f"The {role} folder '{folder}' has config.json but no weights (model.safetensors). Save the "
        "model with model.save_pretrained(folder)."
    )


def load_pretrained(folder: str, auto_class: str, num_labels: int | None, role: str,
                    trust_checkpoint: bool = False) -> nn.Module:
    """`transformers.<auto_class>.from_pretrained(folder)`, local files only, safetensors unless
    `trust_checkpoint`; its head must have `num_labels` outputs (when given) and every weight
    must come from the folder (see the module docstring)."""
    tf, path = transformers_module(), Path(folder)
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise DistillError(
            f"Cannot read the {role}'s config.json in '{folder}' ({_first_line(e)}). The folder needs "
            "config.json and weights as save_pretrained writes them; nothing is downloaded."
        ) from None
    if num_labels is not None and config.num_labels != num_labels:
        raise DistillError(
            f"The {role} in '{folder}' has {config.num_labels} output labels (config.json) but the data "
            f"has {num_labels} classes. Use a model fine-tuned for {num_labels} classes; to start from "
            f"this one with a new, random head on purpose, save that first: {_new_head(auto_class, num_labels)}."
        )
    check_weights_file(path, role, trust_checkpoint)
    try:
        model, info = getattr(tf, auto_class).from_pretrained(
            folder, config=config, local_files_only=True, use_safetensors=None if trust_checkpoint else True,
            attn_implementation="eager", output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise DistillError(
            f"Cannot load the {role} from '{folder}' as {auto_class} ({_first_line(e)}). The folder needs "
            "config.json and weights as save_pretrained writes them, of a model with that head "
            f"(model_type {config.model_type!r})."
        ) from None
    fresh = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
    if fresh:
        names = ", ".join(str(k if isinstance(k, str) else k[0]) for k in list(fresh)[:4])
        raise DistillError(
            f"The weights in '{folder}' do not cover the {role}'s {auto_class}: {len(fresh)} tensor(s) "
            f"would start random ({names}{', ...' if len(fresh) > 4 else ''}). Use a model saved with its "
            "classification head; to add a new, random head on purpose, save that first: "
            f"{_new_head(auto_class, num_labels or config.num_labels)}."
        )
    return model


def _check_keys(default, kwargs: dict, model_type: str) -> None:
    fields = sorted(k for k in default.to_dict() if not k.startswith("_") and k != "transformers_version")
    known = set(fields) | set(INIT_ONLY)
    unknown = [k for k in kwargs if k not in known and not _is_field(default, k)]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=4, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise DistillError(
            f"kwargs.{key} is not a field of the {model_type} config ({type(default).__name__}), so "
            f"transformers would ignore it.{hint} Its fields: {', '.join(fields[:40])}."
        )


def _is_field(config, key: str) -> bool:
    """A config attribute that holds a value (num_labels is a property), not a method."""
    if key.startswith("_") or not hasattr(config, key):
        return False
    return not callable(getattr(type(config), key, None))


def from_config(auto_class: str, kwargs: dict, **fixed) -> nn.Module:
    """A fresh `transformers.<auto_class>` from `kwargs` (`model_type` + config fields) and the
    `fixed` fields distill sets from the data (num_labels, image size, ...)."""
    tf = transformers_module()
    kwargs = dict(kwargs)
    model_type = kwargs.pop("model_type", None)
    examples = EXAMPLES.get(auto_class, "vit, bert")
    if not model_type:
        raise DistillError(f"A Hugging Face model built from a config needs kwargs.model_type (e.g. {examples}).")
    if model_type not in tf.CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(tf.CONFIG_MAPPING.keys()), n=4)
        raise DistillError(
            f"Unknown kwargs.model_type {model_type!r}.{' Close names: ' + ', '.join(close) + '.' if close else ''} "
            f"For {auto_class}, e.g. {examples}."
        )
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise DistillError(f"kwargs.{clash[0]} is set by distill (from the data); remove it.")
    default = tf.CONFIG_MAPPING[model_type]()
    _check_keys(default, kwargs, model_type)
    try:
        config = tf.AutoConfig.for_model(model_type, **kwargs, **fixed)
        return getattr(tf, auto_class).from_config(config)
    except (TypeError, ValueError, AttributeError, ArithmeticError, IndexError) as e:  # 0 heads: a modulo by 0
        reason = _first_line(e)
    except Exception as e:  # huggingface_hub's strict dataclass validation (a field of the wrong type)
        if "Validation" not in type(e).__name__:
            raise
        reason = " ".join(str(e).split())
    if "Unrecognized configuration class" in reason:
        reason = f"transformers has no {auto_class} for model_type {model_type!r}; use e.g. {examples}"
    raise DistillError(f"Cannot build a {model_type} {auto_class} from kwargs {clip(str(kwargs), 200)}: "
                       f"{clip(reason, 300)}.")


def image_shape(in_shape) -> tuple[int, int]:
    """(channels, side) of a square image shape (C, H, W), or a DistillError."""
    shape = tuple(in_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise DistillError(
            f"model: hf_image takes square images of shape (channels, height, width); this data's "
            f"inputs have shape {shape}. Resize or crop them to a square (data.size / data.crop), or "
            "use a model for this shape."
        )
    return int(shape[0]), int(shape[1])


def hf_image(in_shape, num_classes: int, model_type: str = "vit", **config) -> nn.Module:
    """A Hugging Face image classifier (AutoModelForImageClassification) built from a config:
    `model_type` and its fields (e.g. hidden_size, num_hidden_layers, num_attention_heads,
    intermediate_size, patch_size; the config class's defaults for the rest), with the class
    count, channels and image size taken from the data. Attention is 'eager' unless
    `attn_implementation` says otherwise (so hooked attention modules return their weights)."""
    channels, side = image_shape(in_shape)
    tf = transformers_module()
    defaults = tf.CONFIG_MAPPING[model_type]() if model_type in tf.CONFIG_MAPPING else None
    fixed = {"num_labels": num_classes, "attn_implementation": config.pop("attn_implementation", "eager")}
    for key, value in (("num_channels", channels), ("image_size", side)):
        if defaults is None or _is_field(defaults, key):
            fixed[key] = value
    model = from_config(IMAGE, {"model_type": model_type, **config}, **fixed)
    patch = getattr(model.config, "patch_size", None)
    if isinstance(patch, int) and "image_size" in fixed and (patch > side or side % patch):
        raise DistillError(
            f"patch_size {patch} does not tile this data's {side}x{side} images; use a divisor of "
            f"{side} (e.g. {', '.join(str(d) for d in range(1, side + 1) if side % d == 0)})."
        )
    return model
