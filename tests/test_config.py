"""Recipes compose and validate; bad keys and values fail fast, naming the key and the allowed values."""

import subprocess
import sys
import resource

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
    # the child's CPU seconds, not wall time: on a shared machine wall time measures the neighbours
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "veripo.run", "grpo.group_sise=8"], capture_output=True, text=True,
                          timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode != 0
    assert "grpo.group_sise: unknown key" in proc.stderr and "Did you mean grpo.group_size" in proc.stderr
    assert cpu < 2.0, f"took {cpu:.2f} CPU s"


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


# ---- ranges and registered names of every section (issue 16, item 2) ----

@pytest.mark.parametrize("patch, key, rule", [
    ({"grpo": {"lr": -1}}, "grpo.lr", "must be a finite number > 0"),
    ({"grpo": {"lr": float("nan")}}, "grpo.lr", "expected a finite number"),
    ({"grpo": {"top_p": 5}}, "grpo.top_p", "must be in (0, 1]"),
    ({"grpo": {"top_p": 0}}, "grpo.top_p", "must be in (0, 1]"),
    ({"grpo": {"length_min": 600, "length_max": 512}}, "grpo.length_min", "must be <= length_max (512)"),
    ({"grpo": {"reward_weights": {"accuracy": 1.0, "acurracy": 0.5}}}, "grpo.reward_weights.acurracy",
     "is not a registered reward (known: accuracy, "),
    ({"grpo": {"reward_weights": {}}}, "grpo.reward_weights", "must weight at least one reward"),
    ({"grpo": {"kl_coef": -0.1}}, "grpo.kl_coef", "must be >= 0"),
    ({"grpo": {"lr_after_first": 0}}, "grpo.lr_after_first", "must be a finite number > 0"),
    ({"sft": {"warmup_steps": -1}}, "sft.warmup_steps", "must be an integer >= 0"),
    ({"sft": {"lr": 0}}, "sft.lr", "must be a finite number > 0"),
    ({"eval": {"temperature": -0.5}}, "eval.temperature", "must be >= 0"),
    ({"verify": {"judge_max_tokens": 0}}, "verify.judge_max_tokens", "must be an integer >= 1"),
    ({"verify": {"judge_gpus": -1}}, "verify.judge_gpus", "must be >= 0"),
    ({"verify": {"base_url": "localhost:8000"}}, "verify.base_url", "must be an http(s) URL"),
    ({"data": {"max_prompt_tokens": 0}}, "data.max_prompt_tokens", "must be an integer >= 1"),
    ({"data": {"synth": {"difficulty": 2}}}, "data.synth.difficulty", "must be in [0, 1]"),
    ({"data": {"synth": {"frames": 2}}}, "data.synth.frames", "must be an integer in [4, 256]"),
    ({"prune": {"accuracy_threshold": 0}}, "prune.accuracy_threshold", "must be in (0, 1]"),
    ({"ray": {"num_cpus": 0}}, "ray.num_cpus", "must be an integer >= 1 or null"),
    ({"logging": {"sample_every": -1}}, "logging.sample_every", "must be an integer >= 0"),
    ({"model": {"path": " "}}, "model.path", "must name a model"),
    ({"name": "a/b"}, "name", "must be a plain folder name"),
    ({"seed": -1}, "seed", "must be an integer >= 0"),
    ({"preference": {"loss": "sigmoid", "label_smoothing": 0.1}}, "preference.label_smoothing",
     "is used by robust, cdpo, leanpo only"),
])
def test_values_out_of_range_fail_naming_the_key(patch, key, rule):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(patch)
    assert exc.value.key == key and key in str(exc.value) and rule in str(exc.value), str(exc.value)


def test_boundary_values_are_accepted():
    cfg = RunConfig.from_dict({"grpo": {"top_p": 1.0, "length_min": 512, "length_max": 512, "kl_coef": 0.0,
                                        "reward_weights": {"accuracy": 1.0, "format": -0.5}},
                               "eval": {"temperature": 0.0}, "data": {"synth": {"difficulty": 0.0, "frames": 4}},
                               "verify": {"judge": "openai", "base_url": "https://judge.example/v1",
                                          "api_key_env": "_MY_KEY2"}})
    assert cfg.grpo.length_min == cfg.grpo.length_max == 512 and cfg.verify.api_key_env == "_MY_KEY2"


