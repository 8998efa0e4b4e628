"""The run schema: one pydantic model per task, `RunConfig` the union of them keyed on `task`.

Unknown keys are forbidden, so a key that this task does not read (an LM key on a classifier
run, or the reverse) is an unknown key like a typo. The classification defaults are the
built-in demo: digits, a label-scarce transfer set, a CNN teacher and a small MLP student
(chosen by benchmarks/digits_seeds.py; see the README); the language_model defaults are the
built-in byte-level example, configs/lm/pydoc.yaml (LM_DEFAULTS).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from .lora_schema import LMStudentConfig
from .method_schema import EnsembleConfig, MutualConfig, SelfDistillConfig, TeacherEntry
from .schedule import Every, dump_every, parse_every
from .schema_base import ModelConfig, Strict

SEED_LIMIT = 2**63  # torch.manual_seed takes < 2**64; --seeds N adds up to N - 1
SPLIT_SEED_LIMIT = 2**32  # scikit-learn's random_state range
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class DataBase(Strict):
    """The data keys every task reads."""

    name: str
    path: str | None = None  # where to read anything but the built-in data from
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    batch_size: int = Field(64, gt=0)
    split_seed: int = Field(0, ge=0, lt=SPLIT_SEED_LIMIT)


class DataConfig(DataBase):
    """task: classification data (distill.data)."""

    # digits | cifar10 | cifar100 | mnist | fashion_mnist | folder | npz | csv | npy | hf, or
    # package.module:function returning your own torch Dataset (called with data.kwargs)
    name: str = "digits"
    augment: str | list[dict[str, Any]] = "none"  # none | flip | crop_flip | [{name: ..., ...}]
    size: int | list[int] | None = None  # folder, hf images: resize (shorter side, or [h, w])
    crop: int | list[int] | None = None  # folder, hf images: centre crop after resizing
    label_column: str = "label"  # csv, hf
    label_fraction: float = Field(0.1, gt=0, le=1)
    unlabelled_path: str | None = None
    val_max: int | None = Field(None, gt=0)  # validate on a fixed stratified subset of this many
    eval_batch_size: int | None = Field(None, gt=0)  # validation/test batches; null: max(batch_size, 512)
    # Which loader serves the data (distill.data.stream): memory holds every decoded row in RAM,
    # stream reads batches on demand in `workers` processes; auto streams data read from disk
    # on demand whose decoded size exceeds memory_limit_mb (default: an eighth of RAM).
    loader: Literal["auto", "memory", "stream"] = "auto"
    workers: int | None = Field(None, ge=0, le=64)  # stream: reader processes; null: cores - 1 (at most 4)
    prefetch: int = Field(2, gt=0, le=64)  # stream: batches each worker reads ahead
    memory_limit_mb: int | None = Field(None, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # data.name=package.module:function: its arguments
    image_column: str = "image"  # hf: the column holding the inputs
    skip_corrupt: bool = False  # folder: leave out (and count) files whose header cannot be read


class LMDataConfig(DataBase):
    """task: language_model data (data.name: pydoc | text | jsonl | hf); see distill.lm.data."""

    name: str = "pydoc"
    batch_size: int = Field(32, gt=0)
    tokenizer: str = "byte"  # byte (built in) or a local folder with a Hugging Face tokenizer
    # the teacher's own tokenizer (byte or a folder), when it differs from the student's:
    # cross-tokenizer terms only (uld); see distill.lm.cross_tokenizer
    teacher_tokenizer: str | None = None
    max_length: int = Field(128, gt=1)  # tokens per row
    packing: bool | None = None  # join examples into full rows; default: yes unless prompt/completion
    mask_prompt: bool = True  # prompt tokens are not targets


class TextDataConfig(DataBase):
    """task: text_classification data (data.name: pydoc | csv | jsonl | hf); see distill.text."""

    name: str = "pydoc"
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(256, gt=0)  # validation/test batches
    text_column: str = "text"  # csv, jsonl, hf
    label_column: str = "label"  # csv, jsonl, hf
    tokenizer: str = "words"  # words (built in, hashed) or a local folder with a Hugging Face tokenizer
    vocab_size: int = Field(8192, gt=4, le=1 << 22)  # words: hash buckets
    max_length: int = Field(128, gt=2, le=8192)  # tokens per row, [CLS] and [SEP] included
    label_fraction: float = Field(1.0, gt=0, le=1)  # the students' share of the training labels
    val_max: int | None = Field(None, gt=0)


# train.eval_every / train.checkpoint_every: an int (epochs) or "2 epochs" / "500 steps" (distill.schedule)
EveryValue = Annotated[Every, BeforeValidator(parse_every), PlainSerializer(dump_every, return_type=int | str)]


class TrainConfig(Strict):
    epochs: int = Field(50, gt=0)  # not read when max_steps is set
    # Train this many optimizer steps instead of `epochs` (across epochs, stopping mid-epoch if
    # it falls there); the cosine schedule then ends at this step.
    max_steps: int | None = Field(None, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_steps: int = Field(0, ge=0)  # the warm-up in optimizer steps instead (set one of the two)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    # Split each batch into this many micro-batches, one backward each, one optimizer step:
    # the same update as the whole batch at a fraction of the activation memory.
    accumulate: int = Field(1, gt=0)
    # Validate (and select the best weights) every N epochs or steps, and after the last step.
    eval_every: EveryValue = Every(1, "epoch")
    checkpoint_every: EveryValue = Every(1, "epoch")  # the same units; 0: none
    deterministic: bool = False
    # One thread by default: the small models a CPU run usually trains are fastest on one
    # (on a 2-core machine with the other core busy, two threads slowed the demo ~8x).
    # null = torch's default (all cores), e.g. for big models on a CPU.
    threads: int | None = Field(1, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds a GradScaler
    # NHWC memory format for conv nets (benchmarks/speed.py --levers). Classifiers only; it
    # stays here because the engine reads it from every stage's TrainConfig, and
    # config.check_unused refuses it on a language-model run.
    channels_last: bool = False
    teacher_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # hold the teacher in half to save memory
    # Under torchrun: DistributedDataParallel, or FSDP2 (the student sharded per transformer
    # block, sharded checkpoints; distill.sharding). Language models only.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Recompute each student block's activations in backward instead of keeping them
    # (torch.utils.checkpoint, use_reentrant=False). Language models only.
    activation_checkpointing: bool = False
    scale_lr: bool = False  # multiply lr by the number of processes (batch_size is global)
    device: str = "auto"

    @field_validator("eval_every")
    @classmethod
    def _some_evaluation(cls, every: Every) -> Every:
        if every.count == 0:
            raise ValueError("validation selects the best weights, so eval_every must be at least 1 "
                             "(e.g. 1 for every epoch, or '500 steps')")
        return every

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainConfig:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} and warmup_steps={self.warmup_steps} "
                             "both set the warm-up: keep one and set the other to 0")
        return self


class OnPolicyConfig(Strict):
    """GKD's on-policy data: a share of batches is sampled from the student, scored by the teacher."""

    fraction: float = Field(0.0, ge=0, le=1)  # share of training batches generated by the student
    temperature: float = Field(1.0, gt=0)  # sampling temperature
    max_new_tokens: int = Field(32, gt=0)
    prompt_tokens: int = Field(16, gt=0)  # prompt length taken from plain-text rows


