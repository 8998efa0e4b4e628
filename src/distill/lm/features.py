"""Hidden-state terms (`lm_hidden`, distill.losses.lm.hidden) in the LM part: their layer maps
resolved against the two models, forward hooks on the mapped modules (distill.hooks), the
projectors sized from one probed batch, and their values added to the token loss.

- Layer maps. Numbered maps ("uniform", "last", [[m, n], ...]) count the decoder blocks: the
  nn.ModuleList of `config.num_hidden_layers` blocks (GPT-2's transformer.h, Llama's
  model.layers), layer m being block m - 1's output. A {student path: teacher path} mapping names
  modules directly. Unknown paths are refused with the hooks' nearest-name hints, before any
  stage trains (the task's preflight resolves the maps too).
- Rows. Both models' hooked states are cut to the counted rows, [:, :-1][target] as for the
  token terms (position t's state predicts target t + 1), so padding and masked prompt tokens
  neither add to the value nor get a gradient.
- Normalisation. Each hidden term adds weight * (sum over the rows) / N, N the batch's counted
  tokens, the token loss's own normalisation: a micro-batch's loss is a mean over its counted
  tokens and the engine re-weights it by its share, so accumulation and torchrun stay exact.
- Teacher. Only the live teacher has hidden states: the online teacher source is wrapped so
  that its one forward also fills the hooked layers. An offline top-k teacher (cache.topk)
  stores none and is refused; on-policy batches (GKD) are scored live, and the hidden terms
  train on them too, like the token terms: the student's own samples are where matching the
  teacher's representations matters most.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..contracts import Batch
from ..errors import DistillError
from ..hooks import FeatureCapture, resolve_module
from ..losses.lm.hidden import LMHidden
from ..losses.transformer import resolve_layer_map
from .chunked import TeacherRows
from .models import hidden_states

NO_OFFLINE = ("reads the teacher's hidden states, which an offline top-k teacher (cache.topk) does "
              "not store: use the online teacher (cache.topk=null), or remove the term")


def hidden_terms(terms: dict) -> dict[str, LMHidden]:
    """The hidden-state terms of {name: term} or {name: (term, weight)}."""
    return {n: t for n, t in ((n, v[0] if isinstance(v, tuple) else v) for n, v in terms.items())
            if isinstance(t, LMHidden)}


def token_terms(terms: dict) -> dict:
    """The entries of `terms` that are not hidden-state terms (the chunked loss's)."""
    hidden = hidden_terms(terms)
    return {n: v for n, v in terms.items() if n not in hidden}


def decoder_layers(model: nn.Module, role: str, name: str) -> tuple[str, int]:
    """(path of the decoder blocks' nn.ModuleList, their number) of a Hugging Face causal LM."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return path, depth
    raise DistillError(f"loss.{name}: cannot find the {role}'s {depth} decoder layers (an nn.ModuleList "
                       f"of config.num_hidden_layers blocks). Name the modules instead: "
                       f"loss.{name}.layers={{<student path>: <teacher path>}}.")


def map_layers(name: str, term: LMHidden, student: nn.Module, teacher: nn.Module) -> None:
    """Resolve a term's layer map for these models and check every path exists."""
    if isinstance(term.layers, str) or isinstance(term.layers[0][0], int):
        (s_list, m), (t_list, n) = decoder_layers(student, "student", name), decoder_layers(teacher, "teacher", name)
        try:
            numbered = resolve_layer_map(term.layers, m, n)
        except ValueError as e:
            raise DistillError(f"loss.{name}: {e} (layer m is the m-th decoder block's output).") from None
        pairs = tuple((f"{s_list}.{s - 1}", f"{t_list}.{t - 1}") for s, t in numbered)
    else:
        pairs = term.layers
    for role, model, paths in (("student", student, [s for s, _ in pairs]), ("teacher", teacher, [t for _, t in pairs])):
        for path in paths:  # a typo gets the nearest names now, before any stage trains
            resolve_module(model, path.partition(":")[0], role)  # "<path>:input": the module's input
    term.map_paths(pairs)


def check_hidden_terms(terms: dict, student: nn.Module, teacher: nn.Module | None, topk) -> None:
    """The task's preflight: refuse hidden terms with an offline teacher, resolve their maps."""
    for name, term in hidden_terms(terms).items():
        if topk:
            raise DistillError(f"loss.{name} ({type(term).__name__}) {NO_OFFLINE}.")
        if teacher is not None:
            map_layers(name, term, student, teacher)


def layer_paths(terms: dict[str, LMHidden], role: str) -> list[str]:
    """The mapped paths of the `role` ("student" / "teacher") model, each once, in order."""
    return list(dict.fromkeys(p for t in terms.values() for p in (t.student_layers if role == "student"
                                                                   else t.teacher_layers)))


def counted(features: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each [B, L, d] feature at the counted rows: [M, d]."""
    return {path: f[:, :-1][target] for path, f in features.items()}


class LiveHiddenTeacher:
    """The live teacher's rows (`rows`, a LiveTokenTeacher) with its hooked layers' states at the
    same rows, from the same forward pass (a `contracts.TeacherSource`)."""

    def __init__(self, rows, teacher: nn.Module, capture: FeatureCapture):
        self.rows, self.teacher, self.capture = rows, teacher, capture

    @torch.no_grad()
    def targets(self, batch: Batch) -> TeacherRows:
        with self.capture.capturing(self.teacher) as features:
            rows = self.rows.targets(batch)
        rows.features = counted(features, batch.mask[:, 1:].bool())
        return rows

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def reference(self) -> dict | None:
        return self.rows.reference()


class HiddenTerms:
    """The hidden-state terms of one LM Distiller: maps, hooks, setup, their part of the loss."""

    def __init__(self, distiller):
        self.terms = hidden_terms(dict(distiller.terms))
        self.captures: dict[str, FeatureCapture] = {}
        if not self.terms:
            return
        for name, term in self.terms.items():
            map_layers(name, term, distiller.student, distiller.teacher)
        for role, model in (("student", distiller.student), ("teacher", distiller.teacher)):
            self.captures[role] = FeatureCapture(model, layer_paths(self.terms, role), role)

    def source(self, live, teacher: nn.Module):
        """The live teacher source, filling the hooked layers too when there are hidden terms."""
        return LiveHiddenTeacher(live, teacher, self.captures["teacher"]) if self.terms else live

    def student(self, model: nn.Module):
        """A block during which the student's hooked layers are recorded (yields their dict)."""
        if not self.terms:
            return contextlib.nullcontext({})
        return self.captures["student"].capturing(model)

    def add(self, distiller, loss, sums: dict, features: dict, teacher: TeacherRows | None,
            target: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """`loss` plus weight * sum / n of each hidden term over the counted rows; the sums join
        `sums` (the part divides them by n for logging, like the token terms')."""
        if not self.terms:
            return loss
        if teacher is None or teacher.features is None:
            name = next(iter(self.terms))
            raise DistillError(f"loss.{name} ({type(self.terms[name]).__name__}) {NO_OFFLINE}.")
        student = counted(features, target)
        for name, term in self.terms.items():
            total = term.per_token(student, teacher.features).sum()
            sums[name] = total.detach()
            loss = loss + distiller.weights[name] * total / n.clamp(min=1)
        return loss

    @torch.no_grad()
    def setup(self, distiller, batch: Batch) -> None:
        """Probe the hooked layers' shapes (both models in eval mode) and size the projectors."""
        if not self.terms:
            return
        if distiller.teacher is None:
            name = next(iter(self.terms))
            raise DistillError(f"loss.{name} ({type(self.terms[name]).__name__}) {NO_OFFLINE}.")
        # a process's empty share of the first batch (fewer rows than processes) cannot run:
        # probe on one row of token 0, only the shapes are read
        ids = batch.inputs if len(batch) else batch.inputs.new_zeros((1, batch.inputs.shape[1]))
        positions = batch.positions if len(batch) else None
        shapes = {}
        for role, model in (("student", distiller.student), ("teacher", distiller.teacher)):
            was_training = model.training
            model.eval()
            with self.captures[role].capturing(model) as got:
                hidden_states(model, ids, positions)
            model.train(was_training)
            shapes[role] = {p: tuple(f.shape) for p, f in got.items()}
            for path in layer_paths(self.terms, role):
                if len(shapes[role].get(path, ())) != 3:
                    raise DistillError(
                        f"The {role}'s module '{path}' gave {shapes[role].get(path, 'nothing')} in its "
                        f"forward pass, not a (batch, sequence, width) hidden state. Map modules that "
                        f"run once per forward and return one, e.g. a decoder block.")
        for term in self.terms.values():
            term.setup(shapes["student"], shapes["teacher"])
        self._learn_training_mode(distiller.student, ids, positions)

    def _learn_training_mode(self, student: nn.Module, ids: torch.Tensor, positions) -> None:
        """One training-mode forward (with autograd, as in a step), so that the hooks learn
        here whether a later op changes a hooked state in place (distill.hooks), not on the
        first training step. Otherwise that step, and only it, would use a clone, and a process
        resumed mid-stage would clone on another step than the uninterrupted run: the clone
        adds an autograd node, which can change the order in which a state's gradients from
        three or more consumers are summed (a Llama RMSNorm reads its input twice), and so the
        last bits of the update. Its dropout draws are made in both runs before training
        starts (a resume restores the generator afterwards)."""
        was_training = student.training
        student.train()
        with torch.enable_grad(), self.captures["student"].capturing(student):
            hidden_states(student, ids, positions)
        student.train(was_training)
