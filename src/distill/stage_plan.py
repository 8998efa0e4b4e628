"""Which stages a run trains, in order, and the model each one builds: read from the config
alone, so the run, `eval`, `export`, `report` and `--seeds` agree on them.

    default               teacher, scratch, distill
    teachers: [a, b]      teacher-a, teacher-b, teacher (their ensemble), scratch, distill
    assistants: [m1, m2]  teacher, scratch, assistant-1, assistant-2, distill
    self_distill.generations: K
                          teacher, scratch, gen-1 .. gen-(K-1), distill (all of the teacher's architecture)
    mutual.peers: [p1]    scratch, scratch-peer-1, distill + peer-1 (one stage: the cohort together)

`distill` is always the run's final student, so export, predict and the report's
distilled-minus-scratch gain mean the same thing whatever the method. In a chain (assistants,
generations) each link learns from the stage before it; `teacher_of` says which.
"""

from __future__ import annotations

from .config_schema import ModelConfig, RunBase
from .errors import ConfigError
from .models.hf import is_hf_folder

SCRATCH, DISTILL, TEACHER = "scratch", "distill", "teacher"
STUDENTS = (SCRATCH, DISTILL)  # the stages `stages:` can name besides the teacher
SPECIAL = ("teachers", "assistants", "self_distill.generations", "mutual.peers")


def _methods(cfg: RunBase) -> list[str]:
    """The special ways of distilling this config turns on (at most one is allowed)."""
    if cfg.task != "classification":
        return []
    on = {"teachers": bool(cfg.teachers), "assistants": bool(cfg.assistants),
          "self_distill.generations": cfg.self_distill.generations > 0, "mutual.peers": bool(cfg.mutual.peers)}
    return [key for key in SPECIAL if on[key]]


def method(cfg: RunBase) -> str | None:
    """teachers | assistants | self_distill.generations | mutual.peers, or None for plain KD."""
    found = _methods(cfg)
    return found[0] if found else None


def members(cfg: RunBase) -> list[str]:
    """The stages of several teachers (teacher-<name>), in config order; [] for one teacher."""
    return [f"teacher-{t.name}" for t in cfg.teachers] if method(cfg) == "teachers" else []


def peers(cfg: RunBase) -> list[str]:
    """The cohort's other students of mutual learning (peer-<i>), trained in the distill stage."""
    return [f"peer-{i}" for i in range(1, len(cfg.mutual.peers) + 1)] if method(cfg) == "mutual.peers" else []


def assistants(cfg: RunBase) -> list[str]:
    """The teacher assistants' stages (assistant-<i>), in chain order."""
    return [f"assistant-{i}" for i in range(1, len(cfg.assistants) + 1)] if method(cfg) == "assistants" else []


def has_teacher_stage(cfg: RunBase) -> bool:
    return method(cfg) != "mutual.peers"


def chain(cfg: RunBase) -> list[str]:
    """The stages that learn by distillation, in order, each from the one before (the first
    from the teacher); the last is always distill."""
    kind = method(cfg)
    if kind == "assistants":
        return [*assistants(cfg), DISTILL]
    if kind == "self_distill.generations":
        return [f"gen-{k}" for k in range(1, cfg.self_distill.generations)] + [DISTILL]
    return [DISTILL]


def scratch_stages(cfg: RunBase) -> list[str]:
    """The students trained on labels alone: the student, and with mutual learning each peer."""
    return [SCRATCH] + [f"scratch-{p}" for p in peers(cfg)]


def student_stages(cfg: RunBase) -> list[str]:
    """Every stage after the teacher's, in run order, as far as `stages` asks for them."""
    out = scratch_stages(cfg) if SCRATCH in cfg.stages else []
    return out + (chain(cfg) if DISTILL in cfg.stages else [])


def all_stages(cfg: RunBase) -> list[str]:
    """Every stage a run of `cfg` may record, in run order (the peers after distill)."""
    teachers = [*members(cfg), TEACHER] if has_teacher_stage(cfg) else []
    return teachers + scratch_stages(cfg) + chain(cfg) + peers(cfg)


def planned_stages(cfg: RunBase) -> list[str]:
    """The stages a run of `cfg` trains, in run order (`all_stages` restricted to `stages`)."""
    teachers = [s for s in all_stages(cfg) if is_teacher(s)] if TEACHER in cfg.stages else []
    return teachers + student_stages(cfg) + (peers(cfg) if DISTILL in cfg.stages else [])


def teacher_of(cfg: RunBase, stage: str) -> str:
    """The stage whose validation-selected model teaches `stage` (a stage of `chain`)."""
    links = chain(cfg)
    i = links.index(stage)
    return TEACHER if i == 0 else links[i - 1]


