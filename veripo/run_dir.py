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
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

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


# -- the manifest ---------------------------------------------------------------------------------

class Manifest:
    """The run's single truth about progress (``manifest.json``), written atomically after every change.

    ``stages[id]``: ``steps_done``, ``checkpoint_step``, ``elapsed``, ``done``, ``seconds`` and the stage's
    outputs; ``order``: stage ids in the order they first ran; ``resumes``: one entry per resumed stage.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"created": time.time(), "stages": {}}
        self.data.setdefault("stages", {})
        self.data.setdefault("order", [])

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
        self.data.setdefault("resumes", []).append({"stage": stage, "from_step": from_step, "time": time.time()})
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


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
