"""Every recipe in veripo/recipes/ composes through Hydra exactly as ``python -m veripo.run`` does and
validates into `RunConfig` (no model loads, no data file needs to exist); the Qwen2.5-VL recipes carry the
papers' settings; a typo in an override fails naming the key."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from veripo.config import ConfigError, RunConfig
from veripo.run import recipes_dir

RECIPES = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
VL_RECIPES = [r for r in RECIPES if r.startswith("qwen2_5_vl_")]
METHODS = ("veripo", "rrpo", "leanpo", "llava_hound_dpo", "t_grpo", "veripo_gspo", "veripo_dapo")


def compose(name: str, overrides: list[str] | None = None) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(recipes_dir()), version_base=None):
        cfg = hydra_compose(config_name=name, overrides=overrides or [])
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # a "???" left unset is an error
    data.pop("hydra", None)
    return data


@pytest.fixture(scope="module")
def runs() -> dict:
    return {name: RunConfig.from_dict(compose(name)) for name in RECIPES}


def test_the_qwen2_5_vl_recipes_are_all_there():
    assert VL_RECIPES == sorted(f"qwen2_5_vl_{size}_{m}" for size in ("3b", "7b") for m in METHODS)
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue, match="model.path"):  # the shared base is no recipe on its own
        compose("base/qwen2_5_vl")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_and_validates(runs, name):
    run = runs[name]
    assert run.name == name
    assert type(run.train).__name__ == "TrainConfig" and type(run.rollout).__name__ == "RolloutConfig"


@pytest.mark.parametrize("name", VL_RECIPES)
def test_vl_recipes_carry_the_papers_settings(runs, name):
    run = runs[name]
    size = name.split("_")[3]
    assert run.model.path == f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct"
    g, p = run.grpo, run.preference
    assert g.prompts_per_step * g.group_size == 64 and g.group_size == 8  # VerIPO's GRPO batch
    assert g.lr == 1e-6 and g.temperature == 1.0 and g.kl_coef == (0.0 if name.endswith("dapo") else 0.04)
    assert g.kl_kind == "k3"
    assert p.lr == 5e-7 and p.batch_size == 32
    assert p.hparams().beta == (2.0 if p.loss == "leanpo" else 0.1)
    d = run.data
    assert d.use_video and not d.use_caption
    assert d.video.nframes == 16 and d.video.max_frames == 16 and d.video.max_pixels == 128 * 28 * 28
    assert d.train.endswith("/Video-R1-260k.json") and d.test
    assert run.train.dtype == "bfloat16" and run.train.strategy == "fsdp2" and run.rollout.dtype == "bfloat16"
    assert run.rollout.backend == "vllm" and run.verify.judge == "vllm" and run.verify.judge_gpus == 1.0
    assert run.ray.placement == "colocate" and run.ray.trainer_gpus_per_worker == 1.0


@pytest.mark.parametrize("name", VL_RECIPES)
def test_vl_recipes_split_evenly_and_fit_an_8_gpu_node(runs, name):
    from veripo.workers.group import _judge_gpus
    from veripo.workers.placement import check_rollout_devices, plan_placement

    run = runs[name]
    ranks = run.ray.trainer_workers
    assert (run.grpo.prompts_per_step * run.grpo.group_size) % ranks == 0
    assert (2 * run.preference.batch_size) % ranks == 0 and run.train.micro_batch_size % 2 == 0  # pairs stay whole
    check_rollout_devices(run.ray, run.rollout)
    plan = plan_placement(run.ray, [{"CPU": 64.0, "GPU": 8.0}], _judge_gpus(run))
    assert plan.colocated and plan.rollout_first and plan.groups[0].strategy == "STRICT_PACK"


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_each_method_is_what_its_name_says(runs, size):
    r = {m: runs[f"qwen2_5_vl_{size}_{m}"] for m in METHODS}
    for m in ("veripo", "rrpo", "leanpo", "veripo_gspo", "veripo_dapo"):
        assert r[m].stages == ["grpo", "eval", "verify", "preference", "eval"] and r[m].iterations == 4
    assert (r["veripo"].preference.loss, r["rrpo"].preference.loss, r["leanpo"].preference.loss) == \
        ("sigmoid", "rrpo", "leanpo")
    hound = r["llava_hound_dpo"]
    assert hound.stages == ["preference", "eval"] and hound.preference.loss == "sigmoid"
    assert hound.preference.pairs.endswith("llava_hound/sft_dpo_17k.jsonl")
    t = r["t_grpo"]
    assert t.stages == ["grpo", "eval"] and t.grpo.temporal and t.grpo.length_bonus == 0.2
    assert not any(x.grpo.temporal for m, x in r.items() if m != "t_grpo")
    gspo, dapo = r["veripo_gspo"].grpo, r["veripo_dapo"].grpo
    assert (gspo.policy_loss, gspo.clip_low, gspo.clip_high) == ("gspo", 3e-4, 4e-4)
    assert dapo.dynamic_sampling and dapo.overlong_buffer == 256 and (dapo.clip_low, dapo.clip_high) == (0.2, 0.28)
    assert dapo.agg == "token-mean" and dapo.kl_coef == 0.0
    assert all(x.grpo.policy_loss == "vanilla" and not x.grpo.dynamic_sampling
               for m, x in r.items() if m not in ("veripo_gspo", "veripo_dapo"))


@pytest.mark.parametrize("preset", ["gspo", "dapo"])
def test_presets_apply_to_any_recipe_and_overrides_still_win(preset):
    run = RunConfig.from_dict(compose("smollm2_cpu", [f"+preset={preset}", "grpo.clip_high=0.3"]))
    assert run.grpo.clip_high == 0.3
    assert run.grpo.policy_loss == ("gspo" if preset == "gspo" else "vanilla")
    assert run.grpo.dynamic_sampling == (preset == "dapo")


def test_data_paths_follow_veripo_data(monkeypatch):
    monkeypatch.setenv("VERIPO_DATA", "/datasets/video-r1")
    run = RunConfig.from_dict(compose("qwen2_5_vl_3b_veripo"))
    assert run.data.train == "/datasets/video-r1/Video-R1-260k.json"
    assert run.data.test.startswith("/datasets/video-r1/")


def test_an_override_reaches_the_composed_recipe():
    run = RunConfig.from_dict(compose("qwen2_5_vl_7b_rrpo", ["grpo.steps=3", "ray.trainer_workers=8",
                                                            "ray.rollout_workers=8"]))
    assert run.grpo.steps == 3 and run.ray.trainer_workers == 8 and run.preference.loss == "rrpo"


def test_a_typo_override_fails_naming_the_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as exc:
        compose("qwen2_5_vl_7b_veripo", ["grpo.group_sise=8"])
    assert "grpo.group_sise" in str(exc.value)
    with pytest.raises(ConfigError) as exc:  # forced in with '+': the typed config names it and the fix
        RunConfig.from_dict(compose("qwen2_5_vl_7b_veripo", ["+grpo.group_sise=8"]))
    assert "grpo.group_sise: unknown key. Did you mean grpo.group_size?" in str(exc.value)
    with pytest.raises(ConfigError, match="ray.placement: 'spread' is not allowed"):
        RunConfig.from_dict(compose("qwen2_5_vl_3b_veripo", ["ray.placement=spread"]))


def test_cli_prints_the_composed_vl_recipe_without_running():
    proc = subprocess.run([sys.executable, "-m", "veripo.run", "recipe=qwen2_5_vl_7b_veripo", "grpo.steps=3",
                           "--cfg", "job"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "path: Qwen/Qwen2.5-VL-7B-Instruct" in proc.stdout and "steps: 3" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "veripo.run", "recipe=qwen2_5_vl_7b_veripo", "grpo.group_sise=8"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "grpo.group_sise" in bad.stderr and "grpo.group_size" in bad.stderr
