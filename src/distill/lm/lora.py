"""LoRA students (`student.lora`, distill.lora_schema) through peft: low-rank adapters trained
on a frozen base (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):

    W x  ->  W x + (alpha / r) B A x,   A [r, in] and B [out, r] trained, W frozen

The base is `student.model` (a local folder, or an architecture built from `student.kwargs`
under the run's seed, so that every rebuild is the same model). Only the adapters train: the
base's parameters have requires_grad=False, and the optimizer takes only trainable ones
(schedule.build_optimizer). Only the adapters are saved: while the model holds LoRA layers,
its state dict is the adapter tensors plus the sha256 of the base's weights (`DIGEST_KEY`, a
buffer of the model, so that what walks a state dict's names as attributes finds it: FSDP's
torch.distributed.checkpoint does), so
checkpoints, best weights and `<stage>.safetensors` hold nothing else; loading such a state
checks the digest against the base rebuilt here (a changed base folder is an error, not
adapters silently applied to other weights) and keeps the base's own tensors.
`merge` folds the adapters into the base for `distill export --format hf`.
"""

from __future__ import annotations

import hashlib
from functools import partial

import torch
from torch import nn

from ..errors import DistillError
from ..lora_schema import ALL_LINEAR, LMStudentConfig, LoraConfig
from .models import ARCHITECTURES, create_lm

DIGEST_KEY = "lora_base_sha256"  # the base's digest in a LoRA student's state dict


def peft():
    try:
        import peft as module
    except ImportError:
        raise DistillError("student.lora needs the peft package: pip install 'distill[lora]'.") from None
    return module


