"""Command lines for public benchmarks (wired into ``python -m veripo.eval``):

    python -m veripo.eval --benchmark vsi_bench|mmvu|tomato|lvbench|video_mme|FILE --video-root DIR \\
        --model PATH [--template verIPO|video_r1|default] [--use-video] [--fps F] [--max-frames N]
        [--max-pixels P] [--limit N] [--shard i/n] [--skip-missing] [--out DIR]
    python -m veripo.eval score PRED.json [--scorer verIPO|video_r1|veripo] [--rules vsi_bench] [--out FILE]
    python -m veripo.eval merge SHARD_DIR... --out DIR

Exit status 2 on bad input (`veripo.errors.UserError`: the message names the file, record or flag).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from veripo.eval.benchmarks import BenchItem, BenchmarkError, load_benchmark, resolve_benchmark_file
from veripo.eval.templates import DEFAULTS, TEMPLATES, messages, user_text


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("public benchmarks (instead of --data)")
    g.add_argument("--benchmark", help="vsi_bench, mmvu, tomato, lvbench, video_mme (VerIPO's files), videommmu ... "
                                       "(Video-R1's eval_<name>.json) or a FILE in either layout")
    g.add_argument("--bench-dir", help="folder holding <name>.json (default $VERIPO_BENCH_DIR, else ./evaluation/json)")
    g.add_argument("--rules", help="benchmark rules for a FILE whose name is not a benchmark's (e.g. vsi_bench)")
    g.add_argument("--video-root", help="folder the records' video paths are relative to")
    g.add_argument("--template", choices=TEMPLATES,
                   help="prompt and scoring of: verIPO, video_r1 (the papers) or default (veripo's training prompt, "
                        "scored by veripo's rewards); default: the file's layout")
    g.add_argument("--scorer", choices=("verIPO", "video_r1", "veripo"), help="override the template's scorer")
    g.add_argument("--fps", type=float, help="frames per second sampled (default: the template's paper, 2.0)")
    g.add_argument("--max-frames", type=int, help="most frames per clip (default: verIPO 128, video_r1 16)")
    g.add_argument("--max-pixels", type=int, help="most pixels per frame (default: verIPO 200704, video_r1 100352)")
    g.add_argument("--top-p", type=float, help="nucleus sampling (default: verIPO 1.0, video_r1 0.001)")
    g.add_argument("--shard", help="i/n: evaluate every n-th item from i (one process per GPU; then `merge`)")
    g.add_argument("--skip-missing", action="store_true",
                   help="evaluate the items whose video exists; the missing ones are counted and listed")
    g.add_argument("--batch-size", type=int, default=64, help="items per generate call and per resume point")


def _default_scorer(template: str) -> str:
    return "veripo" if template == "default" else template


def run_benchmark_cli(args: argparse.Namespace) -> int:
    from veripo.eval.bench import format_bench_table, run_benchmark, split_missing, video_file
    from veripo.eval.shards import parse_shard, select

    t_start = time.perf_counter()
    progress = not args.no_progress
    path = resolve_benchmark_file(args.benchmark, args.bench_dir)
    items, spec = load_benchmark(path, rules=args.rules)
    template = args.template or items[0].layout
    scorer = args.scorer or _default_scorer(template)
    paper = DEFAULTS[template]
    fps = args.fps if args.fps is not None else paper.fps
    max_frames = args.max_frames if args.max_frames is not None else paper.max_frames
    max_pixels = args.max_pixels if args.max_pixels is not None else paper.max_pixels
    max_tokens = args.max_tokens if args.max_tokens is not None else paper.max_tokens
    temperature = args.temperature if args.temperature is not None else paper.temperature
    top_p = args.top_p if args.top_p is not None else paper.top_p
    for name, v in (("--limit", args.limit), ("--max-tokens", max_tokens), ("--batch-size", args.batch_size),
                    ("--max-frames", max_frames), ("--max-pixels", max_pixels)):
        if v is not None and v < 1:
            raise BenchmarkError(f"{name} must be >= 1, got {v}")
    items = select(items, args.limit, parse_shard(args.shard))
    if not items:
        raise BenchmarkError(f"{path}: no items in this selection (--limit {args.limit}, --shard {args.shard})")
    check_root = args.video_root if args.use_video or args.video_root else None
    if args.use_video and not args.video_root:
        raise BenchmarkError("--use-video needs --video-root DIR (the folder the records' video paths are relative to)")
    if check_root is not None:
        items, missing = split_missing(items, check_root, args.skip_missing)
        if not items:
            raise BenchmarkError(f"all {len(missing)} videos are missing under {check_root}. Fix: check --video-root")
    else:
        missing = []
    caption = not args.use_video
    texts = {it.qid: user_text(it, template, caption=caption) for it in items}  # errors before a model loads

    from veripo.models import resolve_model

    model_path = resolve_model(args.model)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{model_path}: cannot load a tokenizer ({e.__class__.__name__}). Fix: point --model "
                             "at a full HF model folder") from e
    processor = None
    video_cfg = None
    if args.use_video:
        from transformers import AutoProcessor

        from veripo.data.video import VideoConfig

        processor = AutoProcessor.from_pretrained(model_path)
        video_cfg = VideoConfig(fps=fps, nframes=None, max_frames=max(2, max_frames), min_frames=2,
                                max_pixels=max_pixels, min_pixels=min(4 * 28 * 28, max_pixels), on_error="raise")

    def prompt_of(it: BenchItem) -> str:
        if processor is not None and it.video:
            msgs = messages(it, texts[it.qid], {"type": "video", "video": video_file(it, args.video_root)})
            return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tokenizer.apply_chat_template(messages(it, texts[it.qid]), tokenize=False, add_generation_prompt=True)

    prompts = {it.qid: prompt_of(it) for it in items}
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts.values())

    from veripo.data.video import load_video
    from veripo.rollout import GenerationRequest

    def make_request(it: BenchItem):
        video = None
        if video_cfg is not None and it.video:
            video = load_video(video_file(it, args.video_root), video_cfg)
        return GenerationRequest(prompt=prompts[it.qid], video=video, request_id=it.qid)

    import torch

    from veripo.config import RolloutConfig
    from veripo.rollout import SamplingConfig, build_engine

    on_cpu = not torch.cuda.is_available()
    # a clip costs at most ceil(frames / 2) * pixels / 28^2 tokens (Qwen2.5-VL merges 2 frames, 28x28 patches)
    video_tokens = -(-max_frames // 2) * (max_pixels // (28 * 28)) if args.use_video else 0
    max_len = max(args.max_model_len, longest + video_tokens + max_tokens)
    rcfg = RolloutConfig(backend=args.backend, dtype=args.dtype or ("float32" if on_cpu else "auto"),
                         max_model_len=max_len, enforce_eager=on_cpu, seed=args.seed, logprobs_mode="processed",
                         limit_mm_per_prompt={"video": 1, "image": 0} if args.use_video else None)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                              seed=args.seed if temperature > 0 else None, logprobs="none")
    out = Path(args.out) if args.out else Path.cwd() / "eval_results" / Path(str(args.model).rstrip("/")).name / spec.name
    if args.shard and not args.out:
        out = out / f"shard{args.shard.replace('/', 'of')}"
    run_meta = {"benchmark_file": str(Path(path).resolve()), "benchmark": spec.name, "template": template,
                "scorer": scorer, "model": str(args.model), "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "use_video": bool(args.use_video), "fps": fps, "max_frames": max_frames,
                "max_pixels": max_pixels}
    if progress:
        print(f"[eval] {spec.name}: {len(items)} items from {path} ({template} template, {scorer} scoring); "
              f"model {model_path}", file=sys.stderr, flush=True)
    engines: list = []  # built on the first batch: a finished run being re-summarised loads no model

    def generate(requests, sampling_cfg):
        if not engines:
            engines.append(build_engine(rcfg, model_path))
        return [group[0] for group in engines[0].generate(requests, sampling_cfg, n=1)]

    try:
        summary = run_benchmark(items, spec, generate, make_request, out, scorer=scorer, sampling=sampling,
                                run_meta=run_meta, missing=missing, batch_size=args.batch_size, progress=progress,
                                meta={"model_path": model_path, "limit": args.limit, "shard": args.shard,
                                      "seed": args.seed, "argv": sys.argv[1:],
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    finally:
        for engine in engines:
            engine.close()
    print(format_bench_table(summary))
    print(f"results: {out / 'results.json'} (samples: {out / 'samples.jsonl'}) in "
          f"{time.perf_counter() - t_start:.1f}s")
    return 0


def score_main(argv: Sequence[str]) -> int:
    from veripo.eval.bench import format_bench_table, score_predictions

    p = argparse.ArgumentParser(prog="python -m veripo.eval score",
                                description="Re-score a predictions file (VerIPO's, Video-R1's or veripo's samples.jsonl).")
    p.add_argument("predictions", help="predictions JSON / JSONL")
    p.add_argument("--scorer", choices=("verIPO", "video_r1", "veripo"), help="default: the file's layout")
    p.add_argument("--rules", help="benchmark rules (e.g. vsi_bench: numbers by MRA); default: from the file name")
    p.add_argument("--out", help="write {summary, rows} as JSON here")
    args = p.parse_args(argv)
    try:
        summary, rows = score_predictions(args.predictions, scorer=args.scorer, rules=args.rules)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_bench_table(summary))
    if args.out:
        from veripo.run_dir import atomic_write_text

        atomic_write_text(args.out, json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    return 0


def merge_main(argv: Sequence[str]) -> int:
    from veripo.eval.bench import format_bench_table, merge_dirs

    p = argparse.ArgumentParser(prog="python -m veripo.eval merge", description="Combine the shards of one run.")
    p.add_argument("shards", nargs="+", help="the --out folders of the shard runs")
    p.add_argument("--out", required=True, help="folder for the merged samples.jsonl and results.json")
    args = p.parse_args(argv)
    try:
        summary = merge_dirs(args.shards, args.out)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_bench_table(summary))
    return 0


__all__ = ["add_benchmark_args", "run_benchmark_cli", "score_main", "merge_main"]
