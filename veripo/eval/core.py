"""Evaluation: greedy answers to a record set, scored by the training rewards and judged by the verifier.

    result = evaluate(records, generate, make_request, judge=ConsistencyJudge(VLLMJudge()))
    result.summary["accuracy_by_type"], result.summary["inconsistency_rate"]
    write_results(result, "eval_results/my-model", meta={"model": ...})

`generate(requests, sampling) -> list[Sample]` returns exactly one sample per request (the loop backs
it with its Ray rollout workers, ``python -m veripo.eval`` with a `veripo.rollout` engine).

Per record: accuracy (`veripo.rewards.accuracy_reward`, by problem type), format
(`veripo.rewards.format_reward`), MRA for regression records (`mean_relative_accuracy`), the weighted
reward (`RewardFunction`), response tokens and finish reason. Then every response becomes a
`veripo.data.rollouts.Rollout` and goes through the verifier's own code: `check_rollout` (rule checks),
`judge_rollouts` (the consistency judge, one batched round) and `build_pairs`' statistics, so
``inconsistency_rate`` is exactly `verifier.pairs.PairStats.inconsistency_rate`: inconsistent /
(consistent + inconsistent) over the judged responses (``unknown`` and ``skipped`` left out; None when
nothing was judged), and ``accurate_inconsistency_rate`` the same over accurate responses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veripo.config import VerifierConfig
from veripo.data.records import Record
from veripo.data.rollouts import Rollout
from veripo.rewards import (RewardFunction, accuracy_reward, answer_text, canonical_problem_type, format_reward,
                            mean_relative_accuracy, parse_number, strip_answer_tags)
from veripo.run_dir import RESULTS, SAMPLES, atomic_write_text, write_jsonl
from verifier.checks import check_rollout, count_tokens, parse_response
from verifier.judge import ConsistencyJudge
from verifier.pairs import PairStats, build_pairs, format_table
from verifier.pipeline import judge_rollouts, resolve_records

if TYPE_CHECKING:  # pragma: no cover
    from veripo.rollout.types import GenerationRequest, Sample, SamplingConfig

GenerateFn = Callable[[list["GenerationRequest"], "SamplingConfig"], list["Sample"]]

SUMMARY_KEYS = ("n", "accuracy", "accuracy_by_type", "count_by_type", "mra", "mra_count", "format_rate",
                "reward_mean", "accurate_frac", "inconsistency_rate", "accurate_inconsistency_rate", "judged",
                "verdicts", "judge", "repetitive_frac", "response_tokens_mean", "truncated_frac", "seconds",
                "generate_seconds", "judge_seconds")
SAMPLE_KEYS = ("problem_id", "problem_type", "question", "answer", "response", "prediction", "accuracy",
               "format", "mra", "reward", "accurate", "verdict", "finish_reason", "tokens")


@dataclass
class EvalResult:
    """`summary`: the aggregate metrics (see `SUMMARY_KEYS`); `samples`: one dict per record, in order
    (see `SAMPLE_KEYS`)."""

    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        return format_summary(self.summary)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _check_ground_truth(records: Sequence[Record]) -> None:
    """Score each solution against itself before generating: an unparsable ground truth (a data bug)
    then fails in seconds, naming the record, instead of after the whole generation."""
    for rec in records:
        try:
            accuracy_reward(rec.solution, rec.solution, rec.problem_type)
        except ValueError as e:
            raise ValueError(f"record {rec.problem_id!r}: {e}. Fix: correct its \"solution\" or drop it") from e
        except ImportError:  # OCR / free-form scorers need optional packages; reported when scoring
            pass


def _generate_all(records: Sequence[Record], generate: GenerateFn, make_request: Callable[[Record], Any],
                  sampling: Any, batch_size: int | None, progress: bool) -> list[Any]:
    size = batch_size or len(records)
    batches = [list(records[i:i + size]) for i in range(0, len(records), size)]
    bar = None
    if progress and len(batches) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="eval generate", unit="resp", file=sys.stderr)
    samples: list[Any] = []
    for batch in batches:
        requests = [make_request(r) for r in batch]
        out = list(generate(requests, sampling))
        if len(out) != len(requests):
            raise RuntimeError(f"evaluate: generate returned {len(out)} samples for {len(requests)} requests "
                               "(it must return exactly one per request, in order)")
        samples.extend(out)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return samples


def _mra(response: str, record: Record) -> float:
    gt = parse_number(strip_answer_tags(record.solution))
    pred = parse_number(answer_text(response))
    if gt is None or pred is None:
        return 0.0
    return mean_relative_accuracy(pred, gt)


def evaluate(records: Sequence[Record], generate: GenerateFn, make_request: Callable[[Record], GenerationRequest],
             *, judge: ConsistencyJudge | None = None, max_tokens: int = 256, temperature: float = 0.0,
             seed: int = 0, reward_weights: Mapping[str, float] | None = None,
             verifier_config: VerifierConfig | None = None, tokenizer: Any = None, progress: bool = True,
             batch_size: int | None = None) -> EvalResult:
    """Generate one response per record (greedy by default), score it and judge its consistency.

    `make_request(record)` renders the prompt; `generate(requests, sampling)` returns one `Sample` per
    request in order. `judge`: a `verifier.ConsistencyJudge` (None: no judge, the inconsistency rates
    are None). `reward_weights` (default accuracy 1.0, format 0.5) give ``reward_mean``;
    `verifier_config` the verifier's thresholds (``accurate`` = accuracy >= accuracy_threshold,
    judge_scope, repetition); `tokenizer` counts reasoning tokens for the checks (else words) and
    response tokens when a sample carries no token ids. `batch_size`: records per ``generate`` call
    (None: all at once). `seed` is used for sampling only (temperature > 0).
    """
    # veripo.rollout imports torch (1.2-4 s): here, not at module level, so that `import veripo.eval` and
    # `python -m veripo.eval --help` stay free of torch (tests/test_imports.py checks it)
    from veripo.rollout.types import SamplingConfig

    t0 = time.perf_counter()
    records = list(records)
    if not records:
        raise ValueError("evaluate: no records to evaluate")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be None or >= 1, got {batch_size}")
    cfg = verifier_config or VerifierConfig()
    reward_fn = RewardFunction(reward_weights)
    _check_ground_truth(records)
    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens,
                              seed=seed if temperature > 0 else None, logprobs="none")

    _log(progress, f"generating {len(records)} responses (max_tokens={max_tokens}, temperature={temperature})")
    t_gen = time.perf_counter()
    outputs = _generate_all(records, generate, make_request, sampling, batch_size, progress)
    generate_seconds = time.perf_counter() - t_gen
    _log(progress, f"generated {len(outputs)} responses in {generate_seconds:.1f}s; scoring")

    samples: list[dict[str, Any]] = []
    rollouts: list[Rollout] = []
    for i, (rec, s) in enumerate(zip(records, outputs)):
        text = s.text
        ptype = canonical_problem_type(rec.problem_type)
        reward = reward_fn(text, rec)
        tokens = len(s.token_ids) if s.token_ids else count_tokens(text, tokenizer) if text else 0
        samples.append({
            "problem_id": rec.problem_id, "problem_type": ptype, "question": rec.problem, "answer": rec.answer,
            "response": text, "prediction": parse_response(text).answer,
            "accuracy": float(accuracy_reward(text, rec.solution, ptype)), "format": float(format_reward(text)),
            "mra": _mra(text, rec) if ptype == "regression" else None, "reward": float(reward.total),
            "accurate": None, "verdict": None, "finish_reason": s.finish_reason, "tokens": tokens,
        })
        rollouts.append(Rollout(rollout_id=f"eval-{i}", problem_id=rec.problem_id, response=text,
                                token_ids=tuple(s.token_ids or ()), finish_reason=s.finish_reason,
                                reward=float(reward.total), reward_components=dict(reward.components),
                                sample_index=0, record=rec.to_dict()))

    # the verifier's own checks, verdicts and statistics
    recs = resolve_records(rollouts)
    checks = {r.rollout_id: check_rollout(r, recs.get(r.problem_id), cfg, tokenizer) for r in rollouts}
    t_judge = time.perf_counter()
    if judge is not None:
        _log(progress, f"judging {len(rollouts)} responses with {judge.judge_id}")
    verdicts = judge_rollouts(rollouts, checks, recs, judge, cfg)
    judge_seconds = time.perf_counter() - t_judge
    if judge is not None:
        _log(progress, f"judged in {judge_seconds:.1f}s")
    stats = PairStats()
    build_pairs(rollouts, checks, verdicts, cfg, records=recs, stats=stats,
                judge_id=judge.judge_id if judge is not None else None)
    for sample, ro in zip(samples, rollouts):
        sample["accurate"] = bool(checks[ro.rollout_id].accurate)
        sample["verdict"] = verdicts[ro.rollout_id].verdict

    n = len(samples)
    by_type: dict[str, list[float]] = {}
    for s in samples:
        by_type.setdefault(s["problem_type"], []).append(s["accuracy"])
    mras = [s["mra"] for s in samples if s["mra"] is not None]
    verdict_counts = Counter(s["verdict"] for s in samples)
    summary = {
        "n": n,
        "accuracy": _mean([s["accuracy"] for s in samples]),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "count_by_type": {t: len(v) for t, v in sorted(by_type.items())},
        "mra": _mean(mras),
        "mra_count": len(mras),
        "format_rate": _mean([s["format"] for s in samples]),
        "reward_mean": _mean([s["reward"] for s in samples]),
        "accurate_frac": stats.accurate / n,
        "inconsistency_rate": stats.inconsistency_rate if judge is not None else None,
        "accurate_inconsistency_rate": stats.accurate_inconsistency_rate if judge is not None else None,
        "judged": verdict_counts.get("consistent", 0) + verdict_counts.get("inconsistent", 0),
        "verdicts": dict(sorted(verdict_counts.items())),
        "judge": judge.judge_id if judge is not None else None,
        "repetitive_frac": stats.repetitive / n,
        "response_tokens_mean": _mean([s["tokens"] for s in samples]),
        "truncated_frac": sum(s["finish_reason"] == "length" for s in samples) / n,
        "seconds": time.perf_counter() - t0,
        "generate_seconds": generate_seconds,
        "judge_seconds": judge_seconds if judge is not None else 0.0,
        "sampling": {"max_tokens": max_tokens, "temperature": temperature, "seed": seed},
        "reward_weights": dict(reward_fn.weights),
        "verifier_config_hash": cfg.config_hash(),
    }
    _log(progress, f"done in {summary['seconds']:.1f}s: accuracy {summary['accuracy']:.3f}")
    return EvalResult(summary, samples)


# ---- output -------------------------------------------------------------------------------------
def write_results(result: EvalResult, out_dir: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/results.json`` (``{"summary": ..., "meta": meta}``) and ``out_dir/samples.jsonl``
    (one sample per line), each atomically (temp file in the folder, fsync, rename). Returns the path
    of results.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / SAMPLES, result.samples)
    results = out / RESULTS
    atomic_write_text(results, json.dumps({"summary": result.summary, "meta": dict(meta or {})}, indent=2,
                                      ensure_ascii=False) + "\n")
    return results


def format_summary(summary: Mapping[str, Any]) -> str:
    """A small table: per-type accuracy (with counts), overall accuracy, MRA, format, inconsistency."""
    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [("records", str(summary["n"]))]
    for t, acc in summary["accuracy_by_type"].items():
        rows.append((f"accuracy {t} (n={summary['count_by_type'][t]})", num(acc)))
    rows += [("accuracy (all)", num(summary["accuracy"])),
             (f"MRA regression (n={summary.get('mra_count', 0)})", num(summary["mra"])),
             ("format", pct(summary["format_rate"])),
             ("inconsistency rate", pct(summary["inconsistency_rate"])),
             ("  among accurate", pct(summary["accurate_inconsistency_rate"])),
             ("judged", str(summary["judged"])),
             ("response tokens (mean)", num(summary["response_tokens_mean"])),
             ("truncated", pct(summary["truncated_frac"])),
             ("seconds", f"{summary['seconds']:.1f}")]
    return format_table(rows)