def base_digest(model: nn.Module) -> bytes:
    """sha256 over the base's state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.digest()


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers LoRA can adapt here: Linear and GPT-2's Conv1D, not the output layer (the
    chunked token loss reads the output layer's weight itself, so an adapter there would not
    train; see distill.lm.chunked.Head)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D) and m is not head}


def target_layers(model: nn.Module, targets: list[str] | str) -> list[str]:
    """The full names of the layers `targets` (student.lora.target_modules) picks: every name
    must match (a module whose path is the name or ends with '.<name>'), and only adaptable
    layers (`_layers`)."""
    layers = _layers(model)
    if targets == ALL_LINEAR:
        return sorted(layers)
    names = [n for n, _ in model.named_modules() if n]
    leaves = sorted({n.rpartition(".")[2] for n in layers})
    chosen: set[str] = set()
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise DistillError(
                f"student.lora.target_modules names '{target}', which is no module of the student. "
                f"Its linear layers are named {', '.join(leaves[:12])} (e.g. {sorted(layers)[0]}); "
                f"name some of them, or use target_modules={ALL_LINEAR}."
            )
        bad = [n for n in hits if n not in layers]
        if bad:
            module = model.get_submodule(bad[0])
            what = "the output layer" if module is model.get_output_embeddings() else f"a {type(module).__name__}"
            raise DistillError(
                f"student.lora.target_modules: '{bad[0]}' is {what}; LoRA adapts the student's "
                f"linear layers except the output layer: {', '.join(leaves[:12])}."
            )
        chosen.update(hits)
    return sorted(chosen)


class AdapterState:
    """The state-dict hooks of a LoRA student (see the module docstring). They act only while
    the model holds LoRA layers: once merged (`merge`), its state dict is the whole model's."""

    def __init__(self, adapters: set[str], digest: bytes, source: str):
        self.adapters, self.digest, self.source = adapters, digest, source
        self.whole = False  # True while a load reads the base's own tensors

    def register(self, model: nn.Module) -> None:
        model.register_buffer(DIGEST_KEY, torch.tensor(list(self.digest), dtype=torch.uint8))
        # partials, not bound methods: torch marks each hook function with an attribute
        model.register_state_dict_post_hook(partial(AdapterState.save, self))
        model.register_load_state_dict_pre_hook(partial(AdapterState.load, self))

    @staticmethod
    def adapted(module: nn.Module) -> bool:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return any(isinstance(m, BaseTunerLayer) for m in module.modules())

    def save(self, module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
        if self.whole or not self.adapted(module):
            return
        for key in [k for k in state if k.startswith(prefix) and k[len(prefix):] not in self.kept]:
            del state[key]

    def load(self, module: nn.Module, state: dict, prefix: str, *_) -> None:
        if not self.adapted(module):
            return
        recorded = state.get(prefix + DIGEST_KEY)
        if recorded is None:
            raise DistillError(
                f"These weights hold no record of a LoRA base ('{DIGEST_KEY}'), so they were not "
                f"saved from this LoRA student ({self.source}). Load the run's own stage weights "
                "(<stage>.safetensors), or build the student without student.lora."
            )
        was = bytes(recorded.to(torch.uint8).reshape(-1).tolist())
        if was != self.digest:
            raise DistillError(
                f"The LoRA adapters were trained on another base than {self.source} (sha256 of the "
                f"base's weights {was.hex()[:12]}... when they were saved, {self.digest.hex()[:12]}... "
                "now): the base changed. Put the original base back, or train new adapters in a new run."
            )
        foreign = [k for k in state if k.startswith(prefix) and k[len(prefix):] not in self.kept]
        if foreign:
            raise DistillError(f"The weights hold base tensors (e.g. '{foreign[0]}'); a LoRA student's "
                               "weights are its adapters alone, its base comes from student.model.")
        self.whole = True
        try:
            base = module.state_dict()
        finally:
            self.whole = False
        state.update({prefix + k: v for k, v in base.items() if k not in self.kept})

    @property
    def kept(self) -> set[str]:
        """The names a LoRA student's state dict holds: its adapters and the base's digest."""
        return self.adapters | {DIGEST_KEY}


def adapt(model: nn.Module, lora: LoraConfig, source: str) -> nn.Module:
    """`model` with LoRA layers injected in place (peft.inject_adapter_in_model: the model stays
    a transformers model), its base frozen and its state dict the adapters' (AdapterState)."""
    p = peft()
    from transformers.pytorch_utils import Conv1D

    digest = base_digest(model)
    names = target_layers(model, lora.target_modules)
    conv1d = {isinstance(model.get_submodule(n), Conv1D) for n in names}
    if len(conv1d) > 1:  # peft's fan_in_fan_out is one flag for all layers
        raise DistillError("student.lora.target_modules mixes Linear and Conv1D layers; name layers of one kind.")
    config = p.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=names, fan_in_fan_out=conv1d == {True})
    p.inject_adapter_in_model(config, model)
    adapters = {n for n, param in model.named_parameters() if param.requires_grad}
    AdapterState(adapters, digest, source).register(model)
    return model


def create_student(spec: LMStudentConfig, vocab_size: int, tokenizer, seed: int,
                   trust_checkpoint: bool = False) -> nn.Module:
    """A language-model run's student: create_lm's model or, with `spec.lora`, that model as a
    frozen base built under `seed` (the same base at every rebuild) with LoRA adapters."""
    if spec.lora is None:
        return create_lm(spec.model, spec.kwargs, vocab_size, tokenizer, role="student",
                         trust_checkpoint=trust_checkpoint)
    peft()  # the missing extra named before a base is built
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = create_lm(spec.model, spec.kwargs, vocab_size, tokenizer, role="student",
                         trust_checkpoint=trust_checkpoint)
    built = spec.model in ARCHITECTURES
    source = (f"the {spec.model} base built from student.kwargs with seed {seed}" if built
              else f"student.model '{spec.model}'")
    return adapt(base, spec.lora, source)


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """peft's merge_and_unload on a model with injected LoRA layers: each adapted layer's
    W + (alpha / r) B A written into W, and the plain layer put back in its wrapper's place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    vars(model).pop("peft_config", None)  # peft's record on the model: the adapters are gone
    model._buffers.pop(DIGEST_KEY, None)  # and so is what they were trained on
    return model
