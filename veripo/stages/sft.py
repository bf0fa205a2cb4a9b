"""SFT cold start: teach the ``<think>…</think><answer>…</answer>`` format before GRPO.

SmolLM2 does not produce the format on its own. The target for a record is its own chain of thought
(Video-R1-COT's ``process`` field, ``<think>…</think>``) followed by ``<answer>ground truth</answer>``.
The synthetic generator (`veripo.data.synth`, version 2 on) writes a short ``process`` for every
record that derives the answer step by step from the caption the prompt shows (positions in the first
and last frame → direction or distance; first frames → order; the objects seen → count), so the cold
start teaches a reasoning pattern the model can reuse on unseen clips, not only the format. A record
without a usable process (no ``process``, or one without a ``<think>…</think>`` pair) falls back to a
one-sentence stub around the answer: that teaches the format only, and a model trained mostly on stubs
learns to copy the stub, leaving all the reasoning to GRPO.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from veripo.algos import aggregate, token_logprobs
from veripo.data import Record
from veripo.faults import fault_point
from veripo.rewards import extract_think
from veripo.stages.base import StageContext
from veripo.stages.common import policy_batch


def sft_target(record: Record) -> str:
    """The response the cold start trains on for `record`: its ``process`` (when it holds a
    ``<think>…</think>`` pair) or a stub, then ``<answer>…</answer>`` with the ground truth."""
    process = record.extra.get("process")
    if isinstance(process, str) and extract_think(process) is not None:
        think = process.strip()
    else:
        think = "<think>I check each frame of the description against the question.</think>"
    return f"{think}<answer>{record.answer}</answer>"


@dataclass(frozen=True)
class SFTLoss:
    """Token-mean negative log-likelihood of the response tokens over the global batch."""

    chunk_size: int | None = None

    def __call__(self, logits, micro, ctx):
        logp = token_logprobs(logits, micro.input_ids, chunk_size=self.chunk_size)
        nll = -logp
        loss = aggregate(nll, micro.loss_mask, "token-mean", denominator=ctx.global_tokens)
        tokens = micro.loss_mask.sum().clamp(min=1)
        return loss, {"nll": float((nll.detach() * micro.loss_mask).sum() / tokens)}


def sft_batches(records: list[Record], prompts, tokenizer, steps: int, batch_size: int, seed: int):
    """Yield `steps` (prompts, response_ids) batches, cycling through shuffled records; each prompt is
    `PromptBuilder.render`'s (``.token_ids``, and ``.visual`` for a video prompt of a vision run)."""
    rng = random.Random(seed)
    order: list[int] = []
    eos = tokenizer.eos_token or ""
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(records)))
                rng.shuffle(order)
            batch.append(order.pop())
        rendered = [prompts.render(records[i]) for i in batch]
        r_ids = [tokenizer(sft_target(records[i]) + eos, add_special_tokens=False)["input_ids"] for i in batch]
        yield rendered, r_ids


class SFTStage:
    """The cold start: ``sft.steps`` steps of `SFTLoss` on batches of ``sft.batch_size`` records' targets."""

    name = "sft"
    trains = True

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict:
        c = ctx.cfg.sft
        ctx.progress.begin(ctx.stage_id, out, start_step, c.lr, c.warmup_steps, c.steps)
        batches = sft_batches(ctx.data.train, ctx.prompts, ctx.tokenizer, c.steps, c.batch_size, ctx.cfg.seed)
        bar = tqdm(batches, total=c.steps, desc="sft", disable=not ctx.cfg.logging.progress, unit="step")
        for step, (prompts, r_ids) in enumerate(bar):
            if step < start_step:
                continue
            batch = policy_batch([p.token_ids for p in prompts], r_ids, ctx.pad_id,
                                 visuals=[p.visual for p in prompts])  # a video prompt carries its frames
            m = ctx.workers.trainer.train_step(batch, SFTLoss())
            ctx.metrics.log("sft", step, {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "step"})
            bar.set_postfix(nll=f"{m.get('nll', float('nan')):.3f}")
            fault_point("sft.step")
            ctx.progress.step_done(ctx.stage_id, out, step, c.steps)
        ctx.progress.sync_weights()
        return {"steps_done": c.steps}
