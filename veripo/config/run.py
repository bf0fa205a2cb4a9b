"""The run's config: `RunConfig` and its sections, each a typed frozen dataclass.

A recipe (``veripo/recipes/*.yaml``) is composed by Hydra, turned into a plain dict and validated into
`RunConfig` by `RunConfig.from_dict` (the one converter, `veripo.config.convert.from_dict`) before any
model loads. Sections owned by a subsystem live beside this file (``train``: `TrainConfig`, ``rollout``:
`RolloutConfig`, ``preference``: `PreferenceConfig`, ``verify.config``: `VerifierConfig`), all in
`veripo.config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from veripo.config.convert import ConfigError, choice, from_dict, is_int, is_num, need, registry_choices, registry_names
from veripo.config.preference import PreferenceConfig
from veripo.config.rollout import RolloutConfig
from veripo.config.train import TrainConfig
from veripo.config.verifier import VerifierConfig
from veripo.config.video import VideoConfig

STAGES = ("sft", "grpo", "verify", "preference", "eval")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an environment variable's name (verify.api_key_env)


def _positive(name: str, value: Any) -> None:
    need(is_num(value) and value > 0, name, "must be a finite number > 0", value)


def _int_at_least(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    rule = f"must be an integer >= {low}" + (" or null" if optional else "")
    need(is_int(value) and value >= low, name, rule, value)


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

    def __post_init__(self):
        need(isinstance(self.path, str) and self.path.strip() != "", "path",
             "must name a model (a Hugging Face id or a local folder)", self.path)


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic video-QA set, generated into the run folder when data.train is null."""

    n: int = 64
    seed: int = 0
    difficulty: float = 0.3
    frames: int = 8
    test_fraction: float = 0.25

    def __post_init__(self):
        _int_at_least("n", self.n, 2)
        _int_at_least("seed", self.seed, 0)
        need(is_num(self.difficulty) and 0.0 <= self.difficulty <= 1.0, "difficulty",
             "must be in [0, 1] (0 easy, 1 hard)", self.difficulty)
        need(is_int(self.frames) and 4 <= self.frames <= 256, "frames", "must be an integer in [4, 256]", self.frames)
        need(is_num(self.test_fraction) and 0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)",
             self.test_fraction)


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
    video: VideoConfig = VideoConfig()

    def __post_init__(self):
        if not (self.use_caption or self.use_video):
            raise ValueError("data: set use_caption or use_video (or both), else the model sees no video")
        if self.test is not None and self.train is None:
            raise ValueError("data.test is set but data.train is null. Fix: set data.train too, or neither")
        for name in ("train", "test"):
            v = getattr(self, name)
            need(v is None or v.strip() != "", name, "must be a file path or null", v)
        _int_at_least("max_prompt_tokens", self.max_prompt_tokens, 1)


