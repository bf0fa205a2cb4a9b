"""What the stages share: prompts (token ids, and for vision models the video), (prompt, response)
pairs as a PolicyBatch, the run's data.

Vision models (``data.use_video``): `PromptBuilder.render(record)` renders a video record through the
model's processor: the chat text (one ``<|video_pad|>`` placeholder, what the rollout engines take),
the frames (loaded once by qwen-vl-utils, cached, rounded to whole 0..255 values so vLLM's uint8 copy
and the trainer's processor see the same pixels), and the processor's output for those frames (prompt
ids with the placeholders expanded, ``mm_token_type_ids``, ``pixel_values_videos``, ``video_grid_thw``,
``second_per_grid_ts``) that the training batch carries. ``render(record, shuffle=True, seed=...)`` is
the same prompt on the frames in a shuffled order (T-GRPO). `PromptBuilder.make_request` is what GRPO
and eval send to the rollout engines.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from veripo.config import RunConfig
from veripo.data import PromptStyle, Record, build_messages, load_records
from veripo.data.records import LoadReport, RecordError
from veripo.data.synth import generate
from veripo.data.video import VideoStats, load_video, processor_inputs
from veripo.rollout import GenerationRequest
from veripo.run_dir import RunDir
from veripo.train import PolicyBatch

VISUAL_FIELDS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass(frozen=True)
class Prompt:
    """One record rendered for the policy: chat text and its token ids.

    For a video prompt (`PromptBuilder.render`), `token_ids` are the prompt as the model sees it
    (video placeholders expanded), `video` the frames as vLLM takes them (``(uint8 [T, H, W, 3],
    metadata)``), `visual` the processor's per-sample fields for `PolicyBatch.collate`
    (``mm_token_type_ids`` [T_prompt], ``pixel_values_videos``, ``video_grid_thw``,
    ``second_per_grid_ts``) and `frame_order` the order of the sampled frames (None: as in the clip).
    """

    record: Record
    text: str
    token_ids: list[int]
    video: Any = field(default=None, repr=False)
    visual: dict[str, Any] | None = field(default=None, repr=False)
    frame_order: tuple[int, ...] | None = None

    def request(self, request_id: str | None = None):
        """The `GenerationRequest` for this prompt (text and frames for a video, else token ids)."""
        rid = request_id if request_id is not None else self.record.problem_id
        if self.video is not None:
            return GenerationRequest(prompt=self.text, video=self.video, request_id=rid)
        return GenerationRequest(prompt_token_ids=self.token_ids, request_id=rid)


def frame_order(n: int, seed: Any) -> tuple[int, ...]:
    """A shuffled order of `n` frames, deterministic in `seed`, never the original one (n >= 2)."""
    order = list(range(n))
    rng = random.Random(str(seed))
    while n > 1 and order == sorted(order):
        rng.shuffle(order)
    return tuple(order)


class PromptBuilder:
    """Renders records with the policy's chat template: text-only (the caption stands in for the video),
    or, with ``data.use_video``, with the clip through the model's processor (see the module docstring).

    `processor`: the vision-language model's processor (default: loaded from the tokenizer's folder the
    first time a video prompt is rendered). `video_cache`: loaded clips kept in memory (LRU, uint8 frames).
    """

    def __init__(self, tokenizer, cfg: RunConfig, processor=None, video_cache: int = 64):
        self.tokenizer = tokenizer
        self.style = PromptStyle(use_caption=cfg.data.use_caption, use_video=cfg.data.use_video,
                                 system=cfg.data.system_prompt)
        self.max_tokens = cfg.data.max_prompt_tokens
        self.chat_template = cfg.model.chat_template
        if cfg.model.chat_template:
            tokenizer.chat_template = cfg.model.chat_template
        self._processor = processor
        self.video_cfg = cfg.data.video if cfg.data.use_video else None
        self.video_stats = None
        self._videos: OrderedDict[str, Any] = OrderedDict()
        self._video_cache = video_cache

    def __call__(self, record: Record) -> Prompt:
        return self._text_prompt(record, self.style)

    def _text_prompt(self, record: Record, style: PromptStyle) -> Prompt:
        messages = build_messages(record, style)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_tokens:
            raise ValueError(f"record {record.problem_id!r}: prompt has {len(ids)} tokens, over "
                             f"data.max_prompt_tokens={self.max_tokens}. Fix: raise data.max_prompt_tokens "
                             "or shorten the question/caption")
        return Prompt(record=record, text=text, token_ids=list(ids))

    # -- video ---------------------------------------------------------------------------------------
    @property
    def processor(self):
        """The model's processor (loaded on first use); a text-only model fails here, naming the fix."""
        if self._processor is None:
            # transformers only for a video run's processor: importing it sets os.environ["TORCHINDUCTOR_CACHE_DIR"]
            from transformers import AutoProcessor

            path = self.tokenizer.name_or_path
            proc = AutoProcessor.from_pretrained(path)
            if getattr(proc, "video_processor", None) is None:
                raise ValueError(f"data.use_video=true, but {path} has no video processor (a text-only model?). "
                                 "Fix: use a vision-language model (e.g. Qwen2.5-VL), or set data.use_video=false "
                                 "and data.use_caption=true")
            if self.chat_template:
                proc.chat_template = self.chat_template
            self._processor = proc
        return self._processor

    @property
    def placeholder_ids(self) -> frozenset[int]:
        """The token ids the model reads as frame or image slots (``<|video_pad|>``, ``<|image_pad|>``)."""
        proc = self.processor
        return frozenset(i for i in (getattr(proc, "video_token_id", None), getattr(proc, "image_token_id", None))
                         if i is not None)

    def has_video(self, record: Record) -> bool:
        """Whether `record` is rendered with its clip (``data.use_video`` and a video record)."""
        if not (self.style.use_video and record.path and record.data_type in ("video", "image")):
            return False
        if record.data_type == "image":
            raise ValueError(f"record {record.problem_id!r} is an image record; the loop's vision path takes "
                             "videos only. Fix: drop image records, or set data.use_video=false")
        return True

    def video(self, record: Record):
        """`record`'s clip as a `LoadedVideo` with whole-number pixel values (cached); None when it failed to
        load and ``data.video.on_error=skip`` (counted in `video_stats`)."""
        path = str(record.path)
        if path in self._videos:
            self._videos.move_to_end(path)
        else:
            if self.video_stats is None:
                self.video_stats = VideoStats()
            video = load_video(path, self.video_cfg, self.video_stats)
            if video is not None:  # vLLM gets uint8 frames: round here so the trainer sees the same pixels
                video = dataclasses.replace(video, frames=video.frames.round().clamp(0, 255).to(torch.uint8))
            self._videos[path] = video
            while len(self._videos) > self._video_cache:
                self._videos.popitem(last=False)
        video = self._videos[path]
        return None if video is None else dataclasses.replace(video, frames=video.frames.float())

    def render(self, record: Record, shuffle: bool = False, seed: Any = 0) -> Prompt:
        """`record` as the policy sees it: with its clip (frames shuffled, deterministically in `seed`, when
        `shuffle`) for a video record of a vision run, else as `__call__` renders it."""
        with_video = self.has_video(record)
        video = self.video(record) if with_video else None
        if video is None:
            if shuffle:
                raise ValueError(f"record {record.problem_id!r} has no video to shuffle")
            if with_video:  # the clip failed to load and data.video.on_error=skip: the text alone
                return self._text_prompt(record, dataclasses.replace(self.style, use_video=False))
            return self(record)
        order = None
        if shuffle:
            order = frame_order(video.frames.shape[0], seed)
            video = dataclasses.replace(video, frames=video.frames[list(order)])
        proc = self.processor
        text = proc.apply_chat_template(build_messages(record, self.style), add_generation_prompt=True, tokenize=False)
        inputs = processor_inputs(proc, [text], [video], padding=False)
        ids = inputs["input_ids"][0].tolist()
        if len(ids) > self.max_tokens:
            raise ValueError(f"record {record.problem_id!r}: prompt has {len(ids)} tokens with its video, over "
                             f"data.max_prompt_tokens={self.max_tokens}. Fix: raise data.max_prompt_tokens, or "
                             "lower data.video.max_pixels / nframes")
        visual = {k: inputs[k] for k in ("mm_token_type_ids", *VISUAL_FIELDS) if inputs.get(k) is not None}
        if "mm_token_type_ids" in visual:
            visual["mm_token_type_ids"] = visual["mm_token_type_ids"][0]
        return Prompt(record=record, text=text, token_ids=ids, video=video.for_vllm(), visual=visual,
                      frame_order=order)

    def make_request(self, record: Record, shuffle: bool = False, seed: Any = 0, request_id: str | None = None):
        """The `GenerationRequest` for `record` (its clip, shuffled when asked, for a video record)."""
        return self.render(record, shuffle, seed).request(request_id)