@pytest.mark.parametrize("value", ["sk-proj-abc123XYZ", "Bearer abc", "my key", "1KEY"])
def test_api_key_env_must_be_a_variable_name_and_is_never_echoed(value):
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"verify": {"api_key_env": value}})
    assert exc.value.key == "verify.api_key_env" and value not in str(exc.value)
    assert "not the key itself" in str(exc.value)


# ---- config errors import no torch (issue 16, item 3) ----

def _registry_fields():
    """(dotted key, registry) of every config field whose allowed values come from a registry."""
    import dataclasses

    out, todo = [], [("", RunConfig)]
    while todo:
        prefix, cls = todo.pop()
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            reg = getattr(f.metadata.get("choices"), "registry", None)
            if reg:
                out.append((key, reg))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                todo.append((key + ".", type(default)))
    return sorted(out)


def test_declared_registry_names_match_the_registries():
    """veripo/config/names.py declares the names of torch-side registries; they must be the live ones. A
    registry or name added in veripo.algos without declaring it there fails here."""
    import importlib

    from veripo.config.names import DECLARED, SMOOTHED_PREFERENCE_LOSSES

    for dotted, names in DECLARED.items():
        module, attr = dotted.rsplit(".", 1)
        assert sorted(getattr(importlib.import_module(module), attr).names()) == sorted(names), dotted
    from veripo.algos import PREFERENCE_LOSSES

    assert sorted(SMOOTHED_PREFERENCE_LOSSES) == sorted(n for n in PREFERENCE_LOSSES.names()
                                                       if PREFERENCE_LOSSES.get(n).uses_label_smoothing)
    fields = _registry_fields()
    assert ("grpo.kl_kind", "veripo.algos.KL_ESTIMATORS") in fields
    assert ("verify.judge", "verifier.judge.JUDGES") in fields
    for key, reg in fields:  # a field choosing from a torch-side registry must have its names declared
        assert reg in DECLARED or not reg.startswith("veripo.algos."), f"{key}: declare {reg} in veripo/config/names.py"


NO_TORCH = """
import json, sys
from veripo.config import ConfigError, RunConfig, allowed_values
from veripo.config.convert import registry_names
fields = FIELDS
errors = []
for key, reg in fields:
    module, attr = reg.rsplit(".", 1)
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    for value in registry_names(module, attr):  # every allowed value validates
        data = {name: value}
        for part in reversed(section.split(".") if section else []):
            data = {part: data}
        if key == "verify.judge" and value == "openai":
            data["verify"]["base_url"] = "http://127.0.0.1:1/v1"
        RunConfig.from_dict(data)
    data = {name: "no-such-name"}
    for part in reversed(section.split(".") if section else []):
        data = {part: data}
    try:
        RunConfig.from_dict(data)
    except ConfigError as e:
        errors.append(e.key)
RunConfig.from_dict({"preference": {"loss": "leanpo", "label_smoothing": 0.2}})
print(json.dumps({"torch": "torch" in sys.modules, "errors": errors}))
"""


def test_config_errors_and_registry_fields_import_no_torch():
    from test_imports import run_python  # a fresh interpreter without the shim conftest installed

    fields = _registry_fields()
    got = run_python(NO_TORCH.replace("FIELDS", repr(fields)))
    assert got == {"torch": False, "errors": [k for k, _ in fields]}


def test_bad_registry_value_fails_fast_on_the_command_line(tmp_path):
    """Timed in CPU seconds of the child (wall time on a shared 2-core machine measures the neighbours):
    importing torch alone costs more than the 2 s allowed."""

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "veripo.run", "grpo.kl_kind=k9", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2 and "grpo.kl_kind: 'k9' is not allowed. Allowed values: abs, k1, k2, k3" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert cpu < 2.0, f"took {cpu:.2f} CPU s"
