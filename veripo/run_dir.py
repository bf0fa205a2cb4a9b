"""The run folder: every path of ``runs/NAME/``, the manifest, atomic writers and torn-line-tolerant readers.

Layout (`RunDir` names each path; the file names are this module's constants)::

    config.yaml          the composed config
    manifest.json        the single truth about progress (`Manifest`): per stage id (``iter0/grpo``) its
                         steps done, the step of its checkpoint, whether it is done, wall time and outputs;
                         every resume; rewritten atomically
    metrics.jsonl        one row per step of every stage (with its iteration); TensorBoard in tensorboard/
    report.html          plots and samples, rewritten after every stage
    data/                the synthetic set, when the recipe generates it
    iter{i}/{stage}/     the stage's outputs: grpo/rollouts.jsonl (and rollouts_shuffled.jsonl under
                         T-GRPO), verify/pairs.jsonl and pairs.meta.json, eval_{after}/results.json and
                         samples.jsonl; for the stages that train, checkpoint/ (model, optimizer, schedule,
                         RNG) and policy/ (an HF export); grpo/reference/ when a KL reference is used

Writers: `atomic_write_text` / `write_json` / `write_jsonl` replace a file atomically (temp file in the
same folder, fsync, rename): a reader sees the old file or the new one, never half of one. `append_jsonl`
grows a file a step at a time (flushed and fsynced); a crash can leave a torn last line, which
`read_json_lines` skips and `truncate_jsonl` drops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from veripo.errors import UserError

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
REPORT = "report.html"
ROLLOUTS = "rollouts.jsonl"
SHUFFLED_ROLLOUTS = "rollouts_shuffled.jsonl"
PAIRS = "pairs.jsonl"
PAIRS_META = "pairs.meta.json"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"
JUDGE_CACHE = "judge_cache.jsonl"
CHECKPOINT = "checkpoint"  # a training stage's step checkpoint (veripo.train.checkpoint)
CHECKPOINT_MARKER = "veripo_checkpoint.json"  # written last into a checkpoint: its step, stage and stage step
POLICY = "policy"  # a finished training stage's HF export
REFERENCE = "reference"  # a frozen reference export (GRPO's KL anchor, RRPO's token-wise KL)


# -- writers and readers ------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically: a temp file in the same folder, flushed and fsynced, then renamed
    over `path` (readable like any file the process creates). A crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2))


def _line(item: Any) -> str:
    return json.dumps(item.to_dict() if hasattr(item, "to_dict") else item, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, items: Iterable[Any]) -> Path:
    """Objects with `to_dict()` (or plain dicts) as JSONL, atomically (`atomic_write_text`)."""
    return atomic_write_text(path, "".join(_line(item) for item in items))


def append_jsonl(path: str | os.PathLike, items: Iterable[Any]) -> Path:
    """Append objects with `to_dict()` (or plain dicts) to a growing JSONL file, flushed and fsynced.
    Not atomic: a crash can leave a torn last line (readers skip it, `truncate_jsonl` drops it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(_line(item) for item in items))
        f.flush()
        os.fsync(f.fileno())
    return path


def _parse_lines(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSONL file and the number of non-blank lines (torn ones included)."""
    rows, lines = [], 0
    # a crash can tear a line inside a multi-byte character: decoded with replacement, such a line is
    # simply not JSON (skipped like any torn line) instead of a UnicodeDecodeError for the whole file
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
    return rows, lines


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSONL file, skipping blank lines and lines a crash tore (not JSON)."""
    path = Path(path)
    return _parse_lines(path)[0] if path.is_file() else []


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> int:
    """Keep only the rows `keep` accepts (and no torn line), atomically; returns the lines dropped.
    A resumed stage calls this to drop what the steps it redoes wrote."""
    path = Path(path)
    if not path.is_file():
        return 0
    rows, lines = _parse_lines(path)
    kept = [r for r in rows if _keep(keep, r)]
    dropped = lines - len(kept)
    if dropped:
        write_jsonl(path, kept)
    return dropped


def _keep(keep: Callable[[dict], bool], row: dict) -> bool:
    try:
        return bool(keep(row))
    except (KeyError, TypeError):  # a row without the fields the filter reads
        return False


class RunDirError(UserError):
    """The run folder cannot be used as it is (damaged, unwritable, or made with another config); the message
    names the path or keys and the fix."""


# -- checkpoint folders (read without torch) -------------------------------------------------------

def checkpoint_info(folder: str | os.PathLike) -> dict | None:
    """The marker of a complete checkpoint folder (`veripo.train.checkpoint`): ``step`` (the engine's),
    and, from the loop's saves, ``stage`` and ``stage_step``; None when the folder is missing or
    incomplete (no readable marker)."""
    marker = Path(folder) / CHECKPOINT_MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def finish_interrupted_replace(final: str | os.PathLike) -> str | None:
    """A kill inside `veripo.train.checkpoint.replace_dir` (old folder moved aside, new one not yet renamed
    into place) leaves no `final`: rename the complete new folder into place, else put the old one back.
    Returns what it did (None: nothing to do)."""
    final = Path(final)
    if final.exists():
        return None
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    if checkpoint_info(tmp) is not None:
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)  # what the rename replaced
        return f"finished an interrupted checkpoint write: renamed {tmp.name} to {final.name}"
    if old.is_dir():
        os.replace(old, final)
        return f"put back the previous checkpoint from {old.name} (the new one was incomplete)"
    return None


