"""`PolicyBatch`: the one typed batch the policy engine trains on and scores.

Shapes: B sequences, T tokens (prompt + response, right-padded), Nv videos and Ni images in the whole
batch, P patches. Token t of sequence b counts in a loss iff ``loss_mask[b, t] == 1``; the log-prob of
that token is predicted from position t - 1 (`veripo.algos.token_logprobs` aligns it so).

Qwen2.5-VL inputs stay per sample: the processor concatenates every video's patches in sample order, so
slicing samples i:j means slicing the videos those samples own (``videos_per_sample``) and the patch
rows those videos own (``prod(video_grid_thw)`` rows each). Images work the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

# [B, T] per-token fields (besides input_ids) and the value they are padded with.
_TOKEN_PAD = {"attention_mask": 0, "loss_mask": 0, "old_logp": 0.0, "ref_logp": 0.0, "mm_token_type_ids": 0}


@dataclass(frozen=True)
class _Visual:
    """One kind of visual input: patch rows, a [N, 3] grid per item, per-item extras, items per sample."""

    pixels: str
    grid: str
    per_item: tuple[str, ...]
    count: str


_VISUALS = (
    _Visual("pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",), "videos_per_sample"),
    _Visual("pixel_values", "image_grid_thw", (), "images_per_sample"),
)
_MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw",
                 "second_per_grid_ts", "pixel_values", "image_grid_thw")


@dataclass(frozen=True)
class PolicyBatch:
    """Sequences to score or train on, with everything a loss needs, sliceable by sample."""

    input_ids: Tensor                              # [B, T] long, prompt + response, right-padded
    attention_mask: Tensor                         # [B, T] 1 on real tokens, 0 on padding
    loss_mask: Tensor                              # [B, T] 1 on response tokens that count in the loss
    advantages: Tensor | None = None               # [B] one advantage per sequence (GRPO)
    old_logp: Tensor | None = None                 # [B, T] log-probs under the rollout-time policy
    ref_logp: Tensor | None = None                 # [B, T] log-probs under the frozen reference
    mm_token_type_ids: Tensor | None = None        # [B, T] 0 text, 1 image, 2 video (Qwen2.5-VL processor)
    pixel_values_videos: Tensor | None = None      # [sum_v prod(video_grid_thw[v]), D] all videos' patches
    video_grid_thw: Tensor | None = None           # [Nv, 3] long, (t, h, w) patches per video
    second_per_grid_ts: Tensor | None = None       # [Nv] seconds per temporal patch
    videos_per_sample: Tensor | None = None        # [B] long; defaults to one each when Nv == B
    pixel_values: Tensor | None = None             # [sum_i prod(image_grid_thw[i]), D] all images' patches
    image_grid_thw: Tensor | None = None           # [Ni, 3] long
    images_per_sample: Tensor | None = None        # [B] long; defaults to one each when Ni == B
    extras: dict[str, Tensor] = field(default_factory=dict)  # loss-specific, each [B, ...]

    def __post_init__(self) -> None:
        ids = self.input_ids
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"PolicyBatch.input_ids must be a [B, T] long tensor, got {tuple(ids.shape)} {ids.dtype}")
        for name in _TOKEN_PAD:
            value = getattr(self, name)
            if value is not None and value.shape != ids.shape:
                raise ValueError(f"PolicyBatch.{name} has shape {tuple(value.shape)}; "
                                 f"expected [B, T] = {tuple(ids.shape)}")
        if ids.shape[1] > 1 and bool((self.attention_mask[:, 1:] > self.attention_mask[:, :-1]).any()):
            raise ValueError("PolicyBatch.attention_mask must be right-padded (ones, then zeros, in every row)")
        for name, value in [("advantages", self.advantages), *((f"extras[{k!r}]", v) for k, v in self.extras.items())]:
            if value is not None and (value.dim() == 0 or value.shape[0] != ids.shape[0]):
                raise ValueError(f"PolicyBatch.{name} must have B = {ids.shape[0]} rows, "
                                 f"got shape {tuple(value.shape)}")
        for vis in _VISUALS:
            self._check_visual(vis)

    def _check_visual(self, vis: _Visual) -> None:
        pixels, grid = getattr(self, vis.pixels), getattr(self, vis.grid)
        if pixels is None and grid is None:
            for name in (*vis.per_item, vis.count):
                if getattr(self, name) is not None:
                    raise ValueError(f"PolicyBatch.{name} is set but {vis.pixels} is not")
            return
        if pixels is None or grid is None or grid.dim() != 2 or grid.shape[1] != 3:
            raise ValueError(f"PolicyBatch.{vis.pixels} needs {vis.grid} of shape [N, 3] (and vice versa)")
        if self.mm_token_type_ids is None:
            raise ValueError(f"PolicyBatch.mm_token_type_ids is required with {vis.pixels}: Qwen2.5-VL builds its "
                             "3D positions from it. Fix: keep the processor's mm_token_type_ids output")
        count = getattr(self, vis.count)
        if count is None:
            if grid.shape[0] != self.batch_size:
                raise ValueError(f"PolicyBatch.{vis.count} is required when the batch has {grid.shape[0]} "
                                 f"{vis.grid} rows for {self.batch_size} sequences")
            count = torch.ones(self.batch_size, dtype=torch.long, device=grid.device)
            object.__setattr__(self, vis.count, count)
        if count.shape != (self.batch_size,) or int(count.sum()) != grid.shape[0]:
            raise ValueError(f"PolicyBatch.{vis.count} must be [B] and sum to {grid.shape[0]} ({vis.grid} rows)")
        if int(grid.prod(-1).sum()) != pixels.shape[0]:
            raise ValueError(f"PolicyBatch.{vis.pixels} has {pixels.shape[0]} rows; {vis.grid} says "
                             f"{int(grid.prod(-1).sum())}")
        for name in vis.per_item:
            value = getattr(self, name)
            if value is not None and value.shape[0] != grid.shape[0]:
                raise ValueError(f"PolicyBatch.{name} must have one entry per {vis.grid} row")

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def num_tokens(self) -> int:
        """Tokens that count in the loss: ``sum(loss_mask)``."""
        return int(self.loss_mask.sum())

    # -- slicing -----------------------------------------------------------------------------------
    def slice(self, i: int, j: int) -> "PolicyBatch":
        """Samples i:j, with their videos, images and patch rows."""
        i, j, _ = slice(i, j).indices(self.batch_size)
        if j <= i:
            raise ValueError(f"PolicyBatch.slice({i}, {j}) is empty (batch size {self.batch_size})")
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extras":
                out["extras"] = {k: v[i:j] for k, v in value.items()}
            elif value is not None and (f.name in _TOKEN_PAD or f.name in ("input_ids", "advantages")):
                out[f.name] = value[i:j]
        for vis in _VISUALS:
            out.update(self._slice_visual(vis, i, j))
        return PolicyBatch(**out)

    def _slice_visual(self, vis: _Visual, i: int, j: int) -> dict[str, Tensor | None]:
        count = getattr(self, vis.count)
        if count is None:
            return {}
        starts = torch.cumsum(count, 0) - count
        a, b = int(starts[i]), int(starts[j - 1] + count[j - 1])
        if a == b:  # these samples have no item of this kind
            return {}
        grid = getattr(self, vis.grid)
        rows = grid.prod(-1)
        pa = int(rows[:a].sum())
        pb = pa + int(rows[a:b].sum())
        out = {vis.pixels: getattr(self, vis.pixels)[pa:pb], vis.grid: grid[a:b], vis.count: count[i:j]}
        for name in vis.per_item:
            value = getattr(self, name)
            out[name] = None if value is None else value[a:b]
        return out

    def split(self, micro_batch_size: int) -> list["PolicyBatch"]:
        """Consecutive micro-batches of at most `micro_batch_size` samples."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        return [self.slice(i, min(i + micro_batch_size, self.batch_size))
                for i in range(0, self.batch_size, micro_batch_size)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PolicyBatch":
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                 for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        moved["extras"] = {k: v.to(device, non_blocking=non_blocking) for k, v in self.extras.items()}
        return replace(self, **moved)

    def with_fields(self, **changes: Any) -> "PolicyBatch":
        """A copy with some fields replaced (e.g. ``ref_logp=...``), validated again."""
        return replace(self, **changes)

    def model_inputs(self) -> dict[str, Tensor]:
        """The keyword arguments of the model's forward (tokens, masks and visual inputs that are set)."""
        return {name: getattr(self, name) for name in _MODEL_INPUTS if getattr(self, name) is not None}

    # -- builders ----------------------------------------------------------------------------------
    @classmethod
    def collate(cls, samples: Iterable[Mapping[str, Any]], pad_id: int) -> "PolicyBatch":
        """Right-pad per-sample dicts into one batch.

        Each sample holds ``input_ids`` [T_i] and ``loss_mask`` [T_i]; optionally ``attention_mask``
        (default ones), ``old_logp``/``ref_logp``/``mm_token_type_ids`` [T_i], ``advantages`` (scalar),
        visual fields as the processor returns them for that one sample (``pixel_values_videos``
        [P_i, D], ``video_grid_thw`` [n_i, 3], ``second_per_grid_ts`` [n_i]; ``pixel_values``,
        ``image_grid_thw``) and ``extras`` {name: tensor of the same shape in every sample}.
        """
        samples = list(samples)
        if not samples:
            raise ValueError("PolicyBatch.collate needs at least one sample")
        known = {"input_ids", "loss_mask", "advantages", "extras", *_TOKEN_PAD,
                 *(n for v in _VISUALS for n in (v.pixels, v.grid, *v.per_item))}
        for k, s in enumerate(samples):
            unknown = set(s) - known
            if unknown:
                raise ValueError(f"PolicyBatch.collate: sample {k} has unknown keys {sorted(unknown)}; known keys: "
                                 f"{sorted(known)} (put loss-specific tensors under 'extras')")
        lengths = [len(s["input_ids"]) for s in samples]
        width = max(lengths)

        def pad(name: str, value: Any, fill: float) -> Tensor:
            rows = []
            for s, n in zip(samples, lengths):
                t = torch.as_tensor(s[name]) if s.get(name) is not None else torch.full((n,), value)
                if t.shape != (n,):
                    raise ValueError(f"PolicyBatch.collate: {name} has shape {tuple(t.shape)}, input_ids has ({n},)")
                rows.append(torch.nn.functional.pad(t, (0, width - n), value=fill))
            return torch.stack(rows)

        out: dict[str, Any] = {"input_ids": pad("input_ids", pad_id, pad_id).long(),
                               "attention_mask": pad("attention_mask", 1, 0).long(),
                               "loss_mask": pad("loss_mask", 0, 0).long()}
        for name in ("old_logp", "ref_logp"):
            if any(s.get(name) is not None for s in samples):
                cls._require_all(samples, name)
                out[name] = pad(name, 0.0, 0.0).float()
        if any(s.get("mm_token_type_ids") is not None for s in samples):  # text-only samples: all zeros
            out["mm_token_type_ids"] = pad("mm_token_type_ids", 0, 0).long()
        if any(s.get("advantages") is not None for s in samples):
            cls._require_all(samples, "advantages")
            out["advantages"] = torch.stack([torch.as_tensor(s["advantages"], dtype=torch.float32).reshape(())
                                             for s in samples])
        for vis in _VISUALS:
            out.update(cls._collate_visual(samples, vis))
        extras_keys = sorted({k for s in samples for k in s.get("extras", {})})
        out["extras"] = {}
        for k in extras_keys:
            if not all(k in s.get("extras", {}) for s in samples):
                raise ValueError(f"PolicyBatch.collate: extras[{k!r}] is missing in some samples")
            out["extras"][k] = torch.stack([torch.as_tensor(s["extras"][k]) for s in samples])
        return cls(**out)

    @staticmethod
    def _require_all(samples: list[Mapping[str, Any]], name: str) -> None:
        if not all(s.get(name) is not None for s in samples):
            raise ValueError(f"PolicyBatch.collate: {name} is set in some samples but not all")

    @staticmethod
    def _collate_visual(samples: list[Mapping[str, Any]], vis: _Visual) -> dict[str, Tensor]:
        if all(s.get(vis.pixels) is None for s in samples):
            return {}
        pixels, grids, counts = [], [], []
        extra: dict[str, list[Tensor | None]] = {n: [] for n in vis.per_item}
        for s in samples:
            grid = s.get(vis.grid)
            if s.get(vis.pixels) is None or grid is None:
                counts.append(0)
                continue
            grid = torch.as_tensor(grid).long().reshape(-1, 3)
            pixels.append(torch.as_tensor(s[vis.pixels]))
            grids.append(grid)
            counts.append(grid.shape[0])
            for n in vis.per_item:
                extra[n].append(None if s.get(n) is None else torch.as_tensor(s[n]).reshape(-1))
        out = {vis.pixels: torch.cat(pixels), vis.grid: torch.cat(grids), vis.count: torch.tensor(counts)}
        for n, parts in extra.items():
            if any(p is None for p in parts) and any(p is not None for p in parts):
                raise ValueError(f"PolicyBatch.collate: {n} is set for some samples with {vis.pixels} but not all")
            if parts and parts[0] is not None:
                out[n] = torch.cat(parts).float()
        return out

    @classmethod
    def from_processor(cls, inputs: Mapping[str, Any], loss_mask: Tensor, **fields_: Any) -> "PolicyBatch":
        """A batch from a processor's (or tokenizer's) right-padded output plus the loss mask and other fields."""
        kw = {k: inputs[k] for k in _MODEL_INPUTS if inputs.get(k) is not None}
        kw["input_ids"] = kw["input_ids"].long()
        return cls(**kw, loss_mask=loss_mask, **fields_)
