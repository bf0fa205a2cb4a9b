"""Section ``data.video``: how frames are sampled and sized (the qwen-vl-utils element keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veripo.config.convert import choice


@dataclass(frozen=True)
class VideoConfig:
    """Frame sampling and size (the qwen-vl-utils element keys). Exactly one of fps / nframes: the
    default samples 8 frames per clip (``nframes``); ``fps: 2.0, nframes: null`` samples by rate, as
    Video-R1 trains (`VIDEO_R1`)."""

    fps: float | None = None
    nframes: int | None = 8
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    max_frames: int = 16
    min_frames: int = 2
    on_error: str = choice("raise", ("raise", "skip"))

    def __post_init__(self):
        if (self.fps is None) == (self.nframes is None):
            raise ValueError("video: set exactly one of fps and nframes (set the other to null)")
        if self.nframes is not None and self.nframes < 2:
            raise ValueError(f"video.nframes must be >= 2, got {self.nframes}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"video.fps must be > 0, got {self.fps}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"video: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.max_frames < self.min_frames or self.min_frames < 2:
            raise ValueError(f"video: need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"video.on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def element(self, path: str) -> dict[str, Any]:
        """The qwen-vl-utils message element for `path`."""
        el: dict[str, Any] = {"type": "video", "video": path, "min_pixels": self.min_pixels,
                              "max_pixels": self.max_pixels}
        if self.nframes is not None:
            el["nframes"] = self.nframes
        else:
            el.update(fps=self.fps, max_frames=self.max_frames, min_frames=self.min_frames)
        return el


VIDEO_R1 = VideoConfig(fps=2.0, nframes=None)  # qwen-vl-utils' and Video-R1's rate-based sampling
