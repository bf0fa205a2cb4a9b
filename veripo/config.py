"""Typed, frozen run configuration behind the Hydra recipes.

A recipe (``veripo/recipes/*.yaml``) is composed by Hydra, turned into a plain dict and validated here into
`RunConfig` before any model loads. Every error names the key (``grpo.group_size``), what is wrong
and the allowed values; an unknown key gets the closest known names as suggestions.

`from_dict(cls, data, prefix)` is the one converter: it walks any dataclass's fields, checks types
(int, float, bool, str, Optional, list, dict, nested dataclasses, Literal-like choices given in
``field(metadata={"choices": ...})``) and then the class's own ``__post_init__`` checks values.
Sections owned by other packages (``train`` -> `veripo.train.TrainConfig`, ``rollout`` ->
`veripo.rollout.RolloutConfig`) go through the same converter.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad recipe value; the message names the key and the fix."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{key}: a section is required here, got null")
        return from_dict(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}. Fix: write {key}=[a,b]")
        inner = args[0] if args else Any
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, checking keys, types and choices."""
    where = prefix or "<root>"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=3)
        dotted = [f"{prefix}.{c}" if prefix else c for c in close]
        hint = f" Did you mean {', '.join(dotted)}?" if close else ""
        raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: unknown key.{hint} "
                          f"Known keys of {where}: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices is not None and kwargs[name] is not None:
            vals = kwargs[name] if isinstance(kwargs[name], list) else [kwargs[name]]
            for v in vals:
                if v not in choices:
                    raise ConfigError(f"{key}: {v!r} is not allowed. Allowed values: {', '.join(map(str, choices))}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix}: {msg}") from e


def to_dict(obj: Any) -> Any:
    """A dataclass config back to plain data (for config.yaml and hashing)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def choice(default: Any, choices: tuple) -> Any:
    return field(default=default, metadata={"choices": choices})


STAGES = ("sft", "grpo", "verify", "preference", "eval")


def check_stages(stages: list[str]) -> None:
    """The per-iteration stage list: each stage once, except ``eval``, which may follow any stage (it
    evaluates the policy that stage left); ``sft`` (the cold start) only first; ``verify`` after ``grpo``."""
    names = [s for s in stages if s != "eval"]
    if len(set(names)) != len(names):
        raise ValueError(f"stages: {stages} names a stage twice (only eval may repeat)")
    for a, b in zip(stages, stages[1:]):
        if a == b == "eval":
            raise ValueError(f"stages: {stages} has eval twice in a row")
    if "sft" in stages and stages.index("sft") != 0:
        raise ValueError(f"stages: sft is the cold start and must come first, got {stages}")
    if "verify" in stages and ("grpo" not in stages or stages.index("grpo") > stages.index("verify")):
        raise ValueError(f"stages: verify reads the iteration's GRPO rollouts, so grpo must come before it: {stages}")
    if "verify" in stages and "preference" in stages and stages.index("preference") < stages.index("verify"):
        raise ValueError(f"stages: preference trains on the verifier's pairs, so verify must come before it: {stages}")


def stage_plan(stages: list[str], iteration: int) -> list[str]:
    """Stage ids of one iteration, in order: ``sft`` only in iteration 0 (with an eval right after it),
    and each eval named after the stage it follows (``eval_grpo``; ``eval_base`` when it comes first)."""
    out: list[str] = []
    prev = "base"
    for name in stages:
        if name == "eval":
            if not (prev == "sft" and iteration > 0):
                out.append(f"eval_{prev}")
            continue
        prev = name
        if name == "sft" and iteration > 0:
            continue
        out.append(name)
    return out


@dataclass(frozen=True)
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    chat_template: str | None = None  # override the tokenizer's template (a Jinja string)


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic video-QA set, generated into the run folder when data.train is null."""

    n: int = 64
    seed: int = 0
    difficulty: float = 0.3
    frames: int = 8
    test_fraction: float = 0.25

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"data.synth.n must be >= 2, got {self.n}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.synth.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class VideoSection:
    fps: float | None = None
    nframes: int | None = 8
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    max_frames: int = 16
    on_error: str = choice("raise", ("raise", "skip"))


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None  # Video-R1 JSONL; null = generate the synthetic set
    test: str | None = None
    synth: SynthConfig = SynthConfig()
    use_caption: bool = True  # text-only models read the per-frame caption
    use_video: bool = False  # vision models get the clip itself
    system_prompt: str | None = None
    max_prompt_tokens: int = 1024
    skip_bad: bool = False
    video: VideoSection = VideoSection()

    def __post_init__(self):
        if not (self.use_caption or self.use_video):
            raise ValueError("data: set use_caption or use_video (or both), else the model sees no video")
        if self.test is not None and self.train is None:
            raise ValueError("data.test is set but data.train is null. Fix: set data.train too, or neither")


