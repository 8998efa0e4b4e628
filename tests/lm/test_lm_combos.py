"""Issue 19's pieces together: a LoRA student with a hidden-state term on packed rows, written
out by `distill generate` from its distill stage; a teacher with its own tokenizer evaluated,
and generating, in its own tokens; a hidden-state term refused across tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from distill.cli import main  # noqa: E402
from distill.lm import generate  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.lm.tools import load_run  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
GPT = "{n_layer: 1, n_embd: 16, n_head: 2, n_positions: 48}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("combos")
    g = torch.Generator().manual_seed(0)
    paragraphs = [" ".join(WORDS[i] for i in torch.randint(0, 10, (int(n),), generator=g))
                  for n in torch.randint(4, 20, (60,), generator=g)]
    (root / "corpus.txt").write_text("\n\n".join(paragraphs))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p[:12]}) + "\n" for p in paragraphs[:6]))
    return root


def test_lora_student_with_hidden_term_on_packed_rows_then_generate(corpus):
    out = corpus / "lora-run"
    args = ["task=language_model", "data.name=text", f"data.path={corpus / 'corpus.txt'}",
            "data.max_length=40", "data.batch_size=8", "train.epochs=2", "teacher.train.epochs=1",
            "teacher.kwargs={n_layer: 2, n_embd: 16, n_head: 2, n_positions: 48}", f"student.kwargs={GPT}",
            "student.lora={r: 2, alpha: 4, target_modules: all-linear}",
            "loss.hid={type: lm_hidden, weight: 1.0, layers: [[1, 2]]}"]
    assert main(["run", *args, "--out", str(out), "--quiet", "--no-report"]) == 0
    model, data = load_run(out, "distill")
    assert data.train.positions is not None  # packed rows, document-aware
    assert sum(p.requires_grad for p in model.parameters()) > 0  # the adapters are there
    got = corpus / "from-run.jsonl"
    assert main(["generate", str(out), "--stage", "distill", "--prompts", str(corpus / "prompts.jsonl"),
                 "--out", str(got), "--max-new-tokens", "6", "--greedy"]) == 0
    # the same as generating from the loaded LoRA student itself
    want = corpus / "from-module.jsonl"
    generate(model, corpus / "prompts.jsonl", want, tokenizer=data.tokenizer, max_new_tokens=6, greedy=True)
    assert got.read_text() == want.read_text()


def _word_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return len(vocab)


def test_teacher_with_its_own_tokenizer_evaluates_and_generates_in_its_tokens(corpus):
    folder = corpus / "teacher"
    n = _word_tokenizer(folder)
    torch.manual_seed(0)
    create_lm("gpt2", {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 48}, n).save_pretrained(str(folder))
    out = corpus / "uld-run"
    args = ["task=language_model", "data.name=text", f"data.path={corpus / 'corpus.txt'}",
            "data.max_length=40", "data.batch_size=8", "train.epochs=1", f"student.kwargs={GPT}",
            f"teacher.model={folder}", f"data.teacher_tokenizer={folder}", "stages=[scratch, distill]",
            "loss.forward_kl.weight=0", "loss.uld.weight=0.5"]
    assert main(["run", *args, "--out", str(out), "--quiet", "--no-report"]) == 0
    assert main(["eval", str(out)]) == 0
    got = corpus / "teacher.jsonl"
    assert main(["generate", str(out), "--prompts", str(corpus / "prompts.jsonl"), "--out", str(got),
                 "--max-new-tokens", "4", "--greedy"]) == 0
    words = {w for line in got.read_text().splitlines() for w in json.loads(line)["completion"].split()}
    assert words and words <= set(WORDS) | {"<unk>", "<pad>"}  # whole words: the teacher's own tokens
    # a hidden-state term has no aligned rows across tokenizers: refused before anything trains
    refused = corpus / "uld-hid"
    assert main(["run", *args, "loss.hid={type: lm_hidden, weight: 1.0, layers: [[1, 1]]}",
                 "--out", str(refused), "--quiet", "--no-report"]) == 2
    assert not (refused / "scratch.safetensors").exists()