def policy_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
                 advantages: Sequence[float] | None = None, visuals: Sequence[dict | None] | None = None):
    """Right-padded ``[B, T]`` prompt+response ids with ``loss_mask`` 1 on response tokens.

    `visuals`: per sample, None or a video prompt's `Prompt.visual` (its frames' processor output, whose
    ``mm_token_type_ids`` cover the prompt; the response's are 0)."""
    samples = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        sample: dict[str, Any] = {"input_ids": list(p) + list(r), "loss_mask": [0] * len(p) + [1] * len(r)}
        if advantages is not None:
            sample["advantages"] = float(advantages[i])
        visual = visuals[i] if visuals is not None else None
        if visual:
            sample.update({k: visual[k] for k in VISUAL_FIELDS if k in visual})
            types = visual.get("mm_token_type_ids")
            if types is not None:
                sample["mm_token_type_ids"] = torch.cat([torch.as_tensor(types).long(),
                                                         torch.zeros(len(r), dtype=torch.long)])
        samples.append(sample)
    return PolicyBatch.collate(samples, pad_id)


@dataclass
class RunRecords:
    """A run's train and held-out records, with what loading left out."""

    train: list[Record]
    test: list[Record]
    skipped: int = 0
    images_left_out: int = 0  # image records of a vision run (GenerationRequest carries videos only)
    skip_errors: list[str] = field(default_factory=list)  # one message per skipped line (data.skip_bad)