@dataclass(frozen=True)
class SFTConfig:
    """Cold start: teach the <think>/<answer> format on reference answers before GRPO."""

    steps: int = 20
    batch_size: int = 8
    lr: float = 5e-5
    warmup_steps: int = 2

    def __post_init__(self):
        _int_at_least("steps", self.steps, 0)
        _int_at_least("batch_size", self.batch_size, 1)
        _positive("lr", self.lr)
        _int_at_least("warmup_steps", self.warmup_steps, 0)


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
    kl_kind: str = choice("k3", registry_choices("veripo.algos", "KL_ESTIMATORS"))
    agg: str = choice("token-mean", registry_choices("veripo.algos", "AGG_MODES"))
    norm_adv_by_std: bool = True
    reward_weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    length_bonus: float = 0.0  # Video-R1's +w for correct answers with l_min..l_max reasoning tokens
    length_min: int = 320
    length_max: int = 512
    temporal: bool = False  # T-GRPO (video prompts only)
    # docs/algorithms.md §6: estimator and loss by registry name ("grpo" with norm_adv_by_std=false is drgrpo)
    adv_estimator: str = choice("grpo", registry_choices("veripo.algos", "ADV_ESTIMATORS"))
    policy_loss: str = choice("vanilla", registry_choices("veripo.algos", "POLICY_LOSSES"))
    # rollout/trainer mismatch correction: null (off: no extra forward), tis, mis or monitor (metrics only)
    rollout_correction: str | None = choice(None, registry_choices("veripo.algos", "ROLLOUT_CORRECTIONS"))
    rollout_correction_level: str = choice("token", ("token", "sequence"))
    rollout_correction_c: float = 2.0
    # DAPO: drop zero-spread groups and sample more prompts, up to max_rounds rounds per step
    dynamic_sampling: bool = False
    max_rounds: int = 3
    overlong_buffer: int = 0  # DAPO's soft overlong penalty over the last N of max_tokens (0: off)
    overlong_penalty: float = 1.0  # the penalty at (and beyond) max_tokens

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (group-relative advantages), got {self.group_size}")
        if self.steps < 0 or self.prompts_per_step < 1 or self.max_tokens < 1:
            raise ValueError("grpo: steps >= 0, prompts_per_step >= 1 and max_tokens >= 1 are required")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"grpo.dual_clip must be > 1 (or null), got {self.dual_clip}")
        if not (0 < self.clip_low < (float("inf") if self.policy_loss == "cispo" else 1) and self.clip_high > 0):
            raise ValueError(f"grpo: need 0 < clip_low < 1 and clip_high > 0, got {self.clip_low}, {self.clip_high}"
                             " (with policy_loss=cispo, clip_low >= 1 removes the lower bound)")
        if self.temperature <= 0:
            raise ValueError(f"grpo.temperature must be > 0, got {self.temperature}")
        # ranges of every other field (the checks above keep their messages)
        need(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        _positive("lr", self.lr)
        if self.lr_after_first is not None:
            _positive("lr_after_first", self.lr_after_first)
        need(is_num(self.kl_coef) and self.kl_coef >= 0, "kl_coef", "must be >= 0 (0: no KL term)", self.kl_coef)
        need(is_num(self.length_bonus) and self.length_bonus >= 0, "length_bonus", "must be >= 0 (0: off)",
             self.length_bonus)
        _int_at_least("length_min", self.length_min, 0)
        _int_at_least("length_max", self.length_max, 1)
        need(self.length_min <= self.length_max, "length_min",
             f"must be <= length_max ({self.length_max}): the bonus window is length_min..length_max tokens",
             self.length_min)
        need(len(self.reward_weights) > 0, "reward_weights", "must weight at least one reward (e.g. {accuracy: 1.0})",
             self.reward_weights)
        known = registry_names("veripo.rewards", "REWARDS")
        for name, w in self.reward_weights.items():
            need(name in known, f"reward_weights.{name}", f"is not a registered reward (known: {', '.join(known)})",
                 name)
            need(is_num(w), f"reward_weights.{name}", "must be a finite number", w)
        if not self.rollout_correction_c > 1.0:
            raise ValueError(f"grpo.rollout_correction_c must be > 1 (ratios outside [1/C, C] are corrected), "
                             f"got {self.rollout_correction_c}. Fix: e.g. grpo.rollout_correction_c=2.0")
        if self.max_rounds < 1:
            raise ValueError(f"grpo.max_rounds must be >= 1 (rounds of dynamic sampling per step), got {self.max_rounds}. "
                             "Fix: e.g. grpo.max_rounds=3")
        if not 0 <= self.overlong_buffer <= self.max_tokens:
            raise ValueError(f"grpo.overlong_buffer must be in [0, grpo.max_tokens={self.max_tokens}], "
                             f"got {self.overlong_buffer}. Fix: e.g. grpo.overlong_buffer={self.max_tokens // 4}")
        if self.overlong_penalty < 0:
            raise ValueError(f"grpo.overlong_penalty must be >= 0, got {self.overlong_penalty}")


@dataclass(frozen=True)
class VerifyConfig:
    """The verify stage: the iteration's GRPO rollouts -> rule checks + judge -> contrastive pairs.

    `mode` ``consistency`` is VerIPO's rollout-aware verifier (penalty / consistency / reflection pairs,
    docs/algorithms.md section 3); ``caption`` is the LLaVA-Hound caption-proxy judge (best vs worst).
    The judge runs on its own engine (a Ray actor holding `judge_model` on vLLM, `judge_gpus` GPUs)
    unless `judge` is ``openai`` (an endpoint at `base_url`) or ``none`` (rule checks only).
    `config` is the verifier's own section (`VerifierConfig`: thresholds and pair rules), e.g.
    ``verify.config.max_pairs_per_prompt=3``.
    """

    mode: str = choice("consistency", ("consistency", "caption"))
    judge: str = choice("vllm", registry_choices("verifier.judge", "JUDGES"))
    judge_model: str = "smollm2-135m-instruct"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    judge_max_tokens: int = 32
    judge_gpus: float = 0.0
    judge_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments for the judge
    last_steps: int | None = None  # null: every GRPO step of the iteration; N: only the last N steps
    config: VerifierConfig = VerifierConfig()

    def __post_init__(self):
        if self.judge == "openai" and not self.base_url:
            raise ValueError("verify.base_url is required with verify.judge=openai (e.g. http://127.0.0.1:8000/v1)")
        if self.mode == "caption" and self.judge == "none":
            raise ValueError("verify.mode=caption needs a judge: set verify.judge=vllm or openai")
        if self.last_steps is not None and self.last_steps < 1:
            raise ValueError(f"verify.last_steps must be >= 1 or null, got {self.last_steps}")
        need(self.judge_model.strip() != "", "judge_model", "must name the judge's model", self.judge_model)
        if self.base_url is not None:
            need(re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.base_url) is not None, "base_url",
                 "must be an http(s) URL such as http://127.0.0.1:8000/v1", self.base_url)
        if not ENV_NAME.fullmatch(self.api_key_env):
            # the value may be a pasted key: never echo it (and it never reaches config.yaml)
            raise ConfigError("api_key_env must be the NAME of an environment variable that holds the key "
                              f"(letters, digits, _; e.g. OPENAI_API_KEY), not the key itself; the value given "
                              f"({len(self.api_key_env)} characters) is not shown. Fix: export MY_KEY=... and set "
                              "verify.api_key_env=MY_KEY", "api_key_env")
        _int_at_least("judge_max_tokens", self.judge_max_tokens, 1)
        need(is_num(self.judge_gpus) and self.judge_gpus >= 0, "judge_gpus", "must be >= 0", self.judge_gpus)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation (`veripo.eval`) on the test split: greedy answers, accuracy per problem type,
    MRA, format rate and the verifier's inconsistency rate (when `judge` is true and verify has a judge)."""

    max_tokens: int = 128
    temperature: float = 0.0
    limit: int | None = None  # null: the whole test split
    judge: bool = True

    def __post_init__(self):
        _int_at_least("max_tokens", self.max_tokens, 1)
        _int_at_least("limit", self.limit, 1, optional=True)
        need(is_num(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0 (0: greedy)",
             self.temperature)


@dataclass(frozen=True)
class PruneConfig:
    """VerIPO easy-sample pruning between iterations (docs/algorithms.md section 1): a prompt whose G rollouts
    (its latest group in the iteration) were all accurate is dropped from the next GRPO round with
    probability `p`."""

    enabled: bool = True
    p: float = 0.8
    accuracy_threshold: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"prune.p must be in [0, 1], got {self.p}")
        need(is_num(self.accuracy_threshold) and 0 < self.accuracy_threshold <= 1, "accuracy_threshold",
             "must be in (0, 1]", self.accuracy_threshold)


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
        _int_at_least("num_cpus", self.num_cpus, 1, optional=True)
        if self.address is not None:
            need(self.address.strip() != "", "address", "must be a Ray address (auto, HOST:PORT) or null", self.address)
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

    def __post_init__(self):
        _int_at_least("sample_every", self.sample_every, 0)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    resume: bool = True
    # keys (or sections) whose change a resumed run accepts although finished stages used the old value
    # (veripo.run_dir.check_config_drift); each accepted change is recorded in the manifest
    allow_config_changes: list[str] = field(default_factory=list)
    stages: list[str] = choice(("sft", "grpo"), STAGES)
    iterations: int = 1
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # its checks read the loss registry
    train: TrainConfig = TrainConfig()
    rollout: RolloutConfig = RolloutConfig()
    verify: VerifyConfig = VerifyConfig()
    eval: EvalConfig = EvalConfig()
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
        need(self.name.strip() != "" and "/" not in self.name and self.name not in (".", ".."), "name",
             "must be a plain folder name (no /)", self.name)
        need(self.output_dir.strip() != "", "output_dir", "must be a folder path", self.output_dir)
        _int_at_least("seed", self.seed, 0)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Validate a composed recipe (plain data); a `ConfigError` names the key and the fix. A section
        given as null takes its defaults."""
        return from_dict(cls, {k: ({} if v is None and k in _SECTIONS else v) for k, v in data.items()})


_SECTIONS = ("model", "data", "sft", "grpo", "preference", "train", "rollout", "verify", "eval", "prune",
             "checkpoint", "ray", "logging")
