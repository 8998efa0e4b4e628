"""The transformer terms (TinyBERT, MiniLM): layer maps, construction from a config, and the
checks test_registry.py gives every other loss, here on a tiny BERT pair behind the text
classifier's taps (test_registry.py runs small CNNs, which have no transformer layers)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_registry import _cast  # the same dtype cast of a pair of Outputs

from distill import LOSSES, Distiller
from distill.contracts import Batch, Outputs
from distill.errors import ConfigError
from distill.losses.transformer import MapsLayers, check_layer_map, resolve_layer_map
from distill.terms import build_loss_term, check_loss

TRANSFORMER = [n for n in LOSSES if issubclass(LOSSES[n], MapsLayers)]
TAPS = {"tinybert_hidden": "hidden", "minilm_attention": "attention", "minilm_value": "values"}
# minilm_value's default (heads=None) also hooks the attention maps, for the head count; told
# the count, it hooks the values alone (test_minilm.py checks both)
KWARGS = {"minilm_value": {"heads": 2}}
S_DEPTH, T_DEPTH, HEADS, VOCAB, PAD = 2, 4, 2, 20, 0


def test_the_transformer_terms_are_registered():
    assert TRANSFORMER == ["tinybert_hidden", "tinybert_embedding", "minilm_attention", "minilm_value"]


# ---------------------------------------------------------------- layer maps


@pytest.mark.parametrize("depths, pairs", [
    ((2, 4), ((1, 2), (2, 4))),
    ((3, 6), ((1, 2), (2, 4), (3, 6))),
    ((4, 4), ((1, 1), (2, 2), (3, 3), (4, 4))),
    ((1, 12), ((1, 12),)),
])
def test_uniform_maps_student_layer_m_to_teacher_layer_m_n_over_m(depths, pairs):
    assert resolve_layer_map("uniform", *depths) == pairs


def test_last_and_explicit_maps():
    assert resolve_layer_map("last", 3, 12) == ((3, 12),)
    assert resolve_layer_map(check_layer_map([[1, 3], [2, 4]]), 2, 4) == ((1, 3), (2, 4))


@pytest.mark.parametrize("name", sorted(TAPS))
def test_map_layers_declares_the_tap_paths(name):
    term = LOSSES[name](**KWARGS.get(name, {}))
    assert term.student_layers == () and term.teacher_layers == ()
    tap = TAPS[name]
    term.map_layers(2, 4)
    default_is_last = name.startswith("minilm")
    expected = ((f"{tap}.2",), (f"{tap}.4",)) if default_is_last else ((f"{tap}.1", f"{tap}.2"), (f"{tap}.2", f"{tap}.4"))
    assert (term.student_layers, term.teacher_layers) == expected
    explicit = LOSSES[name](layers=[[1, 2], [1, 4]], **KWARGS.get(name, {}))
    explicit.map_layers(2, 4)
    assert explicit.pairs == ((1, 2), (1, 4))
    assert explicit.student_layers == (f"{tap}.1",)  # hooked once, used twice
    assert explicit.teacher_layers == (f"{tap}.2", f"{tap}.4")
    assert "pairs=[(1, 2), (1, 4)]" in repr(explicit)


def test_uniform_needs_a_teacher_depth_that_the_student_depth_divides():
    with pytest.raises(ValueError, match="multiple of the student's depth") as e:
        resolve_layer_map("uniform", 3, 4)
    assert "student has 3 layers and the teacher 4" in str(e.value)
    assert "layers=[[1, 1], [2, 3], [3, 4]]" in str(e.value)  # a map to copy


def test_explicit_pairs_out_of_range_name_the_depths():
    with pytest.raises(ValueError, match=r"\[\[3, 4\]\] out of range: the student has layers 1..2 and the teacher 1..4"):
        resolve_layer_map(((1, 2), (3, 4)), 2, 4)
    with pytest.raises(ValueError, match="teacher 1..4"):
        resolve_layer_map(((1, 5),), 2, 4)
    with pytest.raises(ValueError, match="depth must be"):
        resolve_layer_map("last", 0, 4)


@pytest.mark.parametrize("bad", ["first", "", [], [[1]], [[1, 2, 3]], [[1, 2.0]], [[True, 1]], 3, [1, 2]])
def test_malformed_maps_are_refused_when_the_term_is_built(bad):
    with pytest.raises(ValueError, match="layers must be 'uniform', 'last' or a non-empty list"):
        check_layer_map(bad)
    for name in TAPS:
        with pytest.raises(ConfigError, match=f"loss.{name}: layers must be"):
            build_loss_term(name, name, {"layers": bad, **KWARGS.get(name, {})})


# ---------------------------------------------------------------- construction, before the map


@pytest.mark.parametrize("name", TRANSFORMER)
def test_default_construction_from_a_config(name):
    term = build_loss_term("h", name, {}, "text_classification")
    assert isinstance(term, LOSSES[name]) and isinstance(term, MapsLayers)
    assert LOSSES[name].cite
    with pytest.raises(ConfigError, match="task: text_classification"):  # classifiers expose no taps
        build_loss_term("h", name, {}, "classification")


def test_a_config_with_transformer_terms_checks():
    check_loss({"ce": {"weight": 1.0}, "h": {"type": "tinybert_hidden", "layers": [[1, 2], [2, 4]]},
                "e": {"type": "tinybert_embedding"}, "at": {"type": "minilm_attention"},
                "vr": {"type": "minilm_value", "heads": 12, "layers": "uniform"}}, "text_classification")
    with pytest.raises(ConfigError, match="heads must be"):
        check_loss({"vr": {"type": "minilm_value", "heads": 0}}, "text_classification")


@pytest.mark.parametrize("name", sorted(TAPS))
def test_forward_and_setup_before_map_layers_are_clear_errors(name):
    term = LOSSES[name](**KWARGS.get(name, {}))
    f = torch.zeros(1, 2, 2)
    with pytest.raises(RuntimeError, match=r"map_layers\(student_depth, teacher_depth\) was not called"):
        term(Outputs(f, {}), Outputs(f, {}), Batch(f))
    with pytest.raises(RuntimeError, match="was not called"):
        term.setup({}, {})


# ---------------------------------------------------------------- on a tiny BERT pair


def tiny_bert(depth: int, hidden: int, heads: int = HEADS):
    pytest.importorskip("transformers")
    from distill.models.hf import from_config
    from distill.text.models import TextClassifier

    # dropout off: the checks compare forward passes (the attention tap also gives the
    # probabilities after attention dropout in train mode, which the KL must not see)
    config = dict(model_type="bert", hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                  intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = from_config("AutoModelForSequenceClassification", config, attn_implementation="eager",
                        vocab_size=VOCAB, num_labels=3, pad_token_id=PAD)
    return TextClassifier(model, PAD)


def make_batch(n: int = 4, length: int = 6, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    ids[0, 4:] = PAD
    ids[2, 2:] = PAD  # right padding of different lengths
    y = torch.randint(0, 3, (n,), generator=g)
    y[::3] = -1
    return Batch(ids, y, torch.arange(n), mask=(ids != PAD).long())


def identity_projection(term) -> None:
    """Where the term has a projection (TinyBERT's W), make it the identity."""
    projector = getattr(term, "projector", None)
    if projector is not None:
        with torch.no_grad():
            projector.weight.copy_(torch.eye(*projector.weight.shape))
            projector.bias.zero_()


def make_distiller(name: str, same: bool = False):
    torch.manual_seed(0)
    student = tiny_bert(S_DEPTH, 8)
    teacher = copy.deepcopy(student) if same else tiny_bert(T_DEPTH, 12)
    term = LOSSES[name]()  # the defaults, as a config without arguments builds it
    term.map_layers(S_DEPTH, S_DEPTH if same else T_DEPTH)
    distiller = Distiller(teacher, student, {name: (term, 1.0)}, ce_weight=0.0)
    distiller.setup(make_batch())
    return distiller, term


@pytest.mark.parametrize("name", TRANSFORMER)
def test_finite_scalar_and_gradients(name):
    distiller, term = make_distiller(name)
    distiller.train()
    value = distiller(make_batch()).terms[name]
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the student"
    for pname, p in term.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert all(p.grad is None for p in distiller.teacher.parameters())


@pytest.mark.parametrize("name", TRANSFORMER)
def test_zero_when_student_equals_teacher(name):
    distiller, term = make_distiller(name, same=True)
    identity_projection(term)
    distiller.eval()
    with torch.no_grad():
        value = distiller(make_batch()).terms[name]
    assert value.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", TRANSFORMER)
def test_repeating_the_batch_keeps_the_value(name):
    b = make_batch()
    twice = Batch(torch.cat([b.inputs, b.inputs]), torch.cat([b.targets, b.targets]),
                  torch.cat([b.index, b.index]), mask=torch.cat([b.mask, b.mask]))
    distiller, _ = make_distiller(name)
    with torch.no_grad():
        once, again = distiller(b).terms[name], distiller(twice).terms[name]
    assert again.item() == pytest.approx(once.item(), rel=1e-5, abs=1e-7)


def fp32_case(name: str):
    batch = make_batch()
    distiller, term = make_distiller(name)
    distiller.eval()
    with torch.no_grad():
        s, t = distiller.part.student_outputs(distiller.student, batch.inputs), distiller.live.outputs(batch.inputs)
    return term, s, t, batch, term(s, t, batch)


@pytest.mark.parametrize("name", TRANSFORMER)
def test_low_precision_inputs_give_an_fp32_value(name):
    term, s, t, batch, ref = fp32_case(name)
    value = term(_cast(s, torch.bfloat16), _cast(t, torch.bfloat16), batch)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(ref.item(), rel=0.05, abs=1e-3)


@pytest.mark.parametrize("name", TRANSFORMER)
def test_autocast_does_not_reach_the_loss(name):
    term, s, t, batch, ref = fp32_case(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(s, t, batch)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


def test_padding_counts_only_through_the_mask():
    distiller, term = make_distiller("tinybert_hidden")
    b = make_batch()
    with torch.no_grad():
        masked = distiller(b).terms["tinybert_hidden"]
        unmasked = distiller(Batch(b.inputs, b.targets, b.index)).terms["tinybert_hidden"]
    assert masked.item() != pytest.approx(unmasked.item())  # without a mask the pad positions count


@pytest.mark.parametrize("names", [("minilm_value",), ("minilm_attention", "minilm_value")])
def test_minilm_value_reads_the_head_count_from_the_attention_maps(names):
    torch.manual_seed(0)
    student, teacher = tiny_bert(S_DEPTH, 8), tiny_bert(T_DEPTH, 12)
    terms = {name: LOSSES[name]() for name in names}
    for term in terms.values():
        term.map_layers(S_DEPTH, T_DEPTH)
    distiller = Distiller(teacher, student, {n: (t, 1.0) for n, t in terms.items()}, ce_weight=0.0)
    assert distiller.part.layers["teacher"].count("attention.4") == len(names)  # hooked once (FeatureCapture)
    distiller.setup(make_batch())
    assert terms["minilm_value"].split == HEADS
    out = distiller(make_batch())
    assert all(torch.isfinite(out.terms[n]) for n in terms)


def test_minilm_attention_refuses_different_head_counts_at_setup():
    torch.manual_seed(0)
    term = LOSSES["minilm_attention"]()
    term.map_layers(S_DEPTH, T_DEPTH)
    distiller = Distiller(tiny_bert(T_DEPTH, 12, heads=4), tiny_bert(S_DEPTH, 8, heads=2), {"at": (term, 1.0)})
    with pytest.raises(ValueError, match="'attention.2' has 2 heads and the teacher's 'attention.4' 4"):
        distiller.setup(make_batch())
