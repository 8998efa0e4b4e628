"""On-policy batches (Agarwal et al. 2024, GKD): the student writes the continuations it learns on.

Training only on fixed text teaches the student to continue prefixes it would never produce
itself (exposure bias). GKD mixes in batches whose continuations the student samples from the
batch's prompts; the teacher then scores every sampled token and the chosen divergence pulls
the student's distribution there towards the teacher's. A share `fraction` of training steps
is on-policy (GKD's lambda); which ones is a pure hash of (seed, epoch, step), so a resumed run
picks the same steps.

Prompts: for prompt/completion rows, the tokens before the first target; for plain-text rows
(where every token is a target), the first `prompt_tokens` tokens, cut at the end of the
row's first document in a packed row. Sampling is plain
ancestral sampling at `temperature` (no top-k/top-p), from the student in eval mode. The new
rows are the prompt, then the sampled tokens up to and including the first <eos>, right-padded;
only sampled tokens are targets. The next-token CE term is skipped on these batches: its labels
would be the student's own samples.
"""

from __future__ import annotations

import hashlib

import torch

from ..contracts import Batch
from .packing import first_segment


class OnPolicy:
    def __init__(self, fraction: float, temperature: float, max_new_tokens: int,
                 prompt_tokens: int, eos_id: int, pad_id: int, seed: int = 0,
                 max_positions: int | None = None):
        self.fraction, self.temperature = float(fraction), float(temperature)
        # prompts keep their last (max_positions - max_new_tokens) tokens, so prompt + sample
        # never runs past the student's position embeddings
        self.max_prompt = max_positions - max_new_tokens if max_positions else None
        self.max_new_tokens, self.prompt_tokens = int(max_new_tokens), int(prompt_tokens)
        self.eos_id, self.pad_id, self.seed = int(eos_id), int(pad_id), int(seed)

    def chosen(self, epoch: int, step: int) -> bool:
        """Whether step `step` of epoch `epoch` is on-policy: u(seed, epoch, step) < fraction."""
        digest = hashlib.sha256(f"{self.seed}:{epoch}:{step}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction

    def prompts(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each row's prompt: tokens before its first target, or the first `prompt_tokens`
        (at most the last `max_prompt` of them); in a packed row, never past its first
        document (`positions` restart at 0 at the next one)."""
        first = (mask > 0).int().argmax(1).tolist()  # position 0 is never a target
        out = []
        for r, (row, f) in enumerate(zip(ids, first, strict=True)):
            n = f if f > 1 else min(self.prompt_tokens, len(row) - 1)
            if positions is not None:
                n = max(1, min(n, first_segment(positions[r])))
            out.append(row[:n][-self.max_prompt:] if self.max_prompt else row[:n])
        return out

    @torch.no_grad()
    def make_batch(self, student, batch: Batch) -> Batch:
        """An on-policy Batch (no sample index: the rows are in no dataset) of the batch's
        prompts and the student's sampled continuations."""
        ids, mask = batch.inputs, batch.mask
        prompts = self.prompts(ids, mask, batch.positions)
        width = max(len(p) for p in prompts)
        # left-pad for generation: every prompt then ends at the same position
        x = torch.full((len(prompts), width), self.pad_id, dtype=ids.dtype, device=ids.device)
        attention = torch.zeros_like(x)
        for r, p in enumerate(prompts):
            x[r, width - len(p):], attention[r, width - len(p):] = p, 1
        was_training = student.training
        student.eval()
        out = student.generate(
            input_ids=x, attention_mask=attention, do_sample=True, temperature=self.temperature,
            top_k=0, top_p=1.0, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        student.train(was_training)
        return self.rows(prompts, out[:, width:])

    def rows(self, prompts: list[torch.Tensor], sampled: torch.Tensor) -> Batch:
        """Right-padded ids and target mask from prompts and sampled tokens [B, new]."""
        length = max(len(p) for p in prompts) + sampled.shape[1]
        device = sampled.device
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for r, (p, s) in enumerate(zip(prompts, sampled, strict=True)):
            ends = (s == self.eos_id).nonzero()
            s = s[: int(ends[0]) + 1] if len(ends) else s  # keep the first <eos>: it is a target
            ids[r, :len(p)], ids[r, len(p):len(p) + len(s)] = p, s
            mask[r, len(p):len(p) + len(s)] = 1
        return Batch(ids, mask=mask, on_policy=True)