class LMConfig(Strict):
    """Settings of task: language_model runs (distill.lm)."""

    shared_vocab: int | None = Field(None, gt=0)  # compare only the first N logits of both models
    chunk: int | None = Field(None, gt=0)  # counted tokens per loss chunk; default from the vocab
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)


class LogConfig(Strict):
    tensorboard: bool = False  # also write TensorBoard scalars to <run>/tensorboard/


class CacheConfig(Strict):
    """The teacher-output cache (distill.cache; an LM's offline top-k store, distill.lm.offline).
    `cache: disk` is short for `cache: {mode: disk}`."""

    mode: Literal["off", "auto", "memory", "disk"] = "auto"  # auto: in memory, only when exact and useful
    dtype: Literal["fp32", "fp16"] = "fp32"  # classifiers, memory/disk: fp16 halves the store
    topk: int | None = Field(None, gt=0)  # keep the top-k logits (an LM: the offline teacher)
    dir: str | None = None  # disk mode; default <run folder>/teacher_cache

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, mode: Any) -> Any:
        return "off" if mode is False else mode  # YAML 1.1 reads a bare `off` as false


def unread_cache_keys(task: str, mode: str, topk: int | None) -> list[tuple[str, str, str]]:
    """(key, why, fix) for each cache key that a `task` run with cache `mode` and `topk`
    does not read. config.check_unused refuses them away from their defaults; saved_config
    drops them from configs older distill versions saved (those runs did not read them)."""
    unread = []
    if task == "language_model" and mode in ("memory", "disk") and topk is None:
        # tasks/language_model.py open_cache: an LM caches only a top-k teacher, else none
        unread.append(("cache.mode", "a language model's cache holds only an offline top-k teacher, "
                       "and without cache.topk the run trains from the online teacher, uncached",
                       "Set cache.topk=K (e.g. cache.topk=16) to train from a stored top-k teacher, "
                       "or remove it."))
        mode = "off"
    if mode != "disk":
        unread.append(("cache.dir", f"only cache: disk keeps a folder (cache.mode is {mode})",
                       "Set cache=disk to keep the cache in that folder, or remove cache.dir."))
    if mode == "off":
        unread += [(key, "the cache is off (cache.mode is off)",
                    f"Set cache=memory or cache=disk to use it, or remove {key}.")
                   for key in ("cache.topk", "cache.dtype")]
    return unread


