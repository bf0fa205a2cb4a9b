"""Recipes compose and validate; bad keys and values fail fast, naming the key and the allowed values."""

import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from veripo.config import ConfigError, RunConfig
from veripo.run import recipes_dir

RECIPES = sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_dict(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(recipes_dir() / f"{name}.yaml"), resolve=True)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_and_validates(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(recipes_dir()), version_base=None):
        cfg = compose(config_name=name)
    run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert run.name == name
    assert type(run.train).__name__ == "TrainConfig" and type(run.rollout).__name__ == "RolloutConfig"


def test_bad_recipe_key_fails_fast_naming_the_key():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "veripo.run", "grpo.group_sise=8"], capture_output=True, text=True,
                          timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "grpo.group_sise: unknown key" in proc.stderr and "Did you mean grpo.group_size" in proc.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


@pytest.mark.parametrize("patch, message", [
    ({"grpo": {"agg": "mean"}}, "grpo.agg: 'mean' is not allowed. Allowed values: seq-mean-token-mean, "),
    ({"grpo": {"group_size": 1}}, "grpo.group_size must be >= 2"),
    ({"grpo": {"steps": "ten"}}, "grpo.steps: expected an integer"),
    ({"stages": ["sft", "grpo", "dpo"]}, "stages: 'dpo' is not allowed. Allowed values: sft, grpo"),
    ({"preference": {"loss": "kto"}}, "preference.loss"),
    ({"data": {"use_caption": False, "use_video": False}}, "set use_caption or use_video"),
    ({"grpo": {"dual_clip": 0.5}}, "grpo.dual_clip must be > 1"),
    ({"model": {"pathh": "x"}}, "model.pathh: unknown key. Did you mean model.path?"),
])
def test_bad_values_name_key_and_allowed_values(patch, message):
    data = recipe_dict("smollm2_cpu")
    for section, value in patch.items():
        if isinstance(value, dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(data)
    assert message in str(exc.value)


def test_unknown_recipe_lists_known_ones():
    proc = subprocess.run([sys.executable, "-m", "veripo.run", "recipe=nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Known recipes: " in proc.stderr and "smollm2_cpu" in proc.stderr
