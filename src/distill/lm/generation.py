"""Sequence-level KD (Kim & Rush 2016): the teacher writes completions the student trains on.

Kim & Rush train the student on the teacher's own outputs ŷ ≈ argmax_y p_teacher(y | x)
(beam search in the paper; greedy decoding or sampling here) with plain CE, optionally on top
of word-level KD. `generate` writes one `{"prompt", "completion"}` line per prompt of a JSONL
file, which `data.name: jsonl` reads unchanged (configs/lm/seqkd.yaml).

- Input: one JSON object per line with a string `prompt` (other fields, e.g. a reference
  `completion`, are ignored) or, for plain-text rows, `text`, which is then the prompt. Chat
  `messages` are not rendered: write them out as a prompt string first.
- Decoding: greedy (argmax each step), or sampling at `temperature`, optionally restricted to
  the `top_k` most likely tokens and/or the smallest set with probability >= `top_p` (nucleus
  sampling, Holtzman et al. 2020). Each prompt draws from its own generator, seeded from
  (seed, prompt number), so a line does not depend on which prompts were generated before it:
  the same seed gives the same file, however often it was stopped and continued.
- A completion ends at the model's first <eos> (not written) or after `max_new_tokens`.
- A prompt longer than the model's positions leave room for (positions - max_new_tokens) is
  left-truncated for the model (its last tokens kept); the file keeps the whole prompt.
- An empty prompt starts from <eos>, as packed text follows the previous example's <eos>.

Batches are left-padded with an attention mask (transformers' generate), so batching does not
change what a prompt sees; the model's own logits are used, soft-capped or scaled where its
architecture does so (distill.lm.logit_transform). The output file is written as
distill.lm.generate_file describes: resumable, and never over a file distill did not write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError
from ..io import text_lines
from ..progress import progress_bar
from ..runtime import Interrupted, resolve_device, stop_handlers, stop_requested
from ..stores import teacher_hash
from ..trust import NO_TRUST, Trust
from .generate_file import GenerateFile
from .generate_model import load_model, positions
from .models import transformers
from .tokenizer import vocab_digest


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen: greedy, or seeded sampling (temperature, top-k, top-p)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not self.temperature > 0:
            raise DistillError(f"--temperature must be > 0 (got {self.temperature}); use --greedy for argmax decoding.")
        if self.top_k is not None and self.top_k < 1:
            raise DistillError(f"--top-k must be >= 1 (got {self.top_k}); leave it out to sample from every token.")
        if not 0 < self.top_p <= 1:
            raise DistillError(f"--top-p must be in (0, 1] (got {self.top_p}); 1 keeps every token.")


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index`'s generator: a hash of (seed, index), 63 bits."""
    digest = hashlib.sha256(f"distill-generate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SeededSampler:
    """A transformers logits processor that samples each row's next token from its own
    torch.Generator and leaves only that token finite; generate's greedy step then picks it.
    (transformers' own sampling draws from the global RNG, shared by the whole batch.)"""

    def __init__(self, decoding: Decoding, generators: list[torch.Generator]):
        self.decoding, self.generators = decoding, generators

    def filtered(self, scores: torch.Tensor) -> torch.Tensor:
        """Logits / T with tokens outside the top-k and the top-p nucleus set to -inf."""
        d = self.decoding
        logits = scores.float() / d.temperature
        if d.top_k is not None and d.top_k < logits.shape[-1]:
            kth = logits.topk(d.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if d.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = ordered.softmax(-1)
            # drop a token when the more likely ones already hold top_p of the mass (the first stays)
            drop = (probs.cumsum(-1) - probs) >= d.top_p
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        return logits

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = self.filtered(scores).softmax(-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picks[:, None], 0.0)


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSONL file (`prompt`, or `text`, per line; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"--prompts '{path}' is not a file; give a .jsonl file with a 'prompt' field per line.")
    prompts = []
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DistillError(f"{path}, line {n}: not valid JSON ({e}). Write one object per line.") from None
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(text, str):
            chat = " (chat 'messages' are not rendered: write each as a prompt string)" if \
                isinstance(row, dict) and "messages" in row else ""
            raise DistillError(f"{path}, line {n}: each line needs a string 'prompt' (or 'text') field{chat}.")
        prompts.append(text)
    if not prompts:
        raise DistillError(f"'{path}' holds no prompts.")
    return prompts


def _batch_inputs(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: every prompt ends at the last position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], attention[i, width - len(r):] = torch.tensor(r), 1
    return ids.to(device), attention.to(device)


@torch.no_grad()
def complete(model: nn.Module, rows: list[list[int]], first: int, decoding: Decoding,
             max_new_tokens: int, eos_id: int, pad_id: int) -> list[tuple[list[int], bool]]:
    """(new tokens before the first <eos>, whether it ended at <eos>) for each prompt's ids;
    `first` is the number of the batch's first prompt (it seeds their generators)."""
    tf = transformers()
    device = next(model.parameters()).device
    ids, attention = _batch_inputs(rows, pad_id, device)
    processors = []
    if not decoding.greedy:
        generators = [torch.Generator(device).manual_seed(prompt_seed(decoding.seed, first + i))
                      for i in range(len(rows))]
        processors.append(SeededSampler(decoding, generators))
    config = tf.GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos_id, pad_token_id=pad_id)
    saved = model.generation_config
    model.generation_config = tf.GenerationConfig()  # a saved generation_config's defaults would fill ours
    try:
        out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                             logits_processor=tf.LogitsProcessorList(processors))
    finally:
        model.generation_config = saved
    results = []
    for new in out[:, ids.shape[1]:].tolist():
        end = new.index(eos_id) if eos_id in new else None
        results.append((new[:end] if end is not None else new, end is not None))
    return results