Stage = Literal["teacher", "scratch", "distill"]


class RunBase(Strict):
    """The keys of every task's run; each task's schema sets its data and defaults."""

    name: str
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    task: str
    data: DataBase
    teacher: ModelConfig
    student: ModelConfig
    loss: dict[str, dict[str, Any]]
    train: TrainConfig = Field(default_factory=TrainConfig)
    stages: list[Stage] = Field(default_factory=lambda: ["teacher", "scratch", "distill"], min_length=1)
    log: LogConfig = Field(default_factory=LogConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        """The run folder is runs/<name>-<timestamp>: a name must not lead out of runs/."""
        if not RUN_NAME.fullmatch(name):
            raise ValueError(
                "a run name must be a plain folder name, so that the run stays inside runs/: "
                "letters, digits, '-', '_' and '.', not starting with '.', at most 100 characters "
                "(no '/', '\\' or spaces); to write the run somewhere else, pass --out DIR"
            )
        return name

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_shorthand(cls, cache: Any) -> Any:
        """`cache: disk` (or YAML's `cache: off`, read as false) means `cache: {mode: disk}`."""
        return {"mode": cache} if isinstance(cache, str | bool) else cache


class ClassificationConfig(RunBase):
    name: str = "digits-transfer"
    task: Literal["classification"] = "classification"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="cnn", kwargs={"channels": [64, 128], "dropout": 0.3})
    )
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(model="mlp", kwargs={"hidden": [64]}))
    loss: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}
    )
    # More ways to distill (distill.stage_plan): several teachers, teacher assistants between
    # the teacher and the student, born-again generations, or mutual learning without a teacher.
    teachers: list[TeacherEntry] = Field(default_factory=list)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    assistants: list[ModelConfig] = Field(default_factory=list)
    self_distill: SelfDistillConfig = Field(default_factory=SelfDistillConfig)
    mutual: MutualConfig = Field(default_factory=MutualConfig)


# task: language_model defaults: the built-in byte-level example, configs/lm/pydoc.yaml
_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
LM_DEFAULTS: dict[str, Any] = {
    "data": {"name": "pydoc", "batch_size": 32},
    "teacher": {"model": "gpt2", "kwargs": {"n_layer": 3, "n_embd": 96, "n_head": 4, "n_positions": 128, **_NO_DROPOUT},
                "train": {"epochs": 6, "lr": 0.002}},
    "student": {"model": "gpt2", "kwargs": {"n_layer": 2, "n_embd": 48, "n_head": 2, "n_positions": 128, **_NO_DROPOUT}},
    "loss": {"ce": {"weight": 0.5}, "forward_kl": {"weight": 0.5, "T": 1.0}},
    "train": {"epochs": 6, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01, "grad_clip": 1.0},
}


