"""`PolicyEngine`: the one training engine. GRPO, SFT and every preference loss pass it a loss callable
and share its sharding (a single process or FSDP2), optimizer, checkpoints and weight export.

Loss contract (`train_step`)::

    loss_fn(logits_BTV: Tensor[B, T, V], micro: PolicyBatch, ctx: StepContext) -> (loss: 0-dim Tensor, metrics: dict)

* `logits_BTV` are the model's logits for ``micro.input_ids`` (compute dtype: float32, or bfloat16 under
  ``dtype="bfloat16"``); ``logits[:, t]`` predicts token ``t + 1`` (use `veripo.algos.token_logprobs`).
* The losses returned for all micro-batches on all ranks SUM to the loss of the global batch. Normalise
  with ``ctx.global_tokens`` (sum of loss_mask over the whole step, all ranks) or
  ``ctx.global_batch_size`` (sequences over the whole step, all ranks), never with the micro-batch's own
  size: e.g. token-mean is ``(per_token * micro.loss_mask).sum() / ctx.global_tokens``.
* The engine backpropagates each returned loss as it is and sums gradients over micro-batches and ranks
  (FSDP2's default averaging over ranks is switched off), so the parameters' gradients are exactly the
  gradient of that global loss; then it clips, steps AdamW and the LR schedule.
* `metrics` values are numbers (or 0-dim tensors); `train_step` reports their mean over micro-batches
  and ranks.

Under FSDP2 every public method is collective: all ranks call it, in the same order, each with its own
shard of the batch (shards may differ in size; ranks with fewer micro-batches run zero-loss padding
passes so the collectives line up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from veripo.algos import token_logprobs
from veripo.config import TrainConfig
from veripo.models import resolve_model
from veripo.train import checkpoint as ckpt
from veripo.train.batch import PolicyBatch
from veripo.train.optim import build_optimizer, build_scheduler
from veripo.train.weights import SafetensorsWriter, copy_model_files, full_tensor, iter_hf_weights, source_dtype

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, PolicyBatch, "StepContext"], "tuple[Tensor, dict[str, Any]]"]


@dataclass(frozen=True)
class StepContext:
    """What a loss function may need to know about the step its micro-batch belongs to."""

    global_batch_size: int   # sequences in the step: all micro-batches on all ranks
    global_tokens: int       # sum of loss_mask over the step: all micro-batches on all ranks
    micro_index: int         # index of this micro-batch on this rank
    num_micro_batches: int   # real micro-batches on this rank
    rank: int
    world_size: int
    step: int                # optimizer steps taken before this one


def is_vision_language(config: Any) -> bool:
    """True when the config is a vision-language model transformers loads with AutoModelForImageTextToText."""
    # transformers (here and in _load_model) not at module level: importing it sets
    # os.environ["TORCHINDUCTOR_CACHE_DIR"] (it imports torch._dynamo), and importing veripo changes nothing
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    has_vision = getattr(config, "vision_config", None) is not None
    return has_vision and config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PolicyEngine:
    """A causal LM (or Qwen2.5-VL) under training, in one process or FSDP2-sharded over a process group.

    Args:
        cfg: the training configuration.
        model_path: an HF folder, an embedded model name or a hub id (`veripo.models.resolve_model`).
        dist: for ``strategy="fsdp2"``, the process group to shard over (default: the default group,
            which `veripo.train.init_process_group` creates); ignored for ``strategy="single"``.

    Master weights and AdamW state are float32; with ``dtype="bfloat16"`` forward and backward run in
    bfloat16 (autocast, or FSDP2's mixed-precision policy with float32 gradient reduction).
    """

    def __init__(self, cfg: TrainConfig, model_path: str, dist: Any = None):
        self.cfg = cfg
        self.model_dir = resolve_model(model_path)
        self.group = self._process_group(dist)
        self.rank = torch.distributed.get_rank(self.group) if self.group is not None else 0
        self.world_size = torch.distributed.get_world_size(self.group) if self.group is not None else 1
        self.device = self._pick_device()
        self.compute_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        seed_everything(cfg.seed)  # identical initial weights (LoRA init included) on every rank
        self.model, self.base_model, self.is_vl = self._load_model()
        self.is_peft = cfg.lora is not None
        if self.group is not None:
            self._shard()
        else:
            self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.step = 0
        seed_everything(cfg.seed + self.rank)  # per-rank stream for dropout and sampling

    # -- set-up ------------------------------------------------------------------------------------
    def _process_group(self, group: Any) -> Any:
        if self.cfg.strategy == "single":
            if isinstance(group, torch.distributed.ProcessGroup) and torch.distributed.get_world_size(group) > 1:
                raise ValueError("TrainConfig.strategy=single was given a process group of "
                                 f"{torch.distributed.get_world_size(group)} ranks, which would train unsynchronised "
                                 "copies. Fix: strategy=fsdp2, or one trainer rank")
            return None
        if not torch.distributed.is_initialized():
            raise RuntimeError("TrainConfig.strategy=fsdp2 needs torch.distributed initialised first. Fix: call "
                               "veripo.train.init_process_group(rank, world_size, ...) on every rank")
        return group if isinstance(group, torch.distributed.ProcessGroup) else torch.distributed.group.WORLD

    def _pick_device(self) -> torch.device:
        want = self.cfg.device
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError("TrainConfig.device=cuda but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())

    def _load_model(self) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        config = AutoConfig.from_pretrained(self.model_dir)
        is_vl = is_vision_language(config)
        cls = AutoModelForImageTextToText if is_vl else AutoModelForCausalLM
        kwargs = {"attn_implementation": self.cfg.attn_implementation} if self.cfg.attn_implementation else {}
        base = cls.from_pretrained(self.model_dir, dtype=torch.float32, **kwargs)
        base.config.use_cache = False
        if self.cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.cfg.lora is None:
            return base, base, is_vl
        return self._wrap_lora(base), base, is_vl

    def _wrap_lora(self, base: torch.nn.Module) -> torch.nn.Module:
        import peft  # only with LoRA: peft imports transformers' model code (and torchvision)
        from peft.tuners.lora import Linear as LoraLinear

        lc = self.cfg.lora
        extra = {}
        if lc.last_layers is not None:
            text_cfg = getattr(base.config, "text_config", base.config)
            n = text_cfg.num_hidden_layers
            extra = {"layers_to_transform": list(range(max(0, n - lc.last_layers), n)), "layers_pattern": "layers"}
        model = peft.get_peft_model(base, peft.LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                          target_modules=list(lc.target_modules), **extra))
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and not isinstance(module, LoraLinear):
                kind = type(module.base_layer).__name__
                raise ValueError(f"TrainConfig.lora.target_modules matches {name} ({kind}); only Linear layers are "
                                 "supported. Fix: name Linear projections only")
        return model

    def _shard(self) -> None:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        mesh = DeviceMesh.from_group(self.group, self.device.type)
        if self.compute_dtype == torch.float32:
            mp = MixedPrecisionPolicy()
        else:
            mp = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        self.model.to(self.device)
        layer_classes = set(getattr(self.base_model, "_no_split_modules", None) or ())
        for module in list(self.model.modules()):
            if type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh, mp_policy=mp)
        fully_shard(self.model, mesh=mesh, mp_policy=mp)
        for module in self.model.modules():
            if isinstance(module, FSDPModule):  # gradients SUM over ranks (see the loss contract)
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)

    def reset_optimizer(self, lr: float | None = None, warmup_steps: int | None = None,
                        total_steps: int | None = None, lr_schedule: str | None = None) -> None:
        """Fresh AdamW state and LR schedule (e.g. at a new stage), optionally with new LR settings."""
        changes = {k: v for k, v in dict(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps,
                                         lr_schedule=lr_schedule).items() if v is not None}
        self.cfg = dataclasses.replace(self.cfg, **changes)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)

    # -- collectives -------------------------------------------------------------------------------
    def _sum_over_ranks(self, values: list[float], op: Any = None) -> list[float]:
        if self.group is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM, group=self.group)
        return t.tolist()

    def _barrier(self) -> None:
        if self.group is not None:
            torch.distributed.barrier(group=self.group)

    # -- forward -----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.group is None and self.compute_dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def compute_logits(self, micro: PolicyBatch) -> Tensor:
        """Logits [B, T, V] of one micro-batch (already on the engine's device)."""
        with self._autocast():
            return self.model(**micro.model_inputs(), use_cache=False).logits

    forward = compute_logits

    def _micro_batches(self, batch: PolicyBatch, size: int) -> tuple[list[PolicyBatch], int]:
        """This rank's micro-batches and the number every rank must run (the most any rank has)."""
        if batch.batch_size == 0:
            raise ValueError("PolicyEngine got an empty batch; every rank needs at least one sequence")
        micros = batch.to(self.device).split(size)
        n = int(self._sum_over_ranks([len(micros)], torch.distributed.ReduceOp.MAX)[0])
        return micros, n

    @torch.no_grad()
    def logprobs(self, batch: PolicyBatch, micro_batch_size: int | None = None) -> Tensor:
        """Log-probs [B, T] (float32, on the batch's device) of the batch's tokens under the current weights.

        ``logp[b, t]`` is the log-prob of ``input_ids[b, t]`` given the tokens before it; position 0 and
        padding are 0. Computed in eval mode (no dropout), for old and reference log-probs.
        """
        was_training = self.model.training
        self.model.eval()
        micros, n = self._micro_batches(batch, micro_batch_size or self.cfg.micro_batch_size)
        parts = []
        for i in range(n):
            micro = micros[i] if i < len(micros) else micros[0].slice(0, 1)
            logp = token_logprobs(self.compute_logits(micro), micro.input_ids, chunk_size=self.cfg.logprob_chunk_size)
            if i < len(micros):
                parts.append(logp.float() * micro.attention_mask)
        self.model.train(was_training)
        return torch.cat(parts).to(batch.input_ids.device)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, batch: PolicyBatch, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on `batch` (this rank's shard of the global batch); see the module docstring.

        Returns global metrics: ``loss`` (the global batch's loss), ``grad_norm`` (before clipping),
        ``lr`` (used in this step), ``tokens`` and ``sequences`` (global), ``time_s``, ``step`` (after
        this one), ``skipped`` (1 when the gradient was not finite and no update was made), plus the
        loss function's metrics averaged over micro-batches and ranks.
        """
        t0 = time.perf_counter()
        self.model.train()
        micros, n = self._micro_batches(batch, self.cfg.micro_batch_size)
        global_b, global_tokens = self._sum_over_ranks([batch.batch_size, batch.num_tokens()])
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums: dict[str, float] = {}
        for i in range(n):
            if i >= len(micros):  # padding pass: keeps FSDP2's collectives in step with busier ranks
                (self.compute_logits(micros[0].slice(0, 1)).sum() * 0.0).backward()
                continue
            ctx = StepContext(int(global_b), int(global_tokens), i, len(micros), self.rank, self.world_size, self.step)
            loss, metrics = loss_fn(self.compute_logits(micros[i]), micros[i], ctx)
            self._check_loss(loss)
            loss.backward()
            loss_sum += loss.detach().double()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v)
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = self._clip_gradients()
        skipped = not math.isfinite(grad_norm)
        if skipped:
            log.warning("step %d: gradient norm is %s; skipping the update", self.step, grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return self._step_metrics(loss_sum, metric_sums, len(micros), grad_norm, lr, global_b, global_tokens,
                                  skipped, time.perf_counter() - t0)

    @staticmethod
    def _check_loss(loss: Any) -> None:
        if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
            raise TypeError("loss_fn must return (loss, metrics) with loss a 0-dim tensor that requires grad, got "
                            f"{type(loss).__name__} {getattr(loss, 'shape', '')}")

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(full_tensor(norm))

    def _step_metrics(self, loss_sum: Tensor, metric_sums: dict[str, float], n_local: int, grad_norm: float,
                      lr: float, global_b: float, global_tokens: float, skipped: bool, seconds: float) -> dict:
        keys = sorted(metric_sums)
        reduced = self._sum_over_ranks([float(loss_sum)] + [metric_sums[k] / n_local for k in keys])
        out = {k: v / self.world_size for k, v in zip(keys, reduced[1:])}
        out.update(loss=reduced[0], grad_norm=grad_norm, lr=lr, tokens=int(global_tokens), sequences=int(global_b),
                   time_s=seconds, step=self.step, skipped=float(skipped))
        return out

    # -- weights out -------------------------------------------------------------------------------
    def named_parameters_for_sync(self, dtype: torch.dtype | str | None = None) -> Iterator[tuple[str, Tensor]]:
        """Full weights with HF checkpoint names (LoRA merged, ``lm_head.weight`` even when tied).

        Under FSDP2 each tensor is gathered from all ranks: every rank must consume the whole iterator.
        Tensors are on the engine's device; `dtype` casts them (default: float32 master weights).
        """
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        with torch.no_grad():
            yield from iter_hf_weights(self.model, self.base_model, self.is_peft, dtype=dtype)

    def export_hf(self, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                  max_shard_bytes: int = 5 * 1024**3) -> Path:
        """Write an HF folder (safetensors, config, tokenizer and processor files) that transformers and vLLM load.

        LoRA is merged. `dtype` defaults to the source model's declared dtype. The folder is written
        beside `path` and renamed into place by rank 0; every rank must call this.
        """
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        dtype = dtype or source_dtype(self.model_dir)
        final = Path(path).absolute()
        tmp = final.with_name(f".{final.name}.tmp")
        writer = None
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            writer = SafetensorsWriter(tmp, max_shard_bytes)
        with torch.no_grad():
            for name, tensor in iter_hf_weights(self.model, self.base_model, self.is_peft, dtype=dtype,
                                                include_tied=False):
                if writer is not None:
                    writer.add(name, tensor)
        if writer is not None:
            writer.close()
            copy_model_files(self.model_dir, tmp, dtype)
            ckpt.replace_dir(tmp, final)
        self._barrier()
        return final

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Model, optimizer, LR schedule, step and RNG states, written atomically (see `veripo.train.checkpoint`);
        `meta` goes into its marker too (the loop's stage id and stage step)."""
        meta = {"strategy": self.cfg.strategy, "model_path": self.model_dir, "lora": self.is_peft, **(meta or {})}
        return ckpt.save(path, self.model, self.optimizer, self.scheduler, self.step, self.rank, self.world_size,
                         self.group, meta)

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a `save_checkpoint` folder (from any number of ranks); the next step continues exactly."""
        info = ckpt.load(path, self.model, self.optimizer, self.scheduler, self.rank, self.group)
        self.step = int(info["step"])
        return info

