"""The eval stage: greedy answers on the held-out split after the stage it follows (``eval_grpo`` follows
``grpo``); accuracy per problem type, MRA, format rate and the verifier's inconsistency rate
(`veripo.eval.evaluate`). Writes ``results.json`` and ``samples.jsonl`` in its folder."""

from __future__ import annotations

from pathlib import Path

from veripo.eval import evaluate, write_results
from veripo.run_dir import JUDGE_CACHE, RESULTS
from veripo.stages.base import StageContext, pct


class EvalStage:
    name = "eval"
    trains = False

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict:
        e, it = ctx.cfg.eval, ctx.iteration
        after = out.name[len("eval_"):]
        ctx.metrics.truncate("eval", 0, iteration=it, after=after)
        records = ctx.data.test[: e.limit] if e.limit else ctx.data.test
        judge = ctx.consistency_judge(out / JUDGE_CACHE) if e.judge else None

        def generate(requests, sampling):
            return [group[0] for group in ctx.workers.rollout.generate(requests, sampling, 1)]

        result = evaluate(records, generate, ctx.prompts.make_request, judge=judge, max_tokens=e.max_tokens,
                          temperature=e.temperature, seed=ctx.cfg.seed, reward_weights=ctx.cfg.grpo.reward_weights,
                          verifier_config=ctx.cfg.verify.config, tokenizer=ctx.tokenizer,
                          progress=ctx.cfg.logging.progress)
        write_results(result, out, {"iteration": it, "after": after, "model": str(ctx.model_path),
                                    "records": len(records)})
        ctx.metrics.log("eval", it, {"after": after, **result.summary})
        s = result.summary
        print(f"veripo: eval after {after}: accuracy {pct(s.get('accuracy'))}, format {pct(s.get('format_rate'))}, "
              f"inconsistency {pct(s.get('inconsistency_rate'))} on {len(records)} held-out records")
        return {"accuracy": s.get("accuracy"), "inconsistency_rate": s.get("inconsistency_rate"),
                "results": str(out / RESULTS)}
