"""Run folders written before the per-task schema (commit bbe454d) stay readable: their saved
config.yaml (the flat schema: both tasks' keys, `cache: <mode>` and top-level cache_*) is read
through distill.saved_config.migrate, and only there. The same YAML as a user's config keeps
the errors that name the new keys.

The fixtures are what bbe454d wrote, copied verbatim (its `to_yaml` of the config and its
`.distill.json` marker); EPOCHS and CORPUS are filled in per test."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.cli import main
from distill.config import load_config
from distill.errors import ConfigError
from distill.saved_config import migrate
from distill.seeds import read_record
from full_disk import RESUME, TINY, interrupted

# The sections bbe454d wrote the same way for both tasks (every key of both, at its defaults).
OLD_SECTIONS = """\
stages:
- teacher
- scratch
- distill
log:
  tensorboard: false
cache: auto
cache_dtype: fp32
cache_topk: null
cache_dir: null
lm:
  shared_vocab: null
  chunk: null
  on_policy:
    fraction: 0.0
    temperature: 1.0
    max_new_tokens: 32
    prompt_tokens: 16
"""

# bbe454d: `distill run train.epochs=EPOCHS teacher.model=mlp teacher.kwargs.hidden=[16] data.batch_size=256`
OLD_CLASSIFIER = """\
name: digits-transfer
seed: 0
task: classification
data:
  name: digits
  path: null
  augment: none
  size: null
  crop: null
  label_column: label
  label_fraction: 0.1
  val_fraction: 0.15
  test_fraction: 0.2
  batch_size: 256
  split_seed: 0
  unlabelled_path: null
  tokenizer: byte
  max_length: 128
  packing: null
  mask_prompt: true
teacher:
  model: mlp
  kwargs:
    hidden:
    - 16
  checkpoint: null
  train: {}
student:
  model: mlp
  kwargs:
    hidden:
    - 64
  checkpoint: null
  train: {}
loss:
  ce:
    weight: 0.1
  kd:
    weight: 0.9
    T: 4.0
train:
  epochs: EPOCHS
  optimizer: adam
  lr: 0.001
  weight_decay: 0.0
  momentum: 0.9
  nesterov: false
  schedule: cosine
  warmup_epochs: 0
  milestones: []
  gamma: 0.1
  grad_clip: null
  accumulate: 1
  checkpoint_every: 1
  deterministic: false
  threads: 1
  precision: fp32
  channels_last: false
  teacher_dtype: fp32
  scale_lr: false
  device: auto
""" + OLD_SECTIONS

# bbe454d: tests/lm/test_lm.py's TINY run on the text file CORPUS
OLD_LM = """\
name: lm-text
seed: 0
task: language_model
data:
  name: text
  path: CORPUS
  augment: none
  size: null
  crop: null
  label_column: label
  label_fraction: 0.1
  val_fraction: 0.15
  test_fraction: 0.2
  batch_size: 8
  split_seed: 0
  unlabelled_path: null
  tokenizer: byte
  max_length: 32
  packing: null
  mask_prompt: true
teacher:
  model: gpt2
  kwargs:
    n_layer: 1
    n_embd: 16
    n_head: 2
    n_positions: 32
    resid_pdrop: 0.0
    embd_pdrop: 0.0
    attn_pdrop: 0.0
  checkpoint: null
  train:
    epochs: 1
    lr: 0.002
student:
  model: gpt2
  kwargs:
    n_layer: 1
    n_embd: 8
    n_head: 2
    n_positions: 32
    resid_pdrop: 0.0
    embd_pdrop: 0.0
    attn_pdrop: 0.0
  checkpoint: null
  train: {}
loss:
  ce:
    weight: 0.5
  forward_kl:
    weight: 0.5
    T: 1.0
train:
  epochs: 1
  optimizer: adamw
  lr: 0.01
  weight_decay: 0.01
  momentum: 0.9
  nesterov: false
  schedule: cosine
  warmup_epochs: 0
  milestones: []
  gamma: 0.1
  grad_clip: 1.0
  accumulate: 1
  checkpoint_every: 1
  deterministic: false
  threads: 1
  precision: fp32
  channels_last: false
  teacher_dtype: fp32
  scale_lr: false
  device: auto
""" + OLD_SECTIONS

OLD_MARKER = """\
{
  "kind": "run",
  "id": "9202dbbf2ab245e5957334098a8eba29",
  "files": [],
  "created": "2026-12-02T11:03:48+00:00",
  "distill": "0.1.0"
}
"""

CLASSIFIER_RUN = [a for a in TINY if not a.startswith("--")]  # the settings OLD_CLASSIFIER holds
LM_RUN = ["task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
          "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
          "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
          "train.epochs=1", "train.lr=0.01", "teacher.train.epochs=1"]


def old_classifier(epochs: int = 1) -> str:
    return OLD_CLASSIFIER.replace("EPOCHS", str(epochs))


def make_old(folder, text: str, marker: bool = True):
    """`folder` as bbe454d left it: its config.yaml (and marker) in the flat schema."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    if marker:
        (folder / ".distill.json").write_text(OLD_MARKER)
    return folder / "config.yaml"


def _corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    return path


# ---------------------------------------------------------------- loading


def test_an_old_classifier_config_reads_as_the_same_run(tmp_path):
    old = load_config(make_old(tmp_path / "run", old_classifier(3)))
    assert old == load_config(overrides=CLASSIFIER_RUN)
    assert not hasattr(old, "lm") and old.cache.mode == "auto"


def test_an_old_lm_config_reads_as_the_same_run(tmp_path):
    corpus = _corpus(tmp_path)
    old = load_config(make_old(tmp_path / "run", OLD_LM.replace("CORPUS", str(corpus))))
    assert old == load_config(overrides=[*LM_RUN, f"data.path={corpus}"])


