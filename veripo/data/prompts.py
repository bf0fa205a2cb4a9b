"""Prompt templates: the question, its options, the think/answer instruction and a per-type suffix.

The wording follows the Video-R1 convention (reason inside ``<think>``, answer inside ``<answer>``)
with veripo's own text. `build_prompt(record)` returns the user turn's text; `build_messages` wraps it
with the video (or the caption, for text-only models) as chat messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from veripo.data.records import Record

THINK_ANSWER_INSTRUCTION = (
    "Think it through step by step inside <think> </think> tags, checking your reasoning against what "
    "you see, then give only the final answer inside <answer> </answer> tags."
)

TYPE_SUFFIX = {
    "multiple choice": "Inside <answer> </answer> write only the letter of the correct option (for example B).",
    "numerical": "Inside <answer> </answer> write only the number (for example 3 or 2.5).",
    "regression": "Inside <answer> </answer> write only the number (for example 42 or 3.14).",
    "OCR": "Inside <answer> </answer> write the transcribed text exactly as it appears.",
    "free-form": "Inside <answer> </answer> write a short answer in your own words.",
}


@dataclass(frozen=True)
class PromptStyle:
    """How a record becomes text. ``use_caption`` puts the per-frame caption in the prompt (text-only
    models); ``use_video`` adds the video itself (vision models)."""

    use_caption: bool = False
    use_video: bool = True
    instruction: str = THINK_ANSWER_INSTRUCTION
    system: str | None = None


def build_prompt(record: Record, style: PromptStyle = PromptStyle()) -> str:
    """The user turn's text for `record`: [caption], question, options, instruction, per-type suffix."""
    parts = []
    if style.use_caption:
        if not record.caption:
            raise ValueError(f"record {record.problem_id!r} has no caption but the prompt style uses captions. "
                             "Fix: add a \"caption\" field, or set data.use_caption=false for a vision model")
        parts.append(f"Video description:\n{record.caption.strip()}")
    question = record.problem.strip()
    if record.options:
        question += "\nOptions:\n" + "\n".join(o.strip() for o in record.options)
    parts.append(f"Question: {question}")
    parts.append(f"{style.instruction} {TYPE_SUFFIX[record.problem_type]}")
    return "\n\n".join(parts)


def build_messages(record: Record, style: PromptStyle = PromptStyle(), video_options: dict | None = None) -> list[dict]:
    """Chat messages for `record`. With ``style.use_video`` and a video record, the user content holds a
    qwen-vl-utils video element (``{"type": "video", "video": path, **video_options}``) before the text."""
    messages = []
    if style.system:
        messages.append({"role": "system", "content": style.system})
    text = build_prompt(record, style)
    if style.use_video and record.data_type in ("video", "image") and record.path:
        kind = record.data_type
        element = {"type": kind, kind: record.path, **(video_options or {})}
        messages.append({"role": "user", "content": [element, {"type": "text", "text": text}]})
    else:
        messages.append({"role": "user", "content": text})
    return messages
