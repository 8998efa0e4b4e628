"""Text classifiers: a Hugging Face sequence classifier behind one forward(ids) -> logits.

`TextClassifier` wraps any AutoModelForSequenceClassification so that everything distill
does to a classifier works on it unchanged: the batch's inputs are the token ids alone, and
the attention mask is worked out from them (`ids != pad_id`, whichever side the padding is on). So the hooks, the
teacher cache, evaluation, the cost table and export see a model of one tensor.

What a transformer term reads is exposed as tap modules (nn.Identity), hookable by path like
any module:

    embeddings    the embedding layer's output            [B, L, d]
    hidden.<i>    transformer layer i's output, i = 1..N   [B, L, d]
    attention.<i> layer i's attention probabilities        [B, heads, L, L]
    values.<i>    layer i's value projection's output      [B, L, heads * d_head]

Attention probabilities are asked of the model only while an attention tap is hooked, and
values are tapped (by forward hooks on the value projections, held for one forward) only
while a value tap is: otherwise the model runs as it would alone. Hugging Face models return
the probabilities after attention dropout (zeros, and the rest scaled by 1/(1-p)), which are
no distribution to match, so while an attention tap is hooked the attention-probability
dropout (ATTENTION_DROPOUT) is off; the model's other dropout is untouched.

Models (`teacher.model` / `student.model`):
- `bert`: a BertForSequenceClassification built from a BertConfig of the kwargs (hidden_size,
  num_hidden_layers, num_attention_heads, intermediate_size, ...), vocab_size from the
  tokenizer and enough positions for data.max_length;
- `hf`: any architecture from a config, kwargs {model_type: ..., ...};
- a local folder saved with save_pretrained (local_files_only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError
from ..models.hf import from_config, is_hf_folder, load_pretrained

AUTO = "AutoModelForSequenceClassification"
VALUE_SUFFIXES = ("attention.self.value", "attention.v_lin", "self_attn.v_proj", "attn.v_proj")
BUILT_IN = ("bert", "hf")
# the dropout applied to attention probabilities, by module name (BERT/RoBERTa/ELECTRA, DistilBERT, others)
ATTENTION_DROPOUT = ("attention.self.dropout", "attention.dropout", "self_attn.dropout", "attn.attn_dropout")


def _value_modules(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith(VALUE_SUFFIXES)]


class TextClassifier(nn.Module):
    """A sequence classifier taking padded token ids (the module docstring)."""

    def __init__(self, model: nn.Module, pad_id: int):
        super().__init__()
        self.model, self.pad_id = model, int(pad_id)
        depth = model.config.num_hidden_layers
        self.depth = depth
        self.embeddings = nn.Identity()
        self.hidden = nn.ModuleDict({str(i): nn.Identity() for i in range(1, depth + 1)})
        self.attention = nn.ModuleDict({str(i): nn.Identity() for i in range(1, depth + 1)})
        self.values = nn.ModuleDict({str(i): nn.Identity() for i in range(1, depth + 1)})
        # found once, not per forward (plain lists: not submodules twice over; deepcopy maps them)
        self._value_projections = _value_modules(model)
        self._attention_dropouts = [m for n, m in model.named_modules()
                                    if isinstance(m, nn.Dropout) and n.endswith(ATTENTION_DROPOUT)]

    @staticmethod
    def _hooked(taps: nn.ModuleDict) -> bool:
        # whether a FeatureCapture hooks a tap: torch has no public query for a module's hooks
        return any(tap._forward_hooks for tap in taps.values())

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = ids.long()  # count_flops and listings probe with float zeros
        mask = (ids != self.pad_id).long() if mask is None else mask.long()
        handles = []
        if self._hooked(self.values):
            found = self._value_projections
            if len(found) != self.depth:
                raise DistillError(f"The model has {len(found)} value projections distill can find "
                                   f"({', '.join(VALUE_SUFFIXES)}) for {self.depth} layers, so values.<i> "
                                   "cannot be tapped; use a BERT-style model or another term.")
            handles = [m.register_forward_hook(lambda _m, _i, out, tap=self.values[str(i)]: tap(out))
                       for i, m in enumerate(found, 1)]
        attentions = self._hooked(self.attention)
        dropouts = self._attention_dropouts if attentions else []
        rates = [m.p for m in dropouts]
        try:
            for m in dropouts:
                m.p = 0.0  # tapped probabilities must be a distribution (module docstring)
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                             output_attentions=attentions)
        finally:
            for h in handles:
                h.remove()
            for m, rate in zip(dropouts, rates, strict=True):
                m.p = rate
        states = out.hidden_states
        self.embeddings(states[0])
        for i in range(1, self.depth + 1):
            self.hidden[str(i)](states[i])
            if out.attentions is not None:
                self.attention[str(i)](out.attentions[i - 1])
        return out.logits


def _check_own_tokenizer(folder: str, tokenizer: str | None, role: str) -> None:
    """A model folder saved with its tokenizer was trained on that tokenizer's ids: the data
    must be tokenized by it (data.tokenizer naming that folder, or one with the same vocabulary)."""
    own = Path(folder)
    if tokenizer is None or not any((own / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return
    from ..lm.tokenizer import vocab_digest
    from .tokenizer import load_text_tokenizer

    same = tokenizer != "words" and (Path(tokenizer).resolve() == own.resolve() or vocab_digest(
        load_text_tokenizer(tokenizer, 0).tok) == vocab_digest(load_text_tokenizer(folder, 0).tok))
    if not same:
        raise DistillError(f"The {role} in '{folder}' comes with its own tokenizer, and data.tokenizer={tokenizer} "
                           f"tokenizes differently: its token ids would mean other text to the model. Set "
                           f"data.tokenizer={folder}.")


def create_text_model(spec, num_classes: int, vocab_size: int, pad_id: int, max_length: int,
                      role: str, trust_checkpoint: bool = False, tokenizer: str | None = None) -> TextClassifier:
    """The TextClassifier of a ModelConfig `spec` (the module docstring); `tokenizer` is
    data.tokenizer (a model folder's own tokenizer must be it)."""
    name, kwargs = spec.model, dict(spec.kwargs)
    if is_hf_folder(name) and kwargs:
        raise DistillError(f"{role}.model is the folder '{name}', whose config.json fixes the architecture; "
                           f"{role}.kwargs ({', '.join(sorted(kwargs))}) would be ignored. Remove them.")
    if is_hf_folder(name):
        _check_own_tokenizer(name, tokenizer, role)
        model = load_pretrained(name, AUTO, num_classes, role, trust_checkpoint)
        vocab = model.get_input_embeddings().weight.shape[0]
        if vocab < vocab_size:
            raise DistillError(f"The {role} in '{name}' has {vocab} token embeddings but the tokenizer "
                               f"has {vocab_size} tokens. Use the tokenizer the model was trained with "
                               f"(data.tokenizer={name}).")
    elif name in BUILT_IN:
        if name == "bert":
            kwargs["model_type"] = "bert"
        elif "model_type" not in kwargs:
            raise DistillError(f"{role}.model=hf builds a model from a config: set {role}.kwargs.model_type "
                               "(e.g. bert, distilbert, roberta).")
        fixed = {"vocab_size": vocab_size, "num_labels": num_classes, "pad_token_id": pad_id}
        kwargs.setdefault("max_position_embeddings", max(512, max_length))
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise DistillError(f"{role}.kwargs.{clash[0]} is set by distill (from the tokenizer and the data); "
                               "remove it.")
        model = from_config(AUTO, kwargs, attn_implementation="eager", **fixed)
    else:
        raise DistillError(f"{role}.model for a text_classification run is bert, hf (with kwargs.model_type) "
                           f"or a local folder saved with save_pretrained; got '{name}'.")
    if model.config.num_hidden_layers < 1:
        raise DistillError(f"The {role} has {model.config.num_hidden_layers} transformer layers; give it at least 1 "
                           f"({role}.kwargs.num_hidden_layers).")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and positions < max_length:
        raise DistillError(f"data.max_length={max_length} exceeds the {role}'s {positions} positions; "
                           "lower data.max_length.")
    return TextClassifier(model, pad_id)


def model_depth(spec) -> int:
    """The number of transformer layers `spec` builds, read from its config alone (a layer map
    is resolved before any model is built)."""
    if is_hf_folder(spec.model):
        config = json.loads((Path(spec.model) / "config.json").read_text())
    elif spec.model in BUILT_IN:
        kwargs = {"model_type": "bert", **spec.kwargs} if spec.model == "bert" else dict(spec.kwargs)
        config = from_config_only(kwargs)
    else:
        return 0  # create_text_model says what is wrong with it
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise DistillError(f"Cannot tell how many layers '{spec.model}' has (no num_hidden_layers in its config).")


def from_config_only(kwargs: dict) -> dict:
    """The config dict transformers would build from `kwargs` (model_type plus its keys)."""
    from ..models.hf import transformers_module

    kwargs = dict(kwargs)
    kind = kwargs.pop("model_type", None)
    try:
        return transformers_module().AutoConfig.for_model(kind, **kwargs).to_dict()
    except (ValueError, TypeError) as e:
        raise DistillError(f"Cannot build a {kind!r} config from {sorted(kwargs)}: {e}") from None