def load_run_records(cfg: RunConfig, run: RunDir) -> RunRecords:
    """The recipe's train/test records, generating the synthetic set into the run folder when asked."""
    if cfg.data.train is None:
        out = run.data
        if not (out / "meta.json").is_file():
            s = cfg.data.synth
            generate(out, s.n, seed=s.seed, difficulty=s.difficulty, test_fraction=s.test_fraction, frames=s.frames)
        train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    else:
        train_path = Path(cfg.data.train)
        test_path = Path(cfg.data.test) if cfg.data.test else None
    report = LoadReport()
    train = load_records(train_path, skip_bad=cfg.data.skip_bad, report=report)
    test = load_records(test_path, skip_bad=cfg.data.skip_bad, report=report) if test_path else []
    images = 0
    if cfg.data.use_video:
        n = len(train) + len(test)
        train, test = ([r for r in rs if r.data_type != "image"] for rs in (train, test))
        images = n - len(train) - len(test)
        if images:
            print(f"veripo: {images} image records left out: the vision path takes video records (and text) only")
    if not train:
        raise RecordError(str(train_path), "<file>", "no usable records" + (
            f" (all {report.skipped} line(s) were bad and skipped by data.skip_bad)" if report.skipped else ""),
            "check data.train")
    return RunRecords(train=train, test=test, skipped=report.skipped, images_left_out=images,
                      skip_errors=report.errors)