@dataclass(frozen=True)
class SFTConfig:
    """Cold start: teach the <think>/<answer> format on reference answers before GRPO."""

    steps: int = 20
    batch_size: int = 8
    lr: float = 5e-5
    warmup_steps: int = 2

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"sft: need steps >= 0, batch_size >= 1, lr > 0 (got {self.steps}, {self.batch_size}, {self.lr})")


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 10
    prompts_per_step: int = 4
    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    lr: float = 1e-5
    lr_after_first: float | None = None  # lr of the GRPO stages of iterations >= 1 (VerIPO: 1e-6 then 5e-7)
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = choice("k3", ("k1", "abs", "k2", "k3"))
    agg: str = choice("token-mean", ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                     "seq-mean-token-sum-norm"))
    norm_adv_by_std: bool = True
    reward_weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    length_bonus: float = 0.0  # Video-R1's +w for correct answers with l_min..l_max reasoning tokens
    length_min: int = 320
    length_max: int = 512
    temporal: bool = False  # T-GRPO (video prompts only)

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (group-relative advantages), got {self.group_size}")
        if self.steps < 0 or self.prompts_per_step < 1 or self.max_tokens < 1:
            raise ValueError("grpo: steps >= 0, prompts_per_step >= 1 and max_tokens >= 1 are required")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"grpo.dual_clip must be > 1 (or null), got {self.dual_clip}")
        if not (0 < self.clip_low < 1 and self.clip_high > 0):
            raise ValueError(f"grpo: need 0 < clip_low < 1 and clip_high > 0, got {self.clip_low}, {self.clip_high}")
        if self.temperature <= 0:
            raise ValueError(f"grpo.temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class VerifySection:
    """The verify stage: the iteration's GRPO rollouts -> rule checks + judge -> contrastive pairs.

    `mode` ``consistency`` is VerIPO's rollout-aware verifier (penalty / consistency / reflection pairs,
    ALGORITHMS.md section 3); ``caption`` is the LLaVA-Hound caption-proxy judge (best vs worst).
    The judge runs on its own engine (a Ray actor holding `judge_model` on vLLM, `judge_gpus` GPUs)
    unless `judge` is ``openai`` (an endpoint at `base_url`) or ``none`` (rule checks only).
    `config` overrides `verifier.VerifierConfig` fields (e.g. ``{max_pairs_per_prompt: 3}``).
    """

    mode: str = choice("consistency", ("consistency", "caption"))
    judge: str = choice("vllm", ("vllm", "openai", "none"))
    judge_model: str = "smollm2-135m-instruct"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge_max_tokens: int = 32
    judge_gpus: float = 0.0
    judge_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments for the judge
    last_steps: int | None = None  # null: every GRPO step of the iteration; N: only the last N steps
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.judge == "openai" and not self.base_url:
            raise ValueError("verify.base_url is required with verify.judge=openai (e.g. http://127.0.0.1:8000/v1)")
        if self.mode == "caption" and self.judge == "none":
            raise ValueError("verify.mode=caption needs a judge: set verify.judge=vllm or openai")
        if self.last_steps is not None and self.last_steps < 1:
            raise ValueError(f"verify.last_steps must be >= 1 or null, got {self.last_steps}")
        self.verifier_config()

    def verifier_config(self):
        """`verifier.VerifierConfig` with `config`'s overrides (errors name ``verify.config.KEY``)."""
        from verifier.config import ConfigError as VerifierConfigError, VerifierConfig

        try:
            return VerifierConfig.from_dict(dict(self.config))
        except VerifierConfigError as e:
            raise ValueError(f"verify.config.{e.field}: {str(e).split(': ', 1)[-1]}") from e


@dataclass(frozen=True)
class EvalSection:
    """Held-out evaluation (`veripo.eval`) on the test split: greedy answers, accuracy per problem type,
    MRA, format rate and the verifier's inconsistency rate (when `judge` is true and verify has a judge)."""

    max_tokens: int = 128
    temperature: float = 0.0
    limit: int | None = None  # null: the whole test split
    judge: bool = True

    def __post_init__(self):
        if self.max_tokens < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("eval: max_tokens >= 1 and limit >= 1 (or null) are required")


@dataclass(frozen=True)
class PruneConfig:
    """VerIPO easy-sample pruning between iterations (ALGORITHMS.md section 1): a prompt whose G rollouts
    (its latest group in the iteration) were all accurate is dropped from the next GRPO round with
    probability `p`."""

    enabled: bool = True
    p: float = 0.8
    accuracy_threshold: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"prune.p must be in [0, 1], got {self.p}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Step checkpoints inside a stage (model, optimizer, schedule, RNG; atomic): a killed run resumes
    from the last one, recomputing at most `every` - 1 steps plus the step that was running."""

    every: int = 1
    keep_stage_checkpoints: bool = True  # False: delete a stage's checkpoint once the next stage is done

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"checkpoint.every must be >= 1, got {self.every}")


@dataclass(frozen=True)
class RayConfig:
    """Where the run's actors go: the Ray cluster, the workers per role and their placement.

    ``placement: colocate`` (default): trainer rank i and rollout engine i share one bundle, i.e. one
    node's GPU (``trainer_gpus_per_worker`` of it, usually 1): the engine sleeps (vLLM sleep mode,
    `veripo.rollout.RolloutConfig.sleep_level`) while the policy trains and wakes for rollouts and
    weight pushes. ``placement: split``: separate bundles per role, ``trainer_gpus_per_worker`` for
    each FSDP2 rank and ``rollout_gpus_per_worker`` for each engine (more than 1: a tensor-parallel
    engine, with ``rollout.vllm_kwargs.tensor_parallel_size`` equal to it); the engines never sleep.
    The judge has its own engine (``verify.judge_gpus``) outside both.

    With GPUs, or with ``placement: split``, each role gets a Ray placement group, one bundle per
    worker holding its CPUs, GPUs and ``*_resources``; ``strategy`` ``auto`` packs a role's bundles
    onto one node when they fit one (STRICT_PACK), else PACK (FSDP2 ranks may then span nodes; they
    meet at rank 0's node IP). ``*_resources`` add custom Ray resources per worker, e.g. a node label
    started with ``ray start --resources='{"gpu_node_a": 1}'`` and asked for as ``{gpu_node_a: 0.01}``
    to pin a role to that node. ``*_cpus_per_worker`` null shares the cluster's CPUs: each actor gets
    min(1, cluster CPUs / actors). The default (colocate, no GPUs, no resources) uses no placement
    groups: the actors share the local CPUs fractionally.
    """

    address: str | None = None  # null: start a local cluster
    num_cpus: int | None = None  # CPUs of the local cluster (null: all)
    placement: str = choice("colocate", ("colocate", "split"))
    strategy: str = choice("auto", ("auto", "STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"))
    trainer_workers: int = 1  # FSDP2 ranks (1 = single process); may span nodes
    rollout_workers: int = 1  # rollout engines (prompts are split across them)
    reward_workers: int = 0  # 0 = score rewards in the driver
    trainer_gpus_per_worker: float = 0.0  # at most 1: an FSDP2 rank drives one GPU
    rollout_gpus_per_worker: float = 0.0
    trainer_cpus_per_worker: float | None = None
    rollout_cpus_per_worker: float | None = None
    trainer_resources: dict[str, float] = field(default_factory=dict)
    rollout_resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.trainer_workers < 1 or self.rollout_workers < 1 or self.reward_workers < 0:
            raise ValueError("ray: trainer_workers and rollout_workers must be >= 1, reward_workers >= 0")
        for role in ("trainer", "rollout"):
            gpus, cpus = getattr(self, f"{role}_gpus_per_worker"), getattr(self, f"{role}_cpus_per_worker")
            if gpus < 0:
                raise ValueError(f"ray.{role}_gpus_per_worker must be >= 0, got {gpus}")
            if cpus is not None and cpus <= 0:
                raise ValueError(f"ray.{role}_cpus_per_worker must be > 0 or null (share the cluster's CPUs), got {cpus}")
            for name, amount in getattr(self, f"{role}_resources").items():
                if name in ("CPU", "GPU", "memory", "object_store_memory"):
                    raise ValueError(f"ray.{role}_resources.{name}: set CPUs and GPUs with ray.{role}_cpus_per_worker "
                                     f"and ray.{role}_gpus_per_worker; *_resources are custom Ray resources only")
                if amount <= 0:
                    raise ValueError(f"ray.{role}_resources.{name} must be > 0, got {amount}")
        t, r = self.trainer_gpus_per_worker, self.rollout_gpus_per_worker
        if t > 1:
            raise ValueError(f"ray.trainer_gpus_per_worker must be at most 1 (an FSDP2 rank drives one GPU), got {t}. "
                             "Fix: more GPUs per run means more ranks: raise ray.trainer_workers")
        if r > 1 and r != int(r):
            raise ValueError(f"ray.rollout_gpus_per_worker above 1 must be a whole number of GPUs (a tensor-parallel "
                             f"engine), got {r}")
        if self.placement == "colocate":
            if r != t:
                raise ValueError(f"ray.rollout_gpus_per_worker ({r}) must equal ray.trainer_gpus_per_worker ({t}) with "
                                 "ray.placement=colocate: rollout engine i shares trainer rank i's GPU. Fix: set both "
                                 "the same, or ray.placement=split for separate GPUs per role")
            if self.rollout_workers > self.trainer_workers:
                raise ValueError(f"ray.rollout_workers ({self.rollout_workers}) must be at most ray.trainer_workers "
                                 f"({self.trainer_workers}) with ray.placement=colocate: each engine shares one trainer "
                                 "rank's bundle. Fix: fewer engines, or ray.placement=split")
            if self.rollout_resources:
                raise ValueError("ray.rollout_resources is for ray.placement=split; with colocate the engines share "
                                 "the trainer's bundles. Fix: put them in ray.trainer_resources, or placement=split")

    @property
    def uses_placement_groups(self) -> bool:
        """False for the plain single-node default: actors share the CPUs without placement groups."""
        return (self.placement == "split" or self.trainer_gpus_per_worker > 0 or self.rollout_gpus_per_worker > 0
                or self.strategy != "auto" or self.trainer_cpus_per_worker is not None
                or self.rollout_cpus_per_worker is not None or bool(self.trainer_resources))


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True
    sample_every: int = 1  # print one sample rollout every N GRPO steps (0 = never)


def _section_classes() -> dict[str, type]:
    from veripo.rollout.types import RolloutConfig
    from veripo.stages.preference import PreferenceConfig
    from veripo.train.config import TrainConfig

    return {"train": TrainConfig, "rollout": RolloutConfig, "preference": PreferenceConfig}


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = True
    stages: list[str] = choice(("sft", "grpo"), STAGES)
    iterations: int = 1
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    preference: Any = None  # veripo.stages.preference.PreferenceConfig
    train: Any = None  # veripo.train.TrainConfig
    rollout: Any = None  # veripo.rollout.RolloutConfig
    verify: VerifySection = VerifySection()
    eval: EvalSection = EvalSection()
    prune: PruneConfig = PruneConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    ray: RayConfig = RayConfig()
    logging: LoggingConfig = LoggingConfig()

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages: empty. Fix: e.g. stages=[sft,grpo]")
        check_stages(self.stages)
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        sections = {}
        for key, section_cls in _section_classes().items():
            sections[key] = from_dict(section_cls, data.pop(key, None) or {}, key)
        cfg = from_dict(cls, data)
        return dataclasses.replace(cfg, **sections)
