"""What the loop and the stages share, without models: the GRPO prompt pool (VerIPO's easy-prompt
pruning between iterations) and `Progress` (step checkpoints, manifest records, resume)."""

import json
from pathlib import Path

from veripo.config import CheckpointConfig, LoggingConfig, PruneConfig, RunConfig
from veripo.data import Record
from veripo.data.rollouts import Rollout, append_rollouts
from veripo.report.metrics import MetricsLogger
from veripo.run_dir import Manifest, RunDir
from veripo.stages.base import Progress, StageContext
from veripo.stages.common import RunRecords
from veripo.stages.grpo import prompt_pool


def _record(pid: str) -> Record:
    return Record(problem_id=pid, problem="How many?", data_type="text", problem_type="numerical", solution="3")


def _group(pid: str, step: int, accs: list[float], iteration: int = 0) -> list[Rollout]:
    return [Rollout(rollout_id=f"it{iteration}-s{step}-{pid}-{k}", problem_id=pid, response="x", step=step,
                    iteration=iteration, sample_index=k, reward_components={"accuracy": a})
            for k, a in enumerate(accs)]


def _ctx(tmp_path: Path, iteration: int, prune: PruneConfig, ids: list[str]) -> StageContext:
    cfg = RunConfig(prune=prune, logging=LoggingConfig(progress=False, tensorboard=False))
    return StageContext(cfg=cfg, run=RunDir(tmp_path), workers=None,
                        data=RunRecords(train=[_record(p) for p in ids], test=[]), tokenizer=None, prompts=None,
                        metrics=None, model_path=tmp_path, iteration=iteration)


def test_prompt_pool_drops_prompts_whose_latest_group_was_all_right(tmp_path):
    run = RunDir(tmp_path)
    append_rollouts(run.rollouts(0), _group("easy", 0, [1.0, 1.0]) + _group("hard", 0, [1.0, 0.0])
                    + _group("was_easy", 0, [1.0, 1.0]) + _group("was_easy", 1, [0.0, 1.0]))
    ids = ["easy", "hard", "was_easy", "unseen"]
    assert [r.problem_id for r in prompt_pool(_ctx(tmp_path, 0, PruneConfig(p=1.0), ids))] == ids  # iteration 0
    pool = prompt_pool(_ctx(tmp_path, 1, PruneConfig(p=1.0), ids))
    assert [r.problem_id for r in pool] == ["hard", "was_easy", "unseen"]  # only the latest group counts
    assert len(prompt_pool(_ctx(tmp_path, 1, PruneConfig(enabled=False), ids))) == 4
    assert len(prompt_pool(_ctx(tmp_path, 1, PruneConfig(p=0.0), ids))) == 4
    # seeded per iteration: the same pool on every call (a resumed run prunes the same prompts)
    many = [f"p{i}" for i in range(40)]
    append_rollouts(run.rollouts(0), [r for p in many for r in _group(p, 2, [1.0, 1.0])])
    first = [r.problem_id for r in prompt_pool(_ctx(tmp_path, 1, PruneConfig(p=0.5), many))]
    assert first == [r.problem_id for r in prompt_pool(_ctx(tmp_path, 1, PruneConfig(p=0.5), many))]
    assert 0 < len(first) < 40


def test_prompt_pool_keeps_the_pool_when_pruning_would_empty_it(tmp_path):
    append_rollouts(RunDir(tmp_path).rollouts(0), _group("a", 0, [1.0, 1.0]))
    assert [r.problem_id for r in prompt_pool(_ctx(tmp_path, 1, PruneConfig(p=1.0), ["a"]))] == ["a"]


class FakeTrainer:
    """Records what the bookkeeping asks of the trainer; a checkpoint is a folder with the marker file."""

    def __init__(self):
        self.calls = []

    def set_lr(self, lr, warmup, total):
        self.calls.append(("set_lr", lr, warmup, total))

    def save_checkpoint(self, path, meta=None):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "veripo_checkpoint.json").write_text(json.dumps({"step": 0, **(meta or {})}))
        self.calls.append(("save", Path(path).name))

    def load_checkpoint(self, path):
        self.calls.append(("load", Path(path).name))

    def export_hf(self, path):
        self.calls.append(("export", Path(path).name))

    def weight_buckets_ref(self, mb):
        return "ref"


