"""Chat data (distill.lm.chat) and local HF datasets for LMs (data.name: hf, distill.lm.sources):
assistant-only targets checked token by token against a hand-written expectation, clear errors
for tokenizers that cannot render chats and for templates that are not prefix-stable. The
tokenizers are word-level ones built here with a ChatML-style template (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm.chat import encode_chat  # noqa: E402
from distill.lm.data import build_lm_data  # noqa: E402
from distill.lm.tokenizer import ByteTokenizer, load_tokenizer  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# renders the number of messages first: earlier turns' tokens change as the chat grows
UNSTABLE = "{{ messages|length }}" + CHATML
WORDS = ["system", "user", "assistant", "be", "brief", "the", "cat", "sat", "on", "mat", ".",
         "hello", "hi", "1", "2", "3", "4", "5"]


def tokenizer_folder(folder: Path, template: str | None = CHATML) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    if template is not None:
        fast.chat_template = template
    fast.save_pretrained(str(folder))
    return folder


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "sat on"}, {"role": "user", "content": "the mat"},
        {"role": "assistant", "content": "on the mat ."}]
# the rendered chat as tokens, each with whether it is a target (assistant content + <|im_end|>)
EXPECTED = [("<|im_start|>", 0), ("system", 0), ("be", 0), ("brief", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("user", 0), ("the", 0), ("cat", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("assistant", 0), ("sat", 1), ("on", 1), ("<|im_end|>", 1),
            ("<|im_start|>", 0), ("user", 0), ("the", 0), ("mat", 0), ("<|im_end|>", 0),
            ("<|im_start|>", 0), ("assistant", 0), ("on", 1), ("the", 1), ("mat", 1), (".", 1), ("<|im_end|>", 1)]


@pytest.fixture
def tok(tmp_path):
    return load_tokenizer(str(tokenizer_folder(tmp_path / "tok")))


def test_targets_are_the_assistant_turns_token_by_token(tok):
    vocab = tok.get_vocab()
    ids, mask = encode_chat(CHAT, tok)
    assert ids == [vocab[w] for w, _ in EXPECTED]
    assert mask == [t for _, t in EXPECTED]
    assert encode_chat(CHAT, tok, mask_prompt=False)[1] == [1] * len(EXPECTED)


def test_tokenizers_that_cannot_render_chats_are_refused(tmp_path, tok):
    with pytest.raises(DistillError, match="byte tokenizer has none.*data.tokenizer"):
        encode_chat(CHAT, ByteTokenizer())
    bare = load_tokenizer(str(tokenizer_folder(tmp_path / "bare", template=None)))
    with pytest.raises(DistillError, match="has no chat template.*chat_template"):
        encode_chat(CHAT, bare)
    unstable = load_tokenizer(str(tokenizer_folder(tmp_path / "unstable", template=UNSTABLE)))
    with pytest.raises(DistillError, match="not prefix-stable.*first 1 message.*differ at token 0"):
        encode_chat(CHAT, unstable)


def _chats(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": "hello " + str(1 + i % 5)},
                          {"role": "assistant", "content": "the cat sat on the mat " + str(1 + i % 5)}]}
            for i in range(n)]


def test_jsonl_chats_build_padded_rows_with_assistant_targets(tmp_path, tok):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _chats(20)))
    cfg = load_config(None, ["task=language_model", "data.name=jsonl", f"data.path={path}",
                             f"data.tokenizer={tmp_path / 'tok'}", "data.max_length=24"]).data
    data = build_lm_data(cfg)
    assert data.counts["packing"] == 0  # chats are padded rows by default, like prompt/completion
    b = next(iter(data.val))
    for row, m in zip(b.inputs, b.mask, strict=True):
        words = tok.decode(row[m.bool()]).split()
        assert words[:6] == ["the", "cat", "sat", "on", "the", "mat"] and words[-1] == "<|im_end|>"
    assert data.counts["train_tokens"] == 8 * data.counts["train"]  # 7 words + <|im_end|> per chat
    path.write_text(json.dumps({"messages": [{"role": "user"}]}))
    with pytest.raises(DistillError, match="line 1: 'messages' must be .*'role' and 'content'"):
        build_lm_data(cfg)
    path.write_text("\n".join(json.dumps(r) for r in _chats(20)))
    with pytest.raises(DistillError, match="byte tokenizer has none"):
        build_lm_data(cfg.model_copy(update={"tokenizer": "byte"}))


def test_local_hf_datasets_of_chats_prompts_and_text(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    chats = tmp_path / "chats.parquet"
    datasets.Dataset.from_list(_chats(20)).to_parquet(str(chats))
    base = ["task=language_model", "data.name=hf", f"data.tokenizer={tmp_path / 'tok'}", "data.max_length=24"]
    from_hf = build_lm_data(load_config(None, [*base, f"data.path={chats}"]).data)
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in _chats(20)))
    from_jsonl = build_lm_data(load_config(None, [*base, "data.name=jsonl", f"data.path={jsonl}"]).data)
    for split in ("train", "val", "test"):  # the same chats, split the same way
        assert getattr(from_hf, split).x.tolist() == getattr(from_jsonl, split).x.tolist()
        assert getattr(from_hf, split).y.tolist() == getattr(from_jsonl, split).y.tolist()

    # a save_to_disk folder with its own test split: used as it is, validation carved from train
    rows = [{"prompt": "hello", "completion": " the cat " + str(1 + i % 5)} for i in range(12)]
    test = [{"prompt": "hi", "completion": " the mat ."}] * 3
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(folder))
    data = build_lm_data(load_config(None, [*base, f"data.path={folder}"]).data)
    assert data.counts["test"] == 3 and data.counts["train"] + data.counts["val"] == 12
    assert all(tok.decode(r[m.bool()]).split() == ["the", "mat", ".", "<eos>"]
               for r, m in zip(data.test.x, data.test.y, strict=True))

    datasets.Dataset.from_list([{"text": "the cat sat", "n": i} for i in range(10)]).save_to_disk(str(tmp_path / "t"))
    data = build_lm_data(load_config(None, [*base, f"data.path={tmp_path / 't'}"]).data)
    assert data.counts["packing"] == 1 and data.train.positions is not None  # plain text packs
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([{"question": "x"}] * 4).to_parquet(str(bad))
    with pytest.raises(DistillError, match=r"has the columns \['question'\].*'messages'"):
        build_lm_data(load_config(None, [*base, f"data.path={bad}"]).data)
    with pytest.raises(DistillError, match="data.name=hf reads data.path, which 'nowhere' does not exist"):
        build_lm_data(load_config(None, [*base, "data.path=nowhere"]).data)


def test_chat_run_from_the_cli(tmp_path, tok):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _chats(30)))
    out = tmp_path / "run"
    args = ["run", "task=language_model", "data.name=jsonl", f"data.path={path}",
            f"data.tokenizer={tmp_path / 'tok'}", "data.max_length=24", "data.batch_size=8",
            "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
            "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
            "train.epochs=2", "train.lr=0.01", "teacher.train.epochs=2", "stages=[teacher,distill]",
            "--out", str(out), "--quiet", "--no-report"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    n = summary["data"]["vocab_size"]
    assert summary["data"]["packing"] == 0 and summary["stages"]["distill"]["val_ppl"] < n


def test_byte_level_bpe_chat_targets_are_the_assistant_text(tmp_path):
    """With a byte-level BPE (whitespace and newlines are tokens, merges span them) the spans
    still come out whole: each assistant content, its <|im_end|> and the template's newline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the cat sat on the mat.\nuser\nassistant\nbe brief"] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(tmp_path / "bpe"))
    tok = load_tokenizer(str(tmp_path / "bpe"))
    ids, mask = encode_chat(CHAT, tok)
    assert ids == tok.encode(tok.tok.apply_chat_template(CHAT, tokenize=False))  # the whole chat
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "sat on<|im_end|>\non the mat .<|im_end|>\n"
    first = mask.index(1)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")  # the header is no target