# -- the manifest ---------------------------------------------------------------------------------

class Manifest:
    """The run's single truth about progress (``manifest.json``), written atomically after every change.

    ``stages[id]``: ``steps_done``, ``checkpoint_step``, ``elapsed``, ``done``, ``seconds`` and the stage's
    outputs; ``order``: stage ids in the order they first ran; ``resumes``: one entry per resumed stage.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = self._read() if self.path.is_file() else {"created": time.time(), "stages": {}}
        self.data.setdefault("stages", {})
        self.data.setdefault("order", [])

    def _read(self) -> dict:
        """The manifest on disk; a damaged one (veripo writes it atomically, so only something else can
        truncate or edit it) is a `RunDirError` naming the file and the ways out."""
        fix = (f"Fix: restore {self.path} from a backup; or move the run folder {self.path.parent} aside (or set "
               "name=NEW) to start the run afresh. veripo does not guess progress: a wrong guess would skip or "
               "retrain stages")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise RunDirError(f"{self.path}: the run's manifest is damaged (not UTF-8 text at byte {e.start}). {fix}") from None
        except json.JSONDecodeError as e:
            what = "empty" if not e.doc.strip() else f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            raise RunDirError(f"{self.path}: the run's manifest is damaged ({what}; truncated?). {fix}") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            raise RunDirError(f"{self.path}: the run's manifest is damaged (not an object with a 'stages' "
                              f"object). {fix}")
        return data

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def done(self, stage: str) -> bool:
        return bool(self.get(stage).get("done"))

    def stages_done(self) -> int:
        return sum(1 for v in self.data["stages"].values() if v.get("done"))

    def mark(self, stage: str, **info: Any) -> None:
        self.data["stages"].setdefault(stage, {}).update(info)
        if stage not in self.data["order"]:
            self.data["order"].append(stage)
        self.save()

    def record_resume(self, stage: str, from_step: int) -> None:
        self.record("resumes", stage=stage, from_step=from_step)

    def record(self, kind: str, **entry: Any) -> None:
        """Append an event to the list ``kind`` (``resumes``, ``reconciled``, ``config_changes``, ``recovered``)."""
        self.data.setdefault(kind, []).append({**entry, "time": time.time()})
        self.save()

    def started(self) -> dict[str, dict]:
        """The stages with work on disk: done, or with steps recorded."""
        return {k: v for k, v in self.data["stages"].items() if v.get("done") or v.get("steps_done")}

    def save(self) -> None:
        write_json(self.path, self.data)


# -- config drift on resume ---------------------------------------------------------------------------

# Which stages a config key shapes, by its first part: a changed key matters only when one of these stages
# has work in the run folder. Keys of NEUTRAL sections never change results (paths, logging, checkpoint
# cadence, placement, the plan itself); any other section (model, data, seed, train, rollout) shapes every
# stage.
KEY_STAGES = {"sft": ("sft",), "grpo": ("grpo",), "prune": ("grpo",), "verify": ("verify",),
              "preference": ("preference",), "eval": ("eval",)}
NEUTRAL = frozenset({"name", "output_dir", "resume", "allow_config_changes", "logging", "checkpoint", "ray",
                     "stages", "iterations"})


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"grpo": {"steps": 3}}`` -> ``{"grpo.steps": 3}`` (lists stay whole)."""
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between the recorded config `old` and `new` (both plain data): key ->
    (old, new). A key only `new` has is a change when it fills what was a value or an empty mapping in
    `old` (``rollout.vllm_kwargs: {}`` -> ``{max_model_len: 2048}``); else it is a newer veripo's key."""
    a, b = flatten(old), flatten(new)
    changed = {k: (a[k], b[k]) for k in a if k in b and a[k] != b[k]}
    gone = {k: (a[k], None) for k in a if k not in b and a[k] not in (None, {}) and not any(
        x.startswith(k + ".") for x in b)}
    added = {k: (None, b[k]) for k in b if k not in a and any(k.startswith(p + ".") for p in a)}
    return changed | gone | added


def stages_shaped_by(key: str, stage_ids: Iterable[str]) -> list[str]:
    """The stage ids among `stage_ids` whose results the config key `key` shapes."""
    head = key.split(".", 1)[0]
    if head in NEUTRAL:
        return []
    kinds = KEY_STAGES.get(head)
    out = []
    for sid in stage_ids:
        parsed = RunDir.parse_stage_id(sid)
        kind = parsed[1] if parsed else sid
        if kinds is None or kind.split("_", 1)[0] in kinds:
            out.append(sid)
    return out


def allowed(key: str, allow: Iterable[str]) -> bool:
    """`key` is named in `allow` itself or by a section above it (``grpo`` allows ``grpo.steps``)."""
    return any(key == a or key.startswith(a + ".") for a in allow)