def _identity(model, tokenizer, prompts_file: Path, decoding: Decoding, max_new_tokens: int,
              batch_size: int) -> dict:
    """What determines the output file's content (its record: distill.lm.generate_file)."""
    return {"model_sha256": teacher_hash(model), "tokenizer_sha256": vocab_digest(tokenizer),
            "prompts_sha256": hashlib.sha256(prompts_file.read_bytes()).hexdigest(),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, **asdict(decoding)}


def encode_prompts(prompts: list[str], tokenizer, max_prompt: int | None) -> tuple[list[list[int]], int]:
    """Each prompt's ids (an empty prompt: [<eos>]), left-truncated to `max_prompt` tokens; and
    how many were truncated."""
    rows, cut = [], 0
    for p in prompts:
        ids = tokenizer.encode(p) if p else [tokenizer.eos_token_id]
        if max_prompt is not None and len(ids) > max_prompt:
            ids, cut = ids[-max_prompt:], cut + 1
        rows.append(ids)
    return rows, cut


def generate(model: str | Path | nn.Module, prompts: str | Path, out: str | Path, *,
             stage: str = "teacher", tokenizer=None, max_new_tokens: int = 128, greedy: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0, seed: int = 0,
             batch_size: int = 16, device: str = "auto", trust: Trust = NO_TRUST,
             quiet: bool = True) -> dict:
    """Write `out`, one {"prompt", "completion"} JSON line per prompt of `prompts` (a .jsonl).

    `model`: a run folder (its `stage`, by default the teacher), a local Hugging Face model
    folder (with its tokenizer, or `tokenizer`: "byte" or a tokenizer folder), or a causal LM
    module (then `tokenizer` is a distill tokenizer or its spec). A stopped call continues when
    called again with the same arguments. Returns {"path", "prompts", "generated" (this call),
    "reused", "truncated", "no_eos" (of this call's), "new_tokens", "note"}.
    """
    decoding = Decoding(greedy, float(temperature), top_k, float(top_p), int(seed))
    decoding.check()
    if max_new_tokens < 1 or batch_size < 1:
        raise DistillError(f"--max-new-tokens and --batch-size must be >= 1 (got {max_new_tokens}, {batch_size}).")
    texts = read_prompts(prompts)
    model, tokenizer = load_model(model, stage, tokenizer, trust)
    limit = positions(model)
    if limit is not None and max_new_tokens >= limit:
        raise DistillError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the "
                           f"model's {limit} positions; give at most {limit - 1}.")
    rows, truncated = encode_prompts(texts, tokenizer, limit - max_new_tokens if limit else None)
    model = model.to(resolve_device(device, "--device")).eval()
    file = GenerateFile(out, _identity(model, tokenizer, Path(prompts), decoding, max_new_tokens, batch_size),
                        texts, batch_size)
    stats = {"path": str(file.out), "prompts": len(texts), "generated": 0,
             "reused": len(texts) if file.done else file.start,
             "truncated": truncated, "no_eos": 0, "new_tokens": 0}
    if not file.done:
        _generate_rows(model, tokenizer, texts, rows, file, decoding, max_new_tokens, stats, quiet)
        file.finish()
    stats["note"] = _note(stats, limit, max_new_tokens)
    return stats


def _generate_rows(model, tokenizer, texts, rows, file: GenerateFile, decoding: Decoding,
                   max_new_tokens: int, stats: dict, quiet: bool) -> None:
    """The batches from file.start on, appended one by one; a Ctrl-C or SIGTERM stops after
    the batch being generated is written (Interrupted)."""
    eos, pad, size = tokenizer.eos_token_id, tokenizer.pad_token_id, file.batch_size
    with stop_handlers(), progress_bar("generate", total=len(rows) - file.start, quiet=quiet) as advance:
        for first in range(file.start, len(rows), size):
            done = complete(model, rows[first:first + size], first, decoding, max_new_tokens, eos, pad)
            file.append([{"prompt": texts[first + i], "completion": tokenizer.decode(new)}
                         for i, (new, _) in enumerate(done)])
            stats["generated"] += len(done)
            stats["no_eos"] += sum(not ended for _, ended in done)
            stats["new_tokens"] += sum(len(new) + ended for new, ended in done)
            advance(len(done))
            if stop_requested() and first + size < len(rows):
                raise Interrupted(checkpointed=True)


def _note(stats: dict, limit: int | None, max_new_tokens: int) -> str:
    parts = []
    if stats["truncated"]:
        parts.append(f"{stats['truncated']} prompts were longer than the {limit - max_new_tokens} "
                     f"tokens the model's {limit} positions leave before {max_new_tokens} new ones: "
                     "the model saw their last tokens (the file keeps them whole)")
    if stats["no_eos"]:
        parts.append(f"{stats['no_eos']} completions stopped at --max-new-tokens {max_new_tokens} "
                     "before <eos> (the student's data adds <eos> after them; raise it to let them end)")
    return "; ".join(parts)
