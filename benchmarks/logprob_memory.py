"""Peak memory and time of chunked against naive per-token log-probs (issue 3, benchmark (c); goal:
peak-memory ratio <= 0.25 at V = 152064, T = 4096).

    python benchmarks/logprob_memory.py [--T 4096] [--V 152064] [--B 1] [--chunk N] [--device auto|cpu|cuda]
                                        [--threads 2] [--repeat 1]

Both variants get the same bf16 logits ``[B, T, V]`` (an input, not counted) and compute
``logp[b, t] = log_softmax(logits[b, t-1])[ids[b, t]]`` in float32:

- ``naive``: ``veripo.algos.naive_token_logprobs`` (float32 log-softmax of the whole ``[B, T, V]``);
- ``chunked``: ``veripo.algos.token_logprobs`` (custom autograd Function, float32 per chunk of T);
- ``chunked-autograd`` (fwd+bwd only): per-chunk log-softmax through plain autograd, which keeps every
  float32 chunk alive for the backward; it shows why `token_logprobs` recomputes chunks instead.

Modes: ``fwd`` under ``torch.no_grad`` (old / reference log-probs) and ``fwd+bwd`` (the policy update;
the loss is a weighted sum of the log-probs). Each (variant, mode) runs in its own subprocess. "Peak
extra" is the peak memory during the measured call minus the memory held just before it (logits, ids,
weights already allocated): on CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs;
glibc is told to mmap allocations over 128 KiB so freed memory returns to the OS), on CUDA
``torch.cuda.max_memory_allocated``. It includes the logits' gradient in fwd+bwd (B*T*V bf16, needed by
the LM head's backward in both variants). Prints a markdown table; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


# ----------------------------------------------------------------------------------------------------
# Worker: one (variant, mode) in a fresh process
# ----------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _chunked_plain_autograd(logits, ids, chunk):
    import torch

    parts = [torch.zeros(logits.shape[0], 1, device=logits.device)]
    for s in range(0, logits.shape[1] - 1, chunk):
        e = min(s + chunk, logits.shape[1] - 1)
        lp = torch.log_softmax(logits[:, s:e].float(), dim=-1)
        parts.append(lp.gather(-1, ids[:, s + 1 : e + 1, None]).squeeze(-1))
    return torch.cat(parts, dim=1)


def worker(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from veripo.algos import auto_chunk_size, naive_token_logprobs, token_logprobs

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    B, T, V = args.B, args.T, args.V
    chunk = args.chunk or auto_chunk_size(B, V)
    gen = torch.Generator().manual_seed(0)
    # bf16 logits without a float32 [B, T, V] intermediate: one random block copied along T
    block = torch.randn(B, min(T, 128), V, generator=gen).mul_(3).to(torch.bfloat16)
    logits = torch.empty(B, T, V, dtype=torch.bfloat16, device=device)
    for s in range(0, T, block.shape[1]):
        e = min(s + block.shape[1], T)
        logits[:, s:e].copy_(block[:, : e - s])
    del block
    ids = torch.randint(0, V, (B, T), generator=gen).to(device)
    w = torch.randn(B, T, generator=gen).to(device)
    fn = {
        "naive": naive_token_logprobs,
        "chunked": lambda x, i: token_logprobs(x, i, chunk),
        "chunked-autograd": lambda x, i: _chunked_plain_autograd(x, i, chunk),
    }[args.variant]
    backward = args.mode == "fwd+bwd"
    logits.requires_grad_(backward)

    def call(x, i, w):
        x.grad = None
        if backward:
            (fn(x, i) * w).sum().backward()
        else:
            with torch.no_grad():
                fn(x, i)
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up on a few positions (first-call overheads), not counted
    call(logits[:, :8].detach().clone().requires_grad_(backward), ids[:, :8], w[:, :8])

    times, peaks = [], []
    for _ in range(args.repeat):
        logits.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = _rss_bytes()
            if not _reset_hwm():  # fall back to ru_maxrss: valid only for the first, largest call
                import resource

                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        call(logits, ids, w)
        times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated() - base)
        else:
            peaks.append(_hwm_bytes() - base)
    return {"variant": args.variant, "mode": args.mode, "chunk": chunk, "time_s": min(times),
            "peak_extra": max(peaks), "logits_bytes": logits.numel() * logits.element_size()}


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def run_variant(args: argparse.Namespace, variant: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--mode", mode, "--T", str(args.T),
           "--V", str(args.V), "--B", str(args.B), "--device", args.device, "--threads", str(args.threads),
           "--repeat", str(args.repeat)] + (["--chunk", str(args.chunk)] if args.chunk else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--V", type=int, default=152064)
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None, help="positions per chunk (default: auto_chunk_size)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="calls per subprocess (min time, max peak)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per subprocess")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = [("naive", "fwd"), ("chunked", "fwd"), ("naive", "fwd+bwd"), ("chunked", "fwd+bwd"),
            ("chunked-autograd", "fwd+bwd")]
    rows = [run_variant(args, v, m) for v, m in jobs]
    naive = {r["mode"]: r for r in rows if r["variant"] == "naive"}
    print(f"\nlog-probs B={args.B} T={args.T} V={args.V}, bf16 logits "
          f"({rows[0]['logits_bytes'] / MiB:.0f} MiB, input, not counted), chunk={rows[1]['chunk']}, "
          f"device={args.device}, threads={args.threads}\n")
    print("| variant | mode | peak extra MiB | ratio to naive | time s | time ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        base = naive[r["mode"]]
        mem_ratio, time_ratio = r["peak_extra"] / base["peak_extra"], r["time_s"] / base["time_s"]
        print(f"| {r['variant']} | {r['mode']} | {r['peak_extra'] / MiB:.0f} | {mem_ratio:.3f} | "
              f"{r['time_s']:.2f} | {time_ratio:.2f} |")


if __name__ == "__main__":
    main()
