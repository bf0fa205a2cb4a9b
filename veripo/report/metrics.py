"""Metrics to JSONL (always), TensorBoard (when enabled) and W&B (when installed and enabled)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from veripo.run_dir import RunDir, read_json_lines, truncate_jsonl


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """One logger per run: `log(stage, step, metrics)` appends a JSON line and writes scalars.

    Each line carries the stage, its step and wall time (and `context`, e.g. the loop's iteration), so a
    resumed run appends to the same file after `truncate` dropped the rows of the steps it redoes.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, wandb: bool = False, run_name: str = ""):
        run = RunDir(run_dir)
        self.path = run.metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context: dict[str, Any] = {}  # merged into every row (the loop sets {"iteration": i})
        self.step_offset = 0  # added to `step` for TensorBoard / W&B (iterations laid end to end)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run.tensorboard))
        if wandb:
            try:
                import wandb as _wandb
            except ImportError:
                print("veripo: logging.wandb=true but wandb is not installed; logging to JSONL/TensorBoard only")
            else:
                self._wandb = _wandb.init(project="veripo", name=run_name, dir=str(run_dir), resume="allow")

    def begin(self, iteration: int, step_offset: int = 0) -> None:
        """Rows from now on carry ``iteration``; TensorBoard / W&B steps are shifted by `step_offset`
        (a stage's iterations laid end to end). The loop calls this before each stage."""
        self.context = {"iteration": iteration}
        self.step_offset = step_offset

    def log(self, stage: str, step: int, metrics: dict[str, Any], global_step: int | None = None) -> None:
        row = {"stage": stage, "step": step, "time": round(time.time(), 3), **self.context}
        # a trainer's own counters (its optimizer "step") never replace the row's stage/step/time
        row.update({(f"train_{k}" if k in row else k): _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        gs = step + self.step_offset if global_step is None else global_step
        scalars = {f"{stage}/{k}": v for k, v in row.items() if k not in ("stage", "step", "time", *self.context)
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, gs)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=gs)

    def read(self, stage: str | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        return [r for r in read_json_lines(self.path) if stage is None or r["stage"] == stage]

    def truncate(self, stage: str, from_step: int, **match: Any) -> int:
        """Drop `stage`'s rows with ``step >= from_step`` (and the `match` fields, e.g. iteration=1), and any
        torn line a crash left; atomic. A resumed stage calls this before redoing those steps."""
        if not self.path.is_file():
            return 0
        return truncate_jsonl(self.path, lambda r: not (r.get("stage") == stage and r.get("step", 0) >= from_step
                                                        and all(r.get(k) == v for k, v in match.items())))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
