"""Benchmark prompts as the papers build them, and the frame and sampling settings they use.

``verIPO`` (HITsz-TMG/VerIPO ``evaluation/evaluation_vllm.py``): the record's ``processed_question``
with the sentence "Answer with the option's letter from the given choices directly." removed, inside
the option template when the answer is a letter and the number template otherwise. ``video_r1``
(tulerfeng/Video-R1 ``src/eval_bench.py``): the problem (plus ``Options:`` and one option per line for
multiple choice) inside the think-aloud template, then the per-type suffix. ``default``: veripo's own
training prompt (`veripo.data.prompts.build_prompt`), so a figure is comparable with training rewards.

The template texts are the papers' prompts word for word (a prompt that differs by one word gives a
number that cannot be compared with the paper's); everything around them is veripo's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veripo.eval.benchmarks import BenchItem

TEMPLATES = ("verIPO", "video_r1", "default")

VERIPO_OPTION = (
    "You should first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "Your answer must be in latex format and wrapped in $...$.The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since ...., so the answer is B. "
    "</think><answer> $B$ </answer>, which means your output should start with <think> and end with </answer>."
    "\nQuestion:\n{question}"
)
VERIPO_NUMBER = (
    "You should first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "Your answer must be in latex format and wrapped in $...$.The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since ...., so the answer is $2$. "
    "</think><answer> $2$ </answer>, which means your output should start with <think> and end with </answer>."
    "\nQuestion:\n{question}\nYou must provide the answer in the <answer> </answer> tag, and the answer must be a "
    "number."
)
VERIPO_DROP = "\nAnswer with the option's letter from the given choices directly."

VIDEO_R1_QUESTION = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer "
    "between the <answer> and </answer> tags."
)
VIDEO_R1_SUFFIX = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                       "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
           "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}


@dataclass(frozen=True)
class PaperDefaults:
    """Frames and decoding as each paper's evaluation script sets them."""

    fps: float
    max_frames: int
    max_pixels: int
    temperature: float
    top_p: float
    max_tokens: int


# VerIPO evaluation_vllm.py: fps 2, 128 frames, 200704 pixels, temperature 1e-6, top_p 1, 4096 tokens.
# Video-R1 eval_bench.py: qwen-vl-utils as Video-R1 ships it (fps 2, at most 16 frames, 128*28*28 pixels),
# temperature 0.1, top_p 0.001, 1024 tokens.
DEFAULTS = {
    "verIPO": PaperDefaults(fps=2.0, max_frames=128, max_pixels=200704, temperature=1e-6, top_p=1.0, max_tokens=4096),
    "video_r1": PaperDefaults(fps=2.0, max_frames=16, max_pixels=128 * 28 * 28, temperature=0.1, top_p=0.001,
                              max_tokens=1024),
    "default": PaperDefaults(fps=2.0, max_frames=16, max_pixels=128 * 28 * 28, temperature=0.0, top_p=1.0,
                             max_tokens=1024),
}


def _question_with_options(item: BenchItem, sep: str) -> str:
    q = item.question
    if item.options:
        q = q + sep + "\n".join(o for o in item.options) + "\n"
    return q


def verIPO_text(item: BenchItem) -> str:
    if item.processed_question is not None:
        q = item.processed_question
    else:
        q = item.question if not item.options else item.question + "\n" + "\n".join(item.options)
    q = q.replace(VERIPO_DROP, "")
    template = VERIPO_OPTION if item.answer.isalpha() else VERIPO_NUMBER
    return template.format(question=q)


def video_r1_text(item: BenchItem) -> str:
    if item.kind == "multiple choice":
        question = item.question + "Options:\n" + "".join(o + "\n" for o in item.options)
    else:
        question = item.question
    return VIDEO_R1_QUESTION.format(question=question) + VIDEO_R1_SUFFIX[item.kind]


def default_text(item: BenchItem) -> str:
    from veripo.data.prompts import PromptStyle, build_prompt
    from veripo.data.records import Record

    rec = Record(problem_id=item.qid, problem=item.question, problem_type=item.kind,
                 solution=f"<answer>{item.answer}</answer>", options=tuple(item.options), data_type="text")
    return build_prompt(rec, PromptStyle(use_caption=False, use_video=False))


def user_text(item: BenchItem, template: str, caption: bool = False) -> str:
    """The user turn's text for `item` under `template`; `caption`: put the record's ``caption`` field
    first (text-only models), as veripo's training prompt does."""
    if template == "verIPO":
        text = verIPO_text(item)
    elif template == "video_r1":
        text = video_r1_text(item)
    elif template == "default":
        text = default_text(item)
    else:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    if caption:
        cap = item.extra.get("caption")
        if not cap:
            from veripo.eval.benchmarks import BenchmarkError

            raise BenchmarkError(f"record {item.index} ({item.qid}) has no 'caption' field, needed without "
                                 "--use-video. Fix: add captions to the file, or pass --use-video for a vision model")
        text = f"Video description:\n{str(cap).strip()}\n\n{text}"
    return text


def messages(item: BenchItem, text: str, video_element: dict[str, Any] | None = None) -> list[dict]:
    """One user message (no system turn, as both papers: the chat template adds its default)."""
    if video_element is None:
        return [{"role": "user", "content": text}]
    return [{"role": "user", "content": [video_element, {"type": "text", "text": text}]}]