def spec_of(cfg: RunBase, stage: str) -> ModelConfig:
    """The model a stage builds ("student" and "teacher" name the roles' own sections)."""
    kind = method(cfg)
    if stage.startswith("teacher-"):
        return next(t for t in cfg.teachers if f"teacher-{t.name}" == stage)
    if stage.startswith("assistant-"):
        return cfg.assistants[int(stage.removeprefix("assistant-")) - 1]
    if peer_number(stage):
        return cfg.mutual.peers[peer_number(stage) - 1]
    if stage == TEACHER or kind == "self_distill.generations":  # born-again: the teacher's architecture
        return cfg.teacher
    return cfg.student


def peer_number(stage: str) -> int:
    """i of a cohort's peer-<i> or its twin scratch-peer-<i>; 0 for any other stage."""
    return int(stage.rsplit("-", 1)[1]) if stage.startswith(("peer-", "scratch-peer-")) else 0


def is_teacher(stage: str) -> bool:
    """A teacher's stage (one teacher, the ensemble, or one of several)."""
    return stage == TEACHER or stage.startswith("teacher-")


def check_plan(cfg: RunBase) -> None:
    """A ConfigError for a combination the stages cannot run (config.validate calls it)."""
    found = _methods(cfg)
    if len(found) > 1:
        raise ConfigError(f"{' and '.join(found)} are both set, and a run distills one way. Keep one "
                          "of them (and run the other as a second run).")
    default = type(cfg)()
    if cfg.task == "classification":
        _check_unused(cfg, default)
    kind = method(cfg)
    if len(chain(cfg)) > 1 and cfg.cache.dir:
        raise ConfigError(f"cache.dir is one teacher's cache, and with {kind} every link of the chain "
                          "has its own teacher. Leave cache.dir unset: each link's disk cache then "
                          "goes into the run folder (teacher_cache-<stage>).")
    if kind == "teachers":
        _check_teachers(cfg, default)
    elif kind == "self_distill.generations" and (cfg.student != default.student):
        raise ConfigError("self_distill.generations trains every generation with the teacher's "
                          "architecture (born-again networks), so the student section would be "
                          "ignored. Remove it, or set self_distill.generations=0.")
    elif kind == "mutual.peers":
        _check_mutual(cfg, default)


def _check_unused(cfg: RunBase, default: RunBase) -> None:
    if cfg.ensemble != default.ensemble and method(cfg) != "teachers":
        raise ConfigError("ensemble.* would be ignored: it says how several teachers (teachers: [...]) "
                          "make the targets. Remove it, or list the teachers.")


def _check_teachers(cfg: RunBase, default: RunBase) -> None:
    names = [t.name for t in cfg.teachers]
    if len(names) < 2:
        raise ConfigError("teachers lists one teacher; for one teacher use the teacher section "
                          "(teacher.model, teacher.checkpoint), or list two or more.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"teachers names {', '.join(repeated)} more than once; each teacher needs "
                          "its own name (its stage is teacher-<name>).")
    if cfg.teacher.model_copy(update={"train": {}}) != default.teacher:
        raise ConfigError("With teachers: [...] the teacher section's model, kwargs and checkpoint "
                          "would be ignored (each entry of teachers is a model spec of its own); only "
                          "teacher.train applies, to every teacher. Remove the others.")
    untrained = [t.name for t in cfg.teachers if not t.checkpoint and not is_hf_folder(t.model)]
    if untrained and TEACHER not in cfg.stages:
        raise ConfigError(f"teachers {', '.join(untrained)} have no checkpoint, so the teacher stage "
                          "must train them: add teacher to stages, or give each a checkpoint.")
    if cfg.ensemble.T is None and "T" not in cfg.loss.get("kd", {}):
        raise ConfigError("The teachers' probabilities are averaged at a temperature: set "
                          "ensemble.T (e.g. ensemble.T=4), or give loss.kd a T, which it then uses.")


def _check_mutual(cfg: RunBase, default: RunBase) -> None:
    if cfg.teacher.checkpoint or cfg.teacher != default.teacher:
        raise ConfigError("mutual.peers trains a cohort of students without a teacher (deep mutual "
                          "learning), so the teacher section would be ignored. Remove it.")
    for i, peer in enumerate(cfg.mutual.peers, 1):
        if peer.checkpoint or peer.train:
            raise ConfigError(f"mutual.peers[{i - 1}] sets checkpoint or train: the cohort's students "
                              "all start untrained and train with `train`. Remove them.")
    if cfg.cache != default.cache:
        raise ConfigError("cache.* would be ignored: mutual learning has no teacher whose outputs "
                          "could be cached (the cohort's predictions change every step). Remove it.")
    if TEACHER in cfg.stages and cfg.stages != default.stages:
        raise ConfigError("stages lists teacher, but mutual learning has no teacher; use "
                          "stages=[scratch,distill].")


def ensemble_T(cfg: RunBase) -> float:
    """The temperature at which several teachers' probabilities are averaged."""
    return float(cfg.ensemble.T if cfg.ensemble.T is not None else cfg.loss["kd"]["T"])
