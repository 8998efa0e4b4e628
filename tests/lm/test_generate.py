"""`distill generate` (sequence-level KD data): decoding against hand loops over the model's
logits, seeded sampling, stop and continue, foreign files, and a student trained on the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from distill.cli import main  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.lm import generate  # noqa: E402
from distill.lm.data import build_lm_data  # noqa: E402
from distill.lm.generation import Decoding, SeededSampler, complete, prompt_seed  # noqa: E402
from distill.lm.models import create_lm  # noqa: E402
from distill.lm.tokenizer import ByteTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOK = ByteTokenizer()
PROMPTS = ["def f(x):", "the cat", "", "import os\nimport sys\n", "a", "while True:", "# note"]


def gpt(seed=0, positions=32):
    torch.manual_seed(seed)
    kw = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": positions,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return create_lm("gpt2", kw, TOK.vocab_size, TOK).eval()


def llama(seed=0):
    torch.manual_seed(seed)
    kw = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
          "num_key_value_heads": 1, "max_position_embeddings": 32}
    return create_lm("llama", kw, TOK.vocab_size, TOK).eval()


def prompts_file(tmp_path, prompts=PROMPTS) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": "ignored"}) + "\n" for p in prompts))
    return path


@torch.no_grad()
def argmax_loop(model, ids, steps, eos):
    """Greedy decoding by hand: the full forward each step, argmax of the last logits."""
    ids, new = list(ids), []
    for _ in range(steps):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if token == eos:
            break
        ids.append(token)
        new.append(token)
    return new


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("make", [gpt, llama])
def test_greedy_is_the_argmax_loop_in_left_padded_batches(make):
    model = make()
    rows = [TOK.encode(p) or [TOK.eos_token_id] for p in PROMPTS]
    got = complete(model, rows, 0, Decoding(greedy=True), 10, TOK.eos_token_id, TOK.pad_token_id)
    for row, (new, ended) in zip(rows, got, strict=True):
        assert new == argmax_loop(model, row, 10, TOK.eos_token_id)
        assert ended == (len(new) < 10)


def test_greedy_stops_at_the_first_eos():
    """With a token the greedy path reaches made <eos>, the completion ends just before it."""
    model, row = gpt(), TOK.encode("the cat")
    free = argmax_loop(model, row, 12, eos=-1)
    stop = next(i for i in range(2, 12) if free[i] not in free[:i])
    got = complete(model, [row], 0, Decoding(greedy=True), 12, free[stop], TOK.pad_token_id)
    assert got == [(free[:stop], True)]


def test_sampler_filters_top_k_and_top_p_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    keep = lambda d: torch.isfinite(SeededSampler(d, []).filtered(scores))[0].tolist()  # noqa: E731
    assert keep(Decoding(top_k=2)) == [True, False, True, False, False]
    p = scores.softmax(-1)[0]  # 0.636, 0.086, 0.234, 0.032, 0.012
    assert p[0] < 0.8 < p[0] + p[2]
    assert keep(Decoding(top_p=0.8)) == [True, False, True, False, False]
    assert keep(Decoding(top_p=0.5)) == [True, False, False, False, False]
    got = SeededSampler(Decoding(temperature=2.0), []).filtered(scores)
    assert torch.equal(got, scores / 2)


def test_sampling_is_seeded_per_prompt():
    model = gpt()
    rows = [TOK.encode(p) or [TOK.eos_token_id] for p in PROMPTS]
    run = lambda seed, first=0, r=rows: complete(model, r, first, Decoding(seed=seed), 8, TOK.eos_token_id,  # noqa: E731
                                                 TOK.pad_token_id)
    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0)[:1] != run(0, first=5)[:1]  # prompt numbers seed the draws, not batch slots
    # a prompt's draws are its own generator's: by hand, one step of ancestral sampling
    with torch.no_grad():
        logits = model(torch.tensor([rows[1]])).logits[0, -1]
    g = torch.Generator().manual_seed(prompt_seed(0, 1))
    first_token = int(torch.multinomial(logits.softmax(-1), 1, generator=g))
    assert run(0)[1][0][0] == first_token
    top1 = complete(model, rows, 0, Decoding(top_k=1, seed=3), 8, TOK.eos_token_id, TOK.pad_token_id)
    greedy = complete(model, rows, 0, Decoding(greedy=True), 8, TOK.eos_token_id, TOK.pad_token_id)
    assert top1 == greedy


def test_long_prompts_are_left_truncated(tmp_path):
    model = gpt(positions=16)
    long = "x = 1\n" * 10  # 60 bytes: only the last 16 - 4 fit before 4 new tokens
    result = generate(model, prompts_file(tmp_path, [long, "ok"]), tmp_path / "g.jsonl", tokenizer=TOK,
                      max_new_tokens=4, greedy=True)
    assert result["truncated"] == 1 and "saw their last tokens" in result["note"]
    first = lines(tmp_path / "g.jsonl")[0]
    assert first["prompt"] == long  # the file keeps the whole prompt
    assert first["completion"] == TOK.decode(argmax_loop(model, TOK.encode(long)[-12:], 4, TOK.eos_token_id))
    with pytest.raises(DistillError, match="no room for a prompt"):
        generate(model, prompts_file(tmp_path), tmp_path / "h.jsonl", tokenizer=TOK, max_new_tokens=16)


# ---------------------------------------------------------------- the file: same seed, stop, resume, foreign files


def test_same_seed_same_file_and_other_seeds_differ(tmp_path):
    model, prompts = gpt(), prompts_file(tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate(model, prompts, tmp_path / f"{name}.jsonl", tokenizer=TOK, max_new_tokens=8, seed=seed,
                 batch_size=3, top_p=0.95)
    a, b, c = (Path(tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a == b and a != c
    rows = lines(tmp_path / "a.jsonl")
    assert [r["prompt"] for r in rows] == PROMPTS and all(set(r) == {"prompt", "completion"} for r in rows)


def test_a_stopped_run_continues_to_the_same_file(tmp_path, teacher_run, monkeypatch, capsys):
    """Ctrl-C after the second batch (plus a torn line, as a kill mid-write leaves): the same
    command continues from the kept batches and writes what an uninterrupted run writes."""
    import distill.lm.generation as generation

    run_dir = teacher_run
    prompts = prompts_file(tmp_path)
    args = ["generate", str(run_dir), "--prompts", str(prompts), "--max-new-tokens", "6", "--batch-size", "2",
            "--seed", "7", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole.jsonl")]) == 0
    calls = iter(range(100))
    monkeypatch.setattr(generation, "stop_requested", lambda: next(calls) >= 1)
    out = tmp_path / "g.jsonl"
    assert main([*args, "--out", str(out)]) == 130
    assert "rerun the same command" in capsys.readouterr().err
    partial = Path(f"{out}.partial")
    assert not out.exists() and len(lines(partial)) == 4
    with open(partial, "a") as f:
        f.write('{"prompt": "the cat", "compl')  # torn
    monkeypatch.setattr(generation, "stop_requested", lambda: False)
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes() and not partial.exists()
    before = out.stat().st_mtime_ns
    assert main([*args, "--out", str(out)]) == 0  # complete: nothing to do, nothing rewritten
    assert out.stat().st_mtime_ns == before


KILL_MID_WRITE = """
import os, signal, sys
import distill.lm.generate_file as generate_file
from distill.cli import main

