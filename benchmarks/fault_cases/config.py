"""Config faults: values that cannot be right must fail at once, naming the key."""

from __future__ import annotations

from pathlib import Path

from faults import Outcome, case, classify, run_cli


@case("config", "unknown key", config_error=True)
def unknown_key(tmp: Path) -> Outcome:
    return classify(run_cli(["-m", "veripo.run", "grpo.stepz=3", f"output_dir={tmp}/run"], tmp), ["grpo.stepz"])
