"""Plain worker classes: one rollout engine, one trainer rank, one reward scorer."""

from __future__ import annotations

import inspect
import os
import socket
import time
from typing import Any, Iterable, Sequence

from veripo import compat
from veripo.rewards import RewardFunction
from verifier.judge import JUDGES

# Ray starts every actor and task in a fresh worker that imports this module, also those that need no
# torch (reward scorers, the rendezvous probe). So torch, veripo.rollout and veripo.train (torch 1.2-4 s
# and 210 MiB; veripo.train 0.9 s and 50 MiB more) are imported inside the classes that use them (the
# rollout engine's after setup_vllm_cpu()). ray: importing it changes sys.path and os.environ (see
# veripo.workers.group), and these classes also run outside Ray (tests, benchmarks).


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def node_info() -> dict:
    """Where this process runs: Ray node id (None outside Ray), node IP, hostname, pid."""
    node_id, ip = None, "127.0.0.1"
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
            ip = ray.util.get_node_ip_address()
    except ImportError:
        pass
    return {"node_id": node_id, "ip": ip, "hostname": socket.gethostname(), "pid": os.getpid()}


def rendezvous_address() -> dict:
    """`node_info` plus a TCP port free on every interface of this node: run where trainer rank 0 will,
    it gives the FSDP2 ranks a rendezvous address that ranks on other nodes can reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return {**node_info(), "port": port}


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class RolloutWorker:
    """Owns one `RolloutEngine` (vLLM or HF) and receives weights in buckets."""

    def __init__(self, rollout_cfg, model_path: str, threads: int | None = None):
        compat.setup_vllm_cpu()
        _set_threads(threads)
        from veripo.rollout import build_engine

        self.engine = build_engine(rollout_cfg, model_path)

    @classmethod
    def from_engine(cls, engine) -> "RolloutWorker":
        """A worker around an engine built elsewhere (tests, benchmarks)."""
        worker = cls.__new__(cls)
        worker.engine = engine
        return worker

    def generate(self, requests, sampling, n: int):
        return self.engine.generate(requests, sampling, n)

    def update_weights(self, buckets: Sequence[Any]) -> dict:
        """`buckets`: a list of ``{hf_name: tensor}`` dicts (or Ray object refs to them)."""
        t0 = time.perf_counter()
        total = {"bytes": 0, "tensors": 0}

        def stream() -> Iterable:
            for bucket in buckets:
                if not isinstance(bucket, dict):
                    import ray

                    bucket = ray.get(bucket)
                for name, tensor in bucket.items():
                    total["bytes"] += tensor.numel() * tensor.element_size()
                    total["tensors"] += 1
                    yield name, tensor

        info = self.engine.update_weights(stream()) or {}
        return {**info, **total, "seconds": time.perf_counter() - t0}

    def verify_weights(self, buckets: Sequence[Any]) -> list[str]:
        """Names whose weights inside the engine differ from `buckets` (empty: equal, bit for bit)."""
        import ray

        named = [(n, t) for b in buckets for n, t in (b if isinstance(b, dict) else ray.get(b)).items()]
        return self.engine.verify_weights(named)

    def supports_sleep(self) -> bool:
        return bool(getattr(self.engine, "supports_sleep", False))

    def sleep(self, level: int | None = None) -> None:
        """Free the engine's device memory (`level` as vLLM's; engines without levels just sleep)."""
        fn = self.engine.sleep
        if level is not None and _takes(fn, "level"):
            fn(level=level)
        else:
            fn()

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate all memory (None) or only ``["weights"]`` / ``["kv_cache"]`` where the engine can."""
        fn = self.engine.wake_up
        if tags is not None and _takes(fn, "tags"):
            fn(tags=tags)
        else:
            fn()

    def node(self) -> dict:
        return node_info()

    def close(self) -> None:
        self.engine.close()


class TrainerWorker:
    """One rank of the policy engine (a single process when world_size == 1)."""

    def __init__(self, train_cfg, model_path: str, rank: int = 0, world_size: int = 1,
                 master_addr: str | None = None, master_port: int | None = None, threads: int | None = None):
        _set_threads(threads)
        from veripo.train import PolicyEngine, init_process_group

        self.rank, self.world_size = rank, world_size
        dist = None
        if world_size > 1:
            dist = init_process_group(rank, world_size, master_addr or "127.0.0.1", master_port)
        self.engine = PolicyEngine(train_cfg, model_path, dist=dist)

    def train_step(self, batch, loss_fn) -> dict:
        return self.engine.train_step(batch, loss_fn)

    def logprobs(self, batch):
        return self.engine.logprobs(batch)

    def set_lr(self, lr: float, warmup_steps: int = 0, total_steps: int | None = None) -> None:
        self.engine.reset_optimizer(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps)

    def weight_buckets(self, bucket_mb: int = 256, dtype: str | None = None) -> list[dict]:
        """Full weights by HF name in buckets of about `bucket_mb` (every rank must call; rank 0 returns them)."""
        import torch

        buckets: list[dict] = []
        current: dict = {}
        size = 0
        limit = bucket_mb * 2**20
        td = getattr(torch, dtype) if dtype else None
        for name, tensor in self.engine.named_parameters_for_sync():
            if self.rank != 0:
                continue
            t = tensor.detach().to("cpu", dtype=td or tensor.dtype).contiguous()
            current[name] = t
            size += t.numel() * t.element_size()
            if size >= limit:
                buckets.append(current)
                current, size = {}, 0
        if current:
            buckets.append(current)
        return buckets

    def save_checkpoint(self, path: str, meta: dict | None = None) -> None:
        self.engine.save_checkpoint(path, meta)

    def load_checkpoint(self, path: str) -> None:
        self.engine.load_checkpoint(path)

    def export_hf(self, path: str) -> None:
        self.engine.export_hf(path)

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> dict:
        return {**node_info(), "rank": self.rank}


class RewardScorer:
    """Scores responses against their records with the rule rewards (one score + named components)."""

    def __init__(self, weights: dict[str, float]):
        self.fn = RewardFunction(weights)

    def score(self, responses: Sequence[str], records: Sequence[Any]) -> list:
        return [self.fn(r, rec) for r, rec in zip(responses, records)]


class JudgeWorker:
    """The verifier's judge on its own engine: a `verifier.judge` backend (vLLM in process by default)."""

    def __init__(self, backend: str, model: str | None, max_tokens: int, options: dict | None = None,
                 threads: int | None = None):
        # the judge loads float32 checkpoints into bfloat16 on CPU: vLLM warns once per tensor otherwise
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        compat.setup_vllm_cpu()
        _set_threads(threads)
        self.backend = JUDGES.get(backend)(model=model, max_tokens=max_tokens, **(options or {}))

    def node(self) -> dict:
        return node_info()

    def info(self) -> dict:
        return {"judge_id": self.backend.judge_id, "supports_prefill": bool(getattr(self.backend, "supports_prefill", False))}

    def judge_batch(self, requests: list) -> list[str]:
        return self.backend.judge_batch(requests)