class LanguageModelConfig(RunBase):
    name: str = "lm-pydoc"  # load_config names an unnamed run lm-<data.name>
    task: Literal["language_model"] = "language_model"
    data: LMDataConfig = Field(default_factory=lambda: LMDataConfig.model_validate(LM_DEFAULTS["data"]))
    teacher: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate(LM_DEFAULTS["teacher"]))
    # its own student schema: student.lora (distill.lora_schema) is a key of LM runs only
    student: LMStudentConfig = Field(default_factory=lambda: LMStudentConfig.model_validate(LM_DEFAULTS["student"]))
    loss: dict[str, dict[str, Any]] = Field(default_factory=lambda: {k: dict(v) for k, v in LM_DEFAULTS["loss"].items()})
    train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate(LM_DEFAULTS["train"]))
    lm: LMConfig = Field(default_factory=LMConfig)


# task: text_classification defaults: the built-in example, configs/text/pydoc.yaml. Equal head
# counts, so the MiniLM terms apply; no dropout in the teacher's targets (it is in eval mode).
_BERT = {"num_attention_heads": 4, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
TEXT_DEFAULTS: dict[str, Any] = {
    "data": {"name": "pydoc", "max_length": 96, "label_fraction": 0.25},
    "teacher": {"model": "bert", "kwargs": {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 256, **_BERT},
                "train": {"epochs": 12}},
    "student": {"model": "bert", "kwargs": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, **_BERT}},
    # TinyBERT's hidden-state term (student layers 1, 2 <- teacher 2, 4) and MiniLM's attention
    # term (last layer) on top of KD: +15.2 test points over scratch against +9.0 for KD alone
    # (benchmarks/results/text_pydoc_terms_seeds.json, text_pydoc_seeds.json)
    "loss": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "T": 2.0},
             "hid": {"type": "tinybert_hidden", "weight": 1.0}, "att": {"type": "minilm_attention", "weight": 1.0}},
    "train": {"epochs": 12, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "grad_clip": 1.0,
              "warmup_epochs": 1},
}


class TextClassificationConfig(RunBase):
    name: str = "text-pydoc"  # load_config names an unnamed run text-<data.name>
    task: Literal["text_classification"] = "text_classification"
    data: TextDataConfig = Field(default_factory=lambda: TextDataConfig.model_validate(TEXT_DEFAULTS["data"]))
    teacher: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate(TEXT_DEFAULTS["teacher"]))
    student: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate(TEXT_DEFAULTS["student"]))
    loss: dict[str, dict[str, Any]] = Field(default_factory=lambda: {k: dict(v) for k, v in TEXT_DEFAULTS["loss"].items()})
    train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate(TEXT_DEFAULTS["train"]))


# The schema of each task (a new kind of run adds its schema here and to RunConfig).
SCHEMAS: dict[str, type[RunBase]] = {"classification": ClassificationConfig, "language_model": LanguageModelConfig,
                                     "text_classification": TextClassificationConfig}
# the defaults a partial section of a task's config keeps, and the run-name prefix of that task
TASK_DEFAULTS = {"language_model": ("lm", LM_DEFAULTS), "text_classification": ("text", TEXT_DEFAULTS)}
DEFAULT_TASK = "classification"  # a config without `task:`


def task_of(raw: Any) -> Any:
    """The `task` of a raw config (a dict) or of a validated one: the union's discriminator."""
    if isinstance(raw, dict):
        return raw.get("task", DEFAULT_TASK)
    return getattr(raw, "task", None)


RunConfig = Annotated[
    Annotated[ClassificationConfig, Tag("classification")] | Annotated[LanguageModelConfig, Tag("language_model")]
    | Annotated[TextClassificationConfig, Tag("text_classification")],
    Discriminator(task_of),
]
RUN_CONFIG: TypeAdapter = TypeAdapter(RunConfig)


def parse(raw: Any) -> ClassificationConfig | LanguageModelConfig | TextClassificationConfig:
    """The schema of raw's task, validated (pydantic's ValidationError on a mistake; the
    error locations start with the task, e.g. ('classification', 'data', 'max_length'))."""
    return RUN_CONFIG.validate_python(raw)
