"""A damaged or changed run folder, caught before any model loads: a truncated manifest, an output_dir
that cannot hold a run folder, a config that drifted from the one finished stages were made with, and the
deleted checkpoint of a finished stage (its policy export serves the stages that train nothing)."""

import json
from pathlib import Path

import pytest
import yaml

from veripo.config import RunConfig, to_dict
from veripo.errors import UserError
from veripo.loop import Loop
from veripo.run_dir import Manifest, RunDir, RunDirError, check_config_drift, config_changes


def _cfg(tmp_path: Path, **over) -> RunConfig:
    data = {"name": "r", "output_dir": str(tmp_path), "stages": ["sft", "eval", "grpo", "eval"], **over}
    return RunConfig.from_dict(data)


def _plain(cfg: RunConfig) -> dict:
    return yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@pytest.mark.parametrize("text", ['{"stages": {"iter0/sft": {"done": tr', "", "[1, 2]", '{"stages": 3}'])
def test_a_damaged_manifest_is_a_clear_error_naming_the_file_and_the_fix(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(RunDirError) as e:
        Manifest(path)
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert str(path) in msg and "damaged" in msg and "Fix:" in msg and "name=NEW" in msg


def test_an_output_dir_that_cannot_hold_a_run_folder_fails_before_anything_loads(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(RunDirError, match=r"output_dir=.*a_file.*a file is in the way.*Fix: set output_dir"):
        Loop(_cfg(afile)).open_run_dir()
    with pytest.raises(RunDirError, match=r"output_dir=/proc/.*Fix: set output_dir"):  # not writable, even by root
        Loop(_cfg(Path("/proc/veripo-runs"))).open_run_dir()


def test_config_drift_is_refused_for_finished_work_and_recorded_when_allowed(tmp_path):
    loop = Loop(_cfg(tmp_path))
    loop.open_run_dir()
    loop.manifest.mark("iter0/sft", done=True, steps_done=20)
    loop.manifest.mark("iter0/eval_sft", done=True)
    loop.manifest.mark("iter0/grpo", steps_done=2, checkpoint_step=2)
    recorded = loop.run.config

    # grpo has steps on disk, sft is done: both are finished work; logging shapes nothing
    changed = Loop(_cfg(tmp_path, grpo={"group_size": 8}, sft={"lr": 1e-4}, logging={"progress": False}))
    with pytest.raises(RunDirError) as e:
        changed.open_run_dir()
    msg = str(e.value)
    assert "grpo.group_size: 4 -> 8 (shapes iter0/grpo)" in msg and "sft.lr: 5e-05 -> 0.0001 (shapes iter0/sft)" in msg
    assert "logging.progress" not in msg and "allow_config_changes=[sft.lr,grpo.group_size]" in msg
    assert yaml.safe_load(recorded.read_text())["grpo"]["group_size"] == 4  # config.yaml untouched

    # a seed change shapes every stage with work
    with pytest.raises(RunDirError, match=r"seed: 0 -> 1 \(shapes iter0/sft, iter0/eval_sft, iter0/grpo\)"):
        Loop(_cfg(tmp_path, seed=1)).open_run_dir()

    # allowed by key and by section: accepted, printed, recorded in the manifest and config.yaml
    ok = Loop(_cfg(tmp_path, grpo={"group_size": 8}, sft={"lr": 1e-4}, allow_config_changes=["grpo.group_size", "sft"]))
    ok.open_run_dir()
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    change = m["config_changes"][-1]
    assert change["changes"]["grpo.group_size"] == {"old": 4, "new": 8} and set(change["allowed"]) == {
        "grpo.group_size", "sft.lr"}
    assert set(change["changes"]) == {"grpo.group_size", "sft.lr"}  # the allow list itself is no change
    assert yaml.safe_load(recorded.read_text())["grpo"]["group_size"] == 8


def test_config_drift_ignores_stages_without_work(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.mark("iter0/sft", done=True)
    manifest.mark("iter0/grpo", steps_done=0)  # started, no step recorded: nothing made with grpo.* yet
    old = _plain(_cfg(tmp_path))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    new = _plain(_cfg(tmp_path, grpo={"steps": 30}, preference={"lr": 1e-7}))
    assert set(check_config_drift(tmp_path / "config.yaml", new, manifest, [])) == {"grpo.steps", "preference.lr"}
    assert manifest.data["config_changes"][-1]["allowed"] == []
    # a dict-valued key: one entry changed is named exactly
    assert config_changes({"grpo": {"reward_weights": {"accuracy": 1.0, "format": 0.5}}},
                          {"grpo": {"reward_weights": {"accuracy": 1.0, "format": 0.0}}}) == {
        "grpo.reward_weights.format": (0.5, 0.0)}
    assert config_changes({"rollout": {"vllm_kwargs": {}}}, {"rollout": {"vllm_kwargs": {"max_model_len": 64}}}) == {
        "rollout.vllm_kwargs.max_model_len": (None, 64)}
    assert config_changes({"grpo": {"steps": 3}}, {"grpo": {"steps": 3, "new_key": 1}}) == {}  # a newer veripo's key


def test_a_damaged_recorded_config_is_a_clear_error(tmp_path):
    loop = Loop(_cfg(tmp_path))
    loop.open_run_dir()
    loop.run.config.write_text("name: r\ngrpo: {steps: [1,\n")
    with pytest.raises(RunDirError, match=r"config.yaml: the run's recorded config is damaged.*Fix: restore it, or delete it"):
        Loop(_cfg(tmp_path)).open_run_dir()


def _finished_sft(tmp_path: Path, export: bool) -> Loop:
    loop = Loop(_cfg(tmp_path))
    loop.open_run_dir()
    loop.manifest.mark("iter0/sft", done=True, steps_done=20, checkpoint_step=20)
    sft = RunDir(tmp_path / "r").stage(0, "sft")
    (sft / "checkpoint").mkdir(parents=True)  # the marker deleted with the rest: an incomplete folder
    if export:
        (sft / "policy").mkdir()
        (sft / "policy" / "config.json").write_text("{}")
    return loop


def test_a_deleted_checkpoint_of_a_finished_stage(tmp_path, capsys):
    # eval_sft next, grpo after it: grpo must train on from the checkpoint
    loop = _finished_sft(tmp_path, export=True)
    with pytest.raises(RunDirError, match=r"iter0/sft/checkpoint: the checkpoint of the finished stage iter0/sft is "
                                          r"missing or incomplete, and iter0/grpo must continue training from it"):
        loop.policy_source()
    # only eval_sft left (stages=[sft, eval]): the export serves, and the run says so
    loop = Loop(_cfg(tmp_path, stages=["sft", "eval"]))
    loop.open_run_dir()
    assert loop.policy_source() == str(tmp_path / "r" / "iter0" / "sft" / "policy")
    assert loop._served == tmp_path / "r" / "iter0" / "sft" / "checkpoint"
    assert "train nothing, so the workers load its policy export" in capsys.readouterr().out
    assert loop.manifest.data["recovered"][-1]["stage"] == "iter0/sft"
    # no export either: a clear error
    (tmp_path / "r" / "iter0" / "sft" / "policy" / "config.json").unlink()
    with pytest.raises(RunDirError, match=r"its export .* is missing too"):
        loop = Loop(_cfg(tmp_path, stages=["sft", "eval"]))
        loop.open_run_dir()
        loop.policy_source()


def test_a_deleted_checkpoint_is_not_needed_by_a_stage_that_resumes_from_its_own(tmp_path):
    loop = _finished_sft(tmp_path, export=False)
    grpo = RunDir(tmp_path / "r").stage(0, "grpo") / "checkpoint"
    grpo.mkdir(parents=True)
    (grpo / "veripo_checkpoint.json").write_text(json.dumps({"step": 22, "stage": "iter0/grpo", "stage_step": 2}))
    loop.manifest.mark("iter0/eval_sft", done=True)
    loop.manifest.mark("iter0/grpo", steps_done=2, checkpoint_step=2)
    assert loop.policy_source() is None
    assert loop._served == tmp_path / "r" / "iter0" / "sft" / "checkpoint"  # restore_policy skips it