def test_a_run_folder_from_before_markers_is_read_too(tmp_path):
    path = make_old(tmp_path / "run", old_classifier(), marker=False)
    for name in ("metrics.jsonl", "stages.json"):  # what run_folder.legacy recognises
        (path.parent / name).write_text("{}\n")
    assert load_config(path).train.epochs == 1


@pytest.mark.parametrize(
    ("cache", "section"),
    [
        ("cache: disk\ncache_dtype: fp16\ncache_topk: 4\ncache_dir: /c\n",
         {"mode": "disk", "dtype": "fp16", "topk": 4, "dir": "/c"}),
        ("cache: memory\ncache_dtype: fp16\ncache_topk: null\ncache_dir: /c\n",  # the run ignored the dir
         {"mode": "memory", "dtype": "fp16", "topk": None, "dir": None}),
        ("cache: 'off'\ncache_dtype: fp16\ncache_topk: 3\ncache_dir: null\n",  # ... and an off cache's keys
         {"mode": "off", "dtype": "fp32", "topk": None, "dir": None}),
    ],
)
def test_old_cache_keys_move_into_the_cache_section(tmp_path, cache, section):
    text = old_classifier().replace("cache: auto\ncache_dtype: fp32\ncache_topk: null\ncache_dir: null\n", cache)
    assert load_config(make_old(tmp_path / "run", text)).cache.model_dump() == section


def test_an_old_lm_disk_cache_without_topk_reads_as_what_ran_no_cache(tmp_path):
    text = OLD_LM.replace("CORPUS", "/c.txt").replace("cache: auto\n", "cache: disk\n")
    assert load_config(make_old(tmp_path / "run", text)).cache.mode == "off"


def test_another_tasks_key_away_from_its_default_stays_an_error(tmp_path):
    path = make_old(tmp_path / "run", old_classifier().replace("tokenizer: byte", "tokenizer: gpt2"))
    with pytest.raises(ConfigError, match="data.tokenizer='gpt2' would be ignored"):
        load_config(path)


@pytest.mark.parametrize("task", ["classification", "language_model"])
def test_a_current_config_is_left_as_it_is(task):
    saved = load_config(overrides=[f"task={task}", "cache=disk", "cache.topk=4", "cache.dir=/c"]).model_dump(mode="json")
    assert migrate(saved) == saved


def test_a_current_run_folder_with_an_ignored_cache_dir_stays_readable(tmp_path):
    # the schema of 3c5c1ff accepted cache.dir without cache: disk (the run ignored it)
    saved = load_config().model_dump(mode="json")
    saved["cache"] = {"mode": "memory", "dtype": "fp32", "topk": None, "dir": "/c"}
    path = make_old(tmp_path / "run", yaml.safe_dump(saved))
    assert load_config(path).cache.dir is None
    mine = tmp_path / "mine.yaml"  # as a user's config: refused
    mine.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="cache.dir='/c' would be ignored"):
        load_config(mine)


def test_an_old_seeds_record_is_read(tmp_path):
    config = yaml.safe_load(old_classifier())
    (tmp_path / "seeds-run.json").write_text(json.dumps(
        {"schema": 1, "first_seed": 0, "n": 2, "seeds": [0, 1], "finished": True, "config": config}))
    cfg, n, finished = read_record(tmp_path)
    assert cfg == load_config(overrides=[*CLASSIFIER_RUN, "train.epochs=1"]) and (n, finished) == (2, True)


# ---------------------------------------------------------------- not a run folder: the errors stay


def test_the_same_yaml_as_a_user_config_names_the_new_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(old_classifier())
    with pytest.raises(ConfigError, match="cache_dtype is now cache.dtype"):
        load_config(path)


@pytest.mark.parametrize("kind", [None, "seeds", "cache"])
def test_a_config_yaml_in_a_folder_that_is_no_run_folder_is_not_migrated(tmp_path, kind):
    path = make_old(tmp_path / "mine", old_classifier(), marker=False)
    if kind:
        (path.parent / ".distill.json").write_text(OLD_MARKER.replace('"run"', f'"{kind}"'))
    with pytest.raises(ConfigError, match="cache_dtype is now cache.dtype"):
        load_config(path)


# ---------------------------------------------------------------- the commands


def test_eval_report_and_export_read_an_old_classifier_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *CLASSIFIER_RUN, "train.epochs=1", "--quiet", "--no-report"]) == 0
    make_old(out, old_classifier())  # the weights stay, the config and marker become bbe454d's
    assert main(["eval", str(out)]) == 0
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()
    assert main(["export", str(out), "--format", "torchscript"]) == 0
    assert "cache_dtype" in (out / "config.yaml").read_text()  # reading changes nothing


def test_an_old_interrupted_run_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    make_old(out, old_classifier(3))
    assert main(["run", "--resume", str(out), *RESUME]) == 0
    assert json.loads((out / "summary.json").read_text())["stages"]["distill"]


def test_an_old_interrupted_run_restarts_with_a_new_schedule(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    make_old(out, old_classifier(3))
    assert main(["run", "--resume", str(out), "train.epochs=4", *RESUME]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())  # rewritten, in the current schema
    assert saved["cache"]["mode"] == "auto" and "cache_dtype" not in saved and "lm" not in saved
    assert saved["train"]["epochs"] == 4


def test_eval_reads_an_old_lm_folder(tmp_path, capsys):
    out, corpus = tmp_path / "run", _corpus(tmp_path)
    assert main(["run", "--out", str(out), *LM_RUN, f"data.path={corpus}", "--quiet", "--no-report"]) == 0
    make_old(out, OLD_LM.replace("CORPUS", str(corpus)))
    assert main(["eval", str(out)]) == 0
    assert "distill" in capsys.readouterr().out