written = []
def append(self, rows):  # the third batch: its first line and a bit reach the file, then SIGKILL
    if len(written) == 2:
        text = "\\n".join(generate_file.json.dumps(r) for r in rows) + "\\n"
        with open(self.partial, "a") as f:
            f.write(text[: text.index("\\n") + 6])
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(rows)
    original(self, rows)
original, generate_file.GenerateFile.append = generate_file.GenerateFile.append, append
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_process_continues_to_the_same_file(tmp_path, teacher_run):
    """A real SIGKILL in the middle of a batch's write; the rerun (a fresh process, as a user
    would start it) keeps the two whole batches and writes the uninterrupted file's bytes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["generate", str(teacher_run), "--prompts", str(prompts_file(tmp_path)), "--max-new-tokens", "6",
            "--batch-size", "2", "--top-k", "20", "--quiet"]

    def distill(*extra, script=None):
        code = ["-c", script, *args] if script else ["-m", "distill", *args]
        return subprocess.run([sys.executable, *code, *extra], env=env, capture_output=True, text=True,
                              timeout=300)

    assert distill("--out", str(tmp_path / "whole.jsonl")).returncode == 0
    out = tmp_path / "g.jsonl"
    killed = distill("--out", str(out), script=KILL_MID_WRITE)
    assert killed.returncode == -9, killed.stderr[-2000:]
    torn = Path(f"{out}.partial").read_text()
    # two whole batches, then one whole line and a torn one of the third: the batch is redone
    assert torn.count("\n") == 5 and not torn.endswith("\n")
    rerun = distill("--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_foreign_and_other_settings_files_are_refused(tmp_path, capsys):
    model, prompts = gpt(), prompts_file(tmp_path)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own notes\n")
    with pytest.raises(DistillError, match="did not write it; choose another --out"):
        generate(model, prompts, mine, tokenizer=TOK, max_new_tokens=4)
    assert mine.read_text() == "my own notes\n"
    Path(f"{tmp_path / 'p.jsonl'}.partial").write_text("x\n")
    with pytest.raises(DistillError, match="did not write it"):
        generate(model, prompts, tmp_path / "p.jsonl", tokenizer=TOK, max_new_tokens=4)
    out = tmp_path / "g.jsonl"
    generate(model, prompts, out, tokenizer=TOK, max_new_tokens=4, seed=0)
    before = out.read_bytes()
    with pytest.raises(DistillError, match=r"other settings \(seed 0 -> 1\)"):
        generate(model, prompts, out, tokenizer=TOK, max_new_tokens=4, seed=1)
    with pytest.raises(DistillError, match="other settings.*model_sha256"):
        generate(gpt(seed=5), prompts, out, tokenizer=TOK, max_new_tokens=4, seed=0)
    assert out.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--greedy", "--temperature", "0.7"], "drop --temperature"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--top-p", "1.5"], "--top-p must be in"),
    (["--stage", "nope"], "no stage of the run"),
    (["--stage", "distill"], "no finished 'distill' stage"),
    (["--tokenizer", "byte"], "drop --tokenizer"),
])
def test_bad_generate_arguments_exit_2(tmp_path, capsys, teacher_run, argv, message):
    run_dir = teacher_run
    out = tmp_path / "g.jsonl"
    assert main(["generate", str(run_dir), "--prompts", str(prompts_file(tmp_path)), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_bad_prompt_files_and_model_folders(tmp_path):
    model = gpt()
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DistillError, match="line 1.*'prompt'.*messages"):
        generate(model, path, tmp_path / "g.jsonl", tokenizer=TOK)
    with pytest.raises(DistillError, match="is not a file"):
        generate(model, tmp_path / "none.jsonl", tmp_path / "g.jsonl", tokenizer=TOK)
    folder = tmp_path / "hf"
    model.save_pretrained(str(folder))
    with pytest.raises(DistillError, match="no tokenizer files; give --tokenizer"):
        generate(str(folder), prompts_file(tmp_path), tmp_path / "g.jsonl")
    result = generate(str(folder), prompts_file(tmp_path), tmp_path / "g.jsonl", tokenizer="byte",
                      greedy=True, max_new_tokens=5)
    first = lines(result["path"])[0]
    assert first["completion"] == TOK.decode(argmax_loop(model, TOK.encode(PROMPTS[0]), 5, TOK.eos_token_id))
    with pytest.raises(DistillError, match="neither a run folder"):
        generate(str(tmp_path), prompts_file(tmp_path), tmp_path / "h.jsonl")


# ---------------------------------------------------------------- end to end


TINY = ["task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
        "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
        "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
        "train.epochs=1", "train.lr=0.01", "teacher.train.epochs=1"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A tiny language-model run with a trained teacher stage (read only by the tests)."""
    folder = tmp_path_factory.mktemp("teacher")
    text = folder / "t.txt"
    text.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(30)))
    assert main(["run", *TINY, f"data.path={text}", "stages=[teacher]", "--out", str(folder / "run"),
                 "--quiet", "--no-report"]) == 0
    return folder / "run"