class FakeRollout:
    def __init__(self):
        self.pushed = 0

    def update_weights(self, ref):
        self.pushed += 1
        return {}


class FakeWorkers:
    def __init__(self):
        self.trainer, self.rollout = FakeTrainer(), FakeRollout()


def _progress(tmp_path, every: int) -> tuple[Progress, FakeWorkers, MetricsLogger]:
    workers = FakeWorkers()
    metrics = MetricsLogger(tmp_path, tensorboard=False)
    cfg = RunConfig(checkpoint=CheckpointConfig(every=every))
    return Progress(Manifest(tmp_path / "manifest.json"), workers, metrics, cfg), workers, metrics


def test_progress_records_a_step_only_with_its_checkpoint_and_resumes_from_it(tmp_path):
    progress, workers, metrics = _progress(tmp_path, every=2)
    out = tmp_path / "iter0" / "sft"
    key = "iter0/sft"
    progress.start(key)
    assert progress.resumable_step(key, out) == 0
    progress.begin(key, out, 0, lr=1e-5, warmup_steps=1, total_steps=5)
    metrics.begin(0)  # the loop does this before each stage: rows carry the iteration
    for step in range(5):
        metrics.log("sft", step, {"nll": float(step)})
        progress.step_done(key, out, step, 5)
        if step == 2:
            info = json.loads((tmp_path / "manifest.json").read_text())["stages"][key]
            assert info["steps_done"] == 2 and info["checkpoint_step"] == 2  # step 3 is not recorded yet
    assert [c for c in workers.trainer.calls if c[0] == "save"] == [("save", "checkpoint")] * 3  # after 2, 4, 5
    assert progress.resumable_step(key, out) == 5

    # a rerun after a kill during step 4 (0-based 3): the manifest still says 2 steps
    again, w2, m2 = _progress(tmp_path, every=2)
    again.manifest.mark(key, steps_done=2, checkpoint_step=2)
    workers.trainer.save_checkpoint(out / "checkpoint", meta={"stage": key, "stage_step": 2})  # as it was then
    again.start(key)
    start = again.resumable_step(key, out)
    assert start == 2
    again.begin(key, out, start, lr=1e-5, warmup_steps=1, total_steps=5)
    assert w2.trainer.calls == [("set_lr", 1e-5, 1, 5), ("load", "checkpoint")] and w2.rollout.pushed == 1
    assert [r["step"] for r in m2.read("sft")] == [0, 1]  # the rows of the steps to redo are dropped
    assert again.manifest.data["resumes"][-1]["from_step"] == 2

    # lr=None: the stage sets its own schedule (preference); a checkpoint behind the manifest starts afresh
    third, w3, _ = _progress(tmp_path, every=2)
    third.manifest.mark(key, steps_done=6, checkpoint_step=6)
    assert third.resumable_step(key, out) == 0
    third.start(key)
    third.begin(key, out, 0, lr=None)
    assert w3.trainer.calls == []


def test_progress_finish_saves_only_what_the_last_step_did_not_and_exports(tmp_path):
    progress, workers, _ = _progress(tmp_path, every=10)
    out, key = tmp_path / "iter0" / "grpo", "iter0/grpo"
    progress.start(key)
    for step in range(3):
        progress.step_done(key, out, step, 3)  # every=10: only the last step checkpoints
    progress.finish(key, out)
    assert workers.trainer.calls == [("save", "checkpoint"), ("export", "policy")]
    assert progress.policy == progress.loaded == out / "checkpoint"
    assert progress.manifest.get(key)["policy"] == str(out / "policy")
    progress.restore_policy()  # the trainer holds it already: nothing to load
    assert workers.trainer.calls[-1] == ("export", "policy")


