"""Config faults: values that cannot be right must fail at once (config_error: timed, target < 2 s), naming
the key, with no traceback, before any run folder is written."""

from __future__ import annotations

from pathlib import Path

from faults import Outcome, case, classify, run_cli


def run_bad(tmp: Path, overrides: list[str], names: list[str], *, secret: str | None = None) -> Outcome:
    res = run_cli(["-m", "veripo.run", *overrides, f"output_dir={tmp}/run"], tmp)
    out = classify(res, names)
    if out.result == "clear" and (tmp / "run").exists():
        out = Outcome("unclear", f"failed, but wrote {tmp}/run first: {out.detail}", res.seconds)
    if secret is not None and secret in res.text:
        out = Outcome("unclear", "the message echoes the pasted key", res.seconds)
    if secret is not None and any(secret in p.read_text(errors="replace") for p in tmp.rglob("*.yaml")):
        out = Outcome("silent", "the pasted key was written to a file", res.seconds)
    return out


@case("config", "unknown key", config_error=True)
def unknown_key(tmp: Path) -> Outcome:
    return classify(run_cli(["-m", "veripo.run", "grpo.stepz=3", f"output_dir={tmp}/run"], tmp), ["grpo.stepz"])


# one bad value per kind of check: a range, a cross-field rule, a registered name, a type
BAD_VALUES = [
    ("negative lr", ["grpo.lr=-1"], "grpo.lr"),
    ("nan lr", ["grpo.lr=nan"], "grpo.lr"),
    ("top_p above 1", ["grpo.top_p=5"], "grpo.top_p"),
    ("length_min above length_max", ["grpo.length_min=600", "grpo.length_max=512"], "grpo.length_min"),
    ("unregistered reward weight", ["+grpo.reward_weights.acurracy=0.5"], "grpo.reward_weights.acurracy"),
    ("negative kl_coef", ["grpo.kl_coef=-0.1"], "grpo.kl_coef"),
    ("unknown kl_kind (registry)", ["grpo.kl_kind=k9"], "grpo.kl_kind"),
    ("unknown agg (registry)", ["grpo.agg=mean"], "grpo.agg"),
    ("unknown preference loss (registry)", ["preference.loss=kto"], "preference.loss"),
    ("label smoothing on a loss without it", ["preference.label_smoothing=0.1"], "preference.label_smoothing"),
    ("unknown judge (registry)", ["verify.judge=gpt"], "verify.judge"),
    ("base_url without scheme", ["verify.judge=openai", "verify.base_url=localhost:8000"], "verify.base_url"),
    ("negative eval temperature", ["eval.temperature=-1"], "eval.temperature"),
    ("zero sft lr", ["sft.lr=0"], "sft.lr"),
    ("negative sft warmup", ["sft.warmup_steps=-1"], "sft.warmup_steps"),
    ("synth difficulty above 1", ["data.synth.difficulty=2"], "data.synth.difficulty"),
    ("zero max_prompt_tokens", ["data.max_prompt_tokens=0"], "data.max_prompt_tokens"),
    ("negative seed", ["seed=-1"], "seed"),
    ("steps not a number", ["grpo.steps=ten"], "grpo.steps"),
    ("preference.lr negative", ["preference.lr=-1"], "preference.lr"),
    ("train.seed negative", ["train.seed=-1"], "train"),
    ("rollout gpu_memory_utilization above 1", ["rollout.gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
]


def _bad_value(overrides: list[str], key: str):
    def run(tmp: Path) -> Outcome:
        return run_bad(tmp, overrides, [key])
    return run


for _name, _overrides, _key in BAD_VALUES:
    case("config", _name, config_error=True)(_bad_value(_overrides, _key))


@case("config", "api_key_env holding a pasted key", config_error=True)
def pasted_key(tmp: Path) -> Outcome:
    key = "sk-proj-Zq81fakeKEYcanary0042"
    return run_bad(tmp, ["verify.judge=openai", "verify.base_url=http://127.0.0.1:1/v1",
                         f"verify.api_key_env={key}"], ["verify.api_key_env"], secret=key)


@case("config", "broken recipe YAML", config_error=True)
def broken_yaml(tmp: Path) -> Outcome:
    recipes = tmp / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("name: mine\ngrpo:\n  steps: 3\n   lr: 1e-5\n")
    res = run_cli(["-m", "veripo.run", "--recipe-dir", str(recipes), "recipe=mine", f"output_dir={tmp}/run"], tmp)
    return classify(res, ["mine.yaml:4:"])


@case("config", "recipe that is a list", config_error=True)
def list_recipe(tmp: Path) -> Outcome:
    recipes = tmp / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("- grpo\n- sft\n")
    res = run_cli(["-m", "veripo.run", "--recipe-dir", str(recipes), "recipe=mine", f"output_dir={tmp}/run"], tmp)
    return classify(res, ["mine.yaml"])


@case("config", "override with broken syntax", config_error=True)
def broken_override(tmp: Path) -> Outcome:
    return classify(run_cli(["-m", "veripo.run", "grpo.lr=[1,", f"output_dir={tmp}/run"], tmp), ["grpo.lr=[1,"])


@case("config", "interpolation that does not resolve", config_error=True)
def bad_interpolation(tmp: Path) -> Outcome:
    res = run_cli(["-m", "veripo.run", "grpo.lr=${oc.env:VERIPO_NO_SUCH_VAR}", f"output_dir={tmp}/run"], tmp)
    return classify(res, ["grpo.lr", "VERIPO_NO_SUCH_VAR"])