def check_config_drift(recorded: Path, new: dict, manifest: Manifest, allow: Iterable[str]) -> dict:
    """Compare the run's recorded config (``config.yaml``) with `new` before a resumed run rewrites it.

    A changed key that shapes a stage with work in the folder (done, or steps recorded) is refused with a
    `RunDirError` listing each such key, its old and new value and the stages it shapes, unless `allow`
    names it (or its section); every change that goes through is recorded in the manifest
    (``config_changes``). Returns the changes (key -> (old, new)).
    """
    import yaml

    if not recorded.is_file():
        return {}
    try:
        old = yaml.safe_load(recorded.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(f"{recorded}: the run's recorded config is damaged ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}). Fix: restore it, or delete it to accept the current config "
                          "as the run's (finished stages are then not checked against it)") from None
    if not isinstance(old, dict):
        raise RunDirError(f"{recorded}: the run's recorded config is not a mapping. Fix: restore it, or delete "
                          "it to accept the current config as the run's")
    allow = list(allow)
    changes = {k: v for k, v in config_changes(old, new).items() if k.split(".")[0] != "allow_config_changes"}
    started = list(manifest.started())
    refused = {}
    for key, (a, b) in changes.items():
        shaped = stages_shaped_by(key, started)
        if shaped and not allowed(key, allow):
            refused[key] = (a, b, shaped)
    if refused:
        lines = [f"  {k}: {a!r} -> {b!r} (shapes {', '.join(s)})" for k, (a, b, s) in refused.items()]
        keys = ",".join(refused)
        raise RunDirError(
            f"{recorded.parent}: this run folder holds work made with other values of {len(refused)} key(s) "
            f"(recorded in {recorded.name}):\n" + "\n".join(lines) + "\n"
            f"Fix: rerun with the recorded values; or start a new run (name=NEW); or accept the change with "
            f"allow_config_changes=[{keys}] (the finished stages keep what the old values made; the change is "
            "recorded in the manifest)")
    if changes:
        manifest.record("config_changes", changes={k: {"old": a, "new": b} for k, (a, b) in changes.items()},
                        allowed=[k for k in changes if stages_shaped_by(k, started)])
    return changes


def open_run(cfg: Any) -> Manifest:
    """Create (or reopen) the run folder of `cfg` (a `RunConfig`), read its manifest, check a resumed run's
    config against the recorded one (`check_config_drift`) and record the config; returns the manifest.
    Torch-free, so an entry point can call it before any heavy import; a `RunDirError` names the path or
    keys and the fix."""
    import yaml

    from veripo.config import to_dict

    root = RunDir.for_config(cfg).root
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".veripo-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        what = e.strerror or type(e).__name__
        if isinstance(e, (FileExistsError, NotADirectoryError)) or (root.exists() and not root.is_dir()):
            what = "a file is in the way (output_dir or name names a file, not a folder)"
        raise RunDirError(f"output_dir={cfg.output_dir}: cannot use the run folder {root}: {what}. Fix: set "
                          "output_dir=PATH to a writable folder (or name=NEW)") from None
    run = RunDir(root)
    manifest = Manifest(run.manifest)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    changes = check_config_drift(run.config, yaml.safe_load(text), manifest, cfg.allow_config_changes)
    for key, (old, value) in changes.items():
        print(f"veripo: config change on resume: {key}: {old!r} -> {value!r} (recorded in the manifest)")
    atomic_write_text(run.config, text)
    return manifest


# -- the paths ------------------------------------------------------------------------------------

class RunDir:
    """Every path of one run folder. ``RunDir(root)``; ``RunDir.for_config(cfg)`` is
    ``output_dir/name``. Stage folders are ``iter{i}/{stage}`` (`stage_id`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def for_config(cls, cfg: Any) -> "RunDir":
        return cls(Path(cfg.output_dir) / cfg.name)

    # run-level files
    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def data(self) -> Path:
        return self.root / "data"

    # stages
    @staticmethod
    def stage_id(iteration: int, stage: str) -> str:
        return f"iter{iteration}/{stage}"

    @staticmethod
    def parse_stage_id(stage_id: str) -> tuple[int, str] | None:
        """``(iteration, stage)`` of ``iter{i}/{stage}``; None for any other id."""
        m = re.fullmatch(r"iter(\d+)/(.+)", stage_id)
        return (int(m.group(1)), m.group(2)) if m else None

    def stage(self, iteration: int, stage: str) -> Path:
        return self.root / self.stage_id(iteration, stage)

    def rollouts(self, iteration: int) -> Path:
        return self.stage(iteration, "grpo") / ROLLOUTS

    def pairs(self, iteration: int) -> Path:
        return self.stage(iteration, "verify") / PAIRS

    def eval_results(self, iteration: int, after: str) -> Path:
        return self.stage(iteration, f"eval_{after}") / RESULTS

    def iterations(self) -> list[int]:
        """The iterations with a folder on disk."""
        its = []
        for d in self.root.glob("iter*"):
            m = re.fullmatch(r"iter(\d+)", d.name)
            if m and d.is_dir():
                its.append(int(m.group(1)))
        return sorted(its)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