def test_a_checkpoint_ahead_of_the_manifest_is_trusted_not_redone(tmp_path):
    """Killed after the checkpoint of step 3 was renamed into place but before the manifest recorded it
    (the window of fault points checkpoint.renamed / progress.saved): the rerun resumes after step 3, the
    checkpoint's own step, and brings the manifest up to it; it never loads step 3 and redoes it."""
    progress, workers, _ = _progress(tmp_path, every=1)
    out, key = tmp_path / "iter0" / "sft", "iter0/sft"
    progress.start(key)
    for step in range(2):
        progress.step_done(key, out, step, 3)
    workers.trainer.save_checkpoint(out / "checkpoint", meta={"stage": key, "stage_step": 3})  # then the kill
    assert progress.manifest.get(key)["steps_done"] == 2

    again, w2, _ = _progress(tmp_path, every=1)
    again.start(key)
    assert again.resumable_step(key, out) == 3
    info = json.loads((tmp_path / "manifest.json").read_text())
    assert info["stages"][key]["steps_done"] == info["stages"][key]["checkpoint_step"] == 3
    assert info["reconciled"][-1]["manifest_step"] == 2 and info["reconciled"][-1]["checkpoint_step"] == 3
    again.begin(key, out, 3, lr=1e-5)
    again.finish(key, out)  # no step left: the step-3 checkpoint is final as it is
    assert [c[0] for c in w2.trainer.calls] == ["set_lr", "load", "export"]


def test_a_checkpoint_of_another_stage_or_from_older_veripo(tmp_path):
    progress, workers, _ = _progress(tmp_path, every=1)
    out, key = tmp_path / "iter0" / "grpo", "iter0/grpo"
    progress.manifest.mark(key, steps_done=2, checkpoint_step=2)
    workers.trainer.save_checkpoint(out / "checkpoint", meta={"stage": "iter1/grpo", "stage_step": 2})
    assert progress.resumable_step(key, out) == 0  # another stage's weights: never loaded as this one's
    (out / "checkpoint" / "veripo_checkpoint.json").write_text('{"step": 7}')  # no stage step: the old rule
    assert progress.resumable_step(key, out) == 2
    progress.manifest.mark(key, checkpoint_step=1)
    assert progress.resumable_step(key, out) == 0


def test_a_kill_between_the_two_renames_of_a_checkpoint_is_repaired(tmp_path):
    progress, workers, _ = _progress(tmp_path, every=1)
    out, key = tmp_path / "iter0" / "sft", "iter0/sft"
    progress.manifest.mark(key, steps_done=2, checkpoint_step=2)
    # the old checkpoint moved aside, the complete new one (step 3) not yet renamed into place
    workers.trainer.save_checkpoint(out / ".checkpoint.old", meta={"stage": key, "stage_step": 2})
    workers.trainer.save_checkpoint(out / ".checkpoint.tmp", meta={"stage": key, "stage_step": 3})
    assert progress.resumable_step(key, out) == 3
    assert not (out / ".checkpoint.tmp").exists() and not (out / ".checkpoint.old").exists()
    assert json.loads((out / "checkpoint" / "veripo_checkpoint.json").read_text())["stage_step"] == 3
    # only the old one left (the new one never completed): it is put back
    import shutil

    shutil.rmtree(out / "checkpoint")
    workers.trainer.save_checkpoint(out / ".checkpoint.old", meta={"stage": key, "stage_step": 2})
    progress.manifest.mark(key, steps_done=2, checkpoint_step=2)
    assert progress.resumable_step(key, out) == 2 and not (out / ".checkpoint.old").exists()


def test_finish_saves_steps_a_stage_ran_between_two_saves(tmp_path):
    """A preference stage plans its steps from the pairs it got, then its filter (RRPO's differing
    phrase) drops some: with checkpoint.every=2 the 3 steps it ran end between two saves. The final
    checkpoint must hold step 3 (it held step 2, and a resumed run restored the stale weights)."""
    progress, workers, _ = _progress(tmp_path, every=2)
    out, key = tmp_path / "iter0" / "preference", "iter0/preference"
    progress.start(key)
    progress.begin(key, out, 0, lr=None)
    for step in range(3):
        progress.step_done(key, out, step, 5)  # planned 5, ran 3
    progress.finish(key, out)
    assert [c for c in workers.trainer.calls if c[0] == "save"] == [("save", "checkpoint")] * 2  # after 2, at finish
    marker = json.loads((out / "checkpoint" / "veripo_checkpoint.json").read_text())
    assert marker["stage_step"] == 3 and progress.manifest.get(key)["checkpoint_step"] == 3
