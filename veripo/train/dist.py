"""torch.distributed set-up for the policy engine: one process per rank, gloo on CPU, nccl on GPU.

* `init_process_group(rank, world_size, master_addr, master_port, backend)`: what each rank calls (the Ray
  trainer group calls it inside each actor);
* `init_process_group_from_env()`: the same from torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT, LOCAL_RANK);
* `run_on_local_ranks(fn, world_size, *args)`: run ``fn(rank, world_size, *args)`` on N local processes
  (spawned, gloo by default) and return the N results; for tests and CPU runs.
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue as queue_mod
import socket
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, master_addr: str | None = "127.0.0.1",
                       master_port: int | None = 29500, backend: str | None = None, local_rank: int | None = None,
                       timeout_s: float = 1800.0) -> dist.ProcessGroup:
    """Join the default process group as `rank` of `world_size` and return it (pass it to PolicyEngine).

    `backend` defaults to nccl when CUDA is available, else gloo; `master_addr`/`master_port` None
    mean 127.0.0.1 and 29500.
    With nccl, the process binds to GPU ``local_rank`` (default: LOCAL_RANK, else 0; a Ray actor sees
    only its own GPU as device 0).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    backend = backend or default_backend()
    master_addr, master_port = master_addr or "127.0.0.1", int(master_port or 29500)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port))
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        torch.cuda.set_device(local % torch.cuda.device_count())
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process")
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.group.WORLD


def init_process_group_from_env(backend: str | None = None) -> dist.ProcessGroup:
    """`init_process_group` from torchrun's environment variables."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError as e:
        raise RuntimeError(f"environment variable {e.args[0]} is not set; launch with torchrun or call "
                           "init_process_group(rank, world_size, ...)") from None
    return init_process_group(rank, world, os.environ.get("MASTER_ADDR", "127.0.0.1"),
                              int(os.environ.get("MASTER_PORT", 29500)), backend,
                              int(os.environ.get("LOCAL_RANK", 0)))


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _rank_main(fn: Callable[..., Any], rank: int, world_size: int, port: int, backend: str,
               args: tuple, results: Any) -> None:
    try:
        init_process_group(rank, world_size, "127.0.0.1", port, backend, local_rank=rank)
        value = fn(rank, world_size, *args)
        results.put((rank, True, pickle.dumps(value)))  # plain pickle: tensors travel as bytes, not shm
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        destroy_process_group()


def run_on_local_ranks(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                       timeout_s: float = 600.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on `world_size` spawned processes joined in one group.

    `fn` must be importable by name (a module-level function). Returns the ranks' results in rank order;
    if a rank fails, the others are stopped and a RuntimeError carries that rank's traceback.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, backend, args, results), daemon=False)
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        while len(out) < world_size:
            try:
                rank, ok, payload = results.get(timeout=timeout_s)
            except queue_mod.Empty:
                raise RuntimeError(f"run_on_local_ranks: no result within {timeout_s:.0f} s") from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{payload}")
            out[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            if len(out) < world_size and p.is_alive():
                p.terminate()
            p.join(timeout=60)
    return [out[r] for r in range(world_size)]
