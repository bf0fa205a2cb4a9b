"""Metrics to JSONL (always), TensorBoard (when enabled) and W&B (when installed and enabled)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """One logger per run: `log(stage, step, metrics)` appends a JSON line and writes scalars.

    Each line carries the stage, its step and wall time, so a resumed run appends to the same file.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, wandb: bool = False, run_name: str = ""):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as _wandb
            except ImportError:
                print("veripo: logging.wandb=true but wandb is not installed; logging to JSONL/TensorBoard only")
            else:
                self._wandb = _wandb.init(project="veripo", name=run_name, dir=str(run_dir), resume="allow")

    def log(self, stage: str, step: int, metrics: dict[str, Any], global_step: int | None = None) -> None:
        row = {"stage": stage, "step": step, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        gs = step if global_step is None else global_step
        scalars = {f"{stage}/{k}": v for k, v in row.items() if k not in ("stage", "step", "time")
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
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if stage is None or r["stage"] == stage]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
