"""The verify stage (docs/algorithms.md §3): the iteration's GRPO rollouts -> rule checks + judge -> pairs.

``verify.mode=consistency`` runs VerIPO's rollout-aware verifier (`verifier.verify`: penalty /
consistency / reflection pairs); ``caption`` the LLaVA-Hound caption-proxy judge (best vs worst). The
judge is the run's own engine (`StageContext.judge_backend`), its answers cached on disk in the stage
folder, so a re-verified iteration does not ask again. Writes ``pairs.jsonl`` and ``pairs.meta.json``.
"""

from __future__ import annotations

from pathlib import Path

from veripo.data.records import LoadReport, MissingFileError, RecordError
from veripo.data.rollouts import read_rollouts, write_pairs
from veripo.faults import fault_point
from veripo.run_dir import JUDGE_CACHE, PAIRS, PAIRS_META, write_json
from veripo.stages.base import StageContext, pct
from verifier.caption_judge import CaptionJudge
from verifier.pipeline import score_captions, verify


class VerifyStage:
    name = "verify"
    trains = False

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict:
        v, it = ctx.cfg.verify, ctx.iteration
        ctx.metrics.truncate("verify", 0, iteration=it)
        path = ctx.run.rollouts(it)
        if not path.is_file():
            raise MissingFileError(f"{path}: no rollouts for the verifier. Fix: put grpo before verify in stages")
        # a crash may tear the file's last line, so bad lines are always skipped here, but counted and said
        report = LoadReport()
        rollouts = read_rollouts(path, skip_bad=True, report=report)
        if not rollouts:
            what = f"all {report.skipped} line(s) are bad" if report.skipped else "it is empty"
            raise RecordError(str(path), "<file>", f"no rollouts to verify ({what})",
                              "rerun the grpo stage of this iteration (delete its folder and its manifest entry)")
        if v.last_steps is not None:
            last = max((r.step for r in rollouts), default=0)
            rollouts = [r for r in rollouts if r.step > last - v.last_steps]
        cache = out / JUDGE_CACHE
        if v.mode == "caption":
            result = score_captions(rollouts, CaptionJudge(ctx.judge_backend(), cache=cache),
                                    records=ctx.data.train, config=v.config)
        else:
            result = verify(rollouts, records=ctx.data.train, judge=ctx.consistency_judge(cache), config=v.config,
                            tokenizer=ctx.tokenizer, progress=ctx.cfg.logging.progress)
        fault_point("verify.judged")
        write_pairs(out / PAIRS, result.pairs)
        result.stats.skipped_lines = report.skipped
        write_json(out / PAIRS_META, {**result.meta(), "inputs": {"rollouts": len(rollouts),
                                                                 "skipped_lines": report.to_dict()}})
        stats = result.stats.to_dict()
        ctx.metrics.log("verify", 0, {k: x for k, x in stats.items() if isinstance(x, (int, float, dict)) or x is None})
        unknown = stats.get("verdicts", {}).get("unknown", 0)
        print(f"veripo: verifier: {len(result.pairs)} pairs from {len(rollouts)} rollouts "
              f"({', '.join(f'{k} {n}' for k, n in sorted(stats.get('pairs_by_type', {}).items())) or 'none'}); "
              f"inconsistency rate {pct(stats.get('inconsistency_rate'))}"
              + (f"; {unknown} unreadable judge verdict(s)" if unknown else "")
              + (f"; {report.summary()}" if report.skipped else ""))
        outputs = {"pairs": len(result.pairs), "pairs_file": str(out / PAIRS)}
        if report.skipped:
            outputs.update(skipped_lines=report.skipped, skipped_errors=report.to_dict()["errors"])
        if unknown:
            outputs["verdicts_unknown"] = unknown
        return outputs