def test_teacher_generates_then_a_student_trains_on_the_file(tmp_path, teacher_run, capsys):
    """A tiny run's teacher writes completions (CLI); configs/lm/seqkd.yaml trains the student on
    them with CE (scratch: Seq-KD) and CE + word-level KD (distill), from the CLI."""
    run_dir = teacher_run
    prompts = prompts_file(tmp_path, [f"def g{i}(y):" for i in range(24)])
    data = tmp_path / "seqkd.jsonl"
    assert main(["generate", str(run_dir), "--prompts", str(prompts), "--out", str(data), "--greedy",
                 "--max-new-tokens", "12"]) == 0
    assert "Wrote" in capsys.readouterr().out
    rows = lines(data)
    assert len(rows) == 24 and rows[0]["prompt"] == "def g0(y):"
    out = tmp_path / "student"
    assert main(["run", str(REPO / "configs" / "lm" / "seqkd.yaml"), *TINY[2:], f"data.path={data}",
                 f"teacher.checkpoint={run_dir}/teacher.safetensors", "data.max_length=24",
                 "--out", str(out), "--quiet", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) >= {"scratch", "distill"}
    assert 1 < summary["stages"]["distill"]["val_ppl"] < 258
    # what the student trains on is the teacher's completions, prompt tokens masked
    cfg = load_config(REPO / "configs" / "lm" / "seqkd.yaml", [f"data.path={data}", "data.max_length=24"])
    loaded = build_lm_data(cfg.data)
    assert loaded.counts["train"] + loaded.counts["val"] + loaded.counts["test"] == 24


def test_files_that_are_not_utf8_name_their_line(tmp_path, capsys):
    from distill.lm.generation import read_prompts

    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(b'{"prompt": "ok"}\n\xff\xfe{"prompt": "x"}\n')
    with pytest.raises(DistillError, match=r"line 2: not UTF-8 text \(byte 0xff\)"):
        read_prompts(bad)
    assert main(["run", "--quiet", "--no-report", "task=language_model", "data.name=jsonl",
                 f"data.path={bad}", "--out", str(tmp_path / "run")]) == 2
    assert "line 2: not UTF-8 text" in capsys.readouterr().err
