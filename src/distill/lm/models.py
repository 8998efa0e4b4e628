"""Causal language models for `task: language_model`: Hugging Face transformers, never the hub.

`model:` is a local folder saved with `save_pretrained` (config.json + weights), or the name of
an architecture built from scratch from `kwargs` as config fields:

    gpt2:  n_layer, n_embd, n_head, n_positions, ... (GPT2Config)
    llama: num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, ... (LlamaConfig)

`vocab_size` defaults to the run's tokenizer's. transformers is an optional extra:
`pip install 'distill[lm]'`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DistillError
from .chunked import Head

ARCHITECTURES = ("gpt2", "llama")


def transformers():
    try:
        import transformers as tf
    except ImportError:
        raise DistillError(
            "task: language_model needs the transformers package: pip install 'distill[lm]'."
        ) from None
    tf.logging.set_verbosity_error()  # config warnings about unused special tokens are noise here
    tf.logging.disable_progress_bar()  # "Loading weights" bars for tiny local models
    return tf


def build_config(name: str, vocab_size: int, kwargs: dict, tokenizer=None):
    tf = transformers()
    cls = {"gpt2": tf.GPT2Config, "llama": tf.LlamaConfig}[name]
    special = {}
    if tokenizer is not None:  # GPT-2's config names token 50256 otherwise
        special = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
    try:
        return cls(**{"vocab_size": vocab_size, **special, **kwargs})
    except (TypeError, ValueError) as e:
        raise DistillError(f"Cannot build a {name} config from kwargs {kwargs}: {e}") from None


def create_lm(spec: str, kwargs: dict, vocab_size: int, tokenizer=None, role: str = "model",
              trust_checkpoint: bool = False) -> torch.nn.Module:
    """A causal LM from a local folder or an architecture name (see the module docstring); a
    folder's pickled (.bin) weights only with `trust_checkpoint` (unpickling can run code)."""
    tf = transformers()
    if spec in ARCHITECTURES:
        config = build_config(spec, vocab_size, kwargs, tokenizer)
        model = tf.AutoModelForCausalLM.from_config(config)
    elif Path(spec).is_dir():
        from ..models.hf import check_weights_file

        check_weights_file(Path(spec), role, trust_checkpoint)
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(spec, local_files_only=True, **kwargs)
        except (OSError, ValueError, TypeError) as e:
            raise DistillError(
                f"Cannot load a causal LM from '{spec}' ({str(e).splitlines()[0][:200]}). The folder "
                "needs config.json and weights as save_pretrained writes them."
            ) from None
    else:
        raise DistillError(
            f"Unknown language model '{spec}'. Give {' or '.join(ARCHITECTURES)} (built from "
            "kwargs), or a local folder saved with save_pretrained. Nothing is downloaded."
        )
    return model


def vocab_rows(model: torch.nn.Module) -> int:
    """Rows of the output layer: the number of logits the model produces per position."""
    return int(model.get_output_embeddings().weight.shape[0])


def hidden_states(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden states [B, L, H] (after the final norm), without the output layer: the
    chunked loss applies that itself (distill.lm.chunked). Every LM forward goes through here.
    `positions` [B, L]: a packed row's position ids, restarting at 0 per document; with no
    attention mask and no cache, transformers then attends within each document only
    (distill.lm.packing). None: one sequence per row, positions 0..L-1."""
    return model.base_model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state


@torch.no_grad()
def check_head(model: torch.nn.Module, role: str, ids: torch.Tensor, positions: torch.Tensor | None = None) -> None:
    """The chunked loss computes logits as Head.of(model).logits(last hidden state): the output
    layer, then the model's known fixed transform (soft-capping as in Gemma 2, a scale as in
    Cohere or Granite: distill.lm.logit_transform). A model that post-processes logits in any
    other way would silently train on the wrong distribution, so check it once on a probe."""
    model.eval()
    full = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    head = Head.of(model)
    ours = head.logits(hidden_states(model, ids, positions))
    if not torch.allclose(full, ours, rtol=1e-4, atol=1e-4):
        raise DistillError(
            f"The {role}'s logits are not its output layer applied to its last hidden states, "
            f"followed by the transform distill knows for it ({head.transform.describe()}): max "
            f"difference {(full - ours).abs().max():.3g}. It post-processes logits in a way the "
            "chunked token loss does not reproduce (known: soft-capping of Gemma 2/3, logit "
            "scales of Cohere, Granite, Falcon-H1). Use a model whose logits are its output "
            "layer's, or one of those."
        )
