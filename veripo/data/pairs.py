"""Where preference pairs come from (docs/algorithms.md sections 3 and 5). Every source yields `PreferencePair`.

- the verifier's pair file: `read_pairs` (``pairs.jsonl``, `veripo.data.rollouts`);
- external pair JSONL in the LLaVA-Hound-DPO 17k layout: `read_external_pairs`, one object per line::

      {"id": "v_abc-0", "prompt": "<video>\\nWhat is the man doing?", "chosen": "He is ...",
       "rejected": "A woman ...", "video": "v_abc", "chosen_score": 5.0, "rejected_score": 2.0}

  (``question`` may stand for ``prompt``; ``answer``, ``chosen_score`` and ``rejected_score`` are optional;
  ``video`` is resolved against `video_root`, else the file's folder). A malformed line raises an
  error naming ``file:line:field`` and the fix (or is skipped and counted with ``skip_bad``);
- `load_pair_file`: either layout, told apart by the first line that is a JSON object (``pair_id`` means
  the verifier's; a malformed line before it does not decide);
- self-generated pairs from a `veripo.rollout.RolloutEngine` (docs/algorithms.md section 5):
  `rrpo_perturbation_pairs` (answers on a perturbed video that are wrong become y-, the same response
  with the ground-truth answer y+) and `leanpo_pairs` (y+ answered with the reference answer as a
  hint and refined once by reflection; y- sampled at temperature 1.2 on an augmented video).

For text-only policies the video is its per-frame caption, so the perturbations act on the caption's
``frame t: ...`` sentences (masked or shuffled, dropped for LeanPO's augmentation); for vision models
they act on the frames (`mask_frames`, `shuffle_frames`, `augment_frames`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from veripo.data.prompts import build_messages, build_prompt
from veripo.data.records import LoadReport, MissingFileError, Record, RecordError, iter_lines
from veripo.data.rollouts import PreferencePair, RolloutError, check_distinct, read_jsonl, read_pairs
from veripo.rewards import accuracy_reward
from veripo.rollout import GenerationRequest, SamplingConfig

__all__ = [
    "augment_caption", "augment_frames", "external_pair_from_dict", "leanpo_pairs", "load_pair_file", "mask_frames",
    "pair_file_layout",
    "perturb_caption", "read_external_pairs", "read_pairs", "rrpo_perturbation_pairs", "shuffle_frames",
    "with_answer",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
_VIDEO_TOKEN = re.compile(r"<video>\s*")

# ----------------------------------------------------------------------------------------------------
# External pairs (LLaVA-Hound-DPO layout)
# ----------------------------------------------------------------------------------------------------


def _text(obj: dict, where: str, *names: str, required: bool = True) -> str | None:
    name = next((n for n in names if obj.get(n) is not None), None)
    if name is None:
        if not required:
            return None
        raise RolloutError(where, names[0], "missing required field",
                           f"give every line a \"{names[0]}\"" + (f" (or \"{names[1]}\")" if len(names) > 1 else ""))
    value = obj[name]
    if not isinstance(value, str) or not value.strip():
        raise RolloutError(where, name, f"must be a non-empty string, got {value!r}"[:200],
                           f"write \"{name}\" as a JSON string")
    return value


def _score(obj: dict, where: str, name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RolloutError(where, name, f"must be a finite number, got {value!r}", f"write \"{name}\" as a number")
    return float(value)


def _resolve_video(video: str, base: Path) -> str:
    path = Path(video) if os.path.isabs(video) else base / video
    if not path.suffix and not path.exists():
        for ext in VIDEO_EXTENSIONS:
            if path.with_suffix(ext).is_file():
                return str(path.with_suffix(ext))
    return str(path)


def external_pair_from_dict(obj: Any, where: str = "<pair>",
                            video_root: str | os.PathLike | None = None) -> PreferencePair:
    """One LLaVA-Hound-style line as a `PreferencePair` (type ``caption``: pairs scored by a caption judge)."""
    if not isinstance(obj, dict):
        raise RolloutError(where, "<line>", f"expected a JSON object, got {type(obj).__name__}",
                           "write one JSON object per line")
    pid = obj.get("id")
    if pid is None or isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid).strip() == "":
        raise RolloutError(where, "id", f"must be a non-empty string or integer, got {pid!r}",
                           "give every pair a unique \"id\"")
    pid = str(pid)
    prompt = _VIDEO_TOKEN.sub("", _text(obj, where, "prompt", "question")).strip()
    chosen, rejected = _text(obj, where, "chosen"), _text(obj, where, "rejected")
    video = _text(obj, where, "video", required=False)
    if video is not None:
        video = _resolve_video(video, Path(video_root) if video_root else Path(where.rsplit(":", 1)[0]).parent)
    answer = _text(obj, where, "answer", required=False)
    known = {"id", "prompt", "question", "chosen", "rejected", "video", "chosen_score", "rejected_score", "answer"}
    extra = {"source": "external", **({"answer": answer} if answer is not None else {}),
             **{k: v for k, v in obj.items() if k not in known}}
    return check_distinct(PreferencePair(
        pair_id=pid, problem_id=pid, type="caption", prompt=prompt or "Describe the video.", chosen=chosen,
        rejected=rejected, chosen_id=f"{pid}:chosen", rejected_id=f"{pid}:rejected",
        chosen_score=_score(obj, where, "chosen_score"), rejected_score=_score(obj, where, "rejected_score"),
        video_path=video, extra=extra), where)


def read_external_pairs(path: str | os.PathLike, video_root: str | os.PathLike | None = None, skip_bad: bool = False,
                        report: LoadReport | None = None) -> list[PreferencePair]:
    """Read an external pair JSONL (LLaVA-Hound-DPO layout); ids must be unique."""
    return read_jsonl(path, lambda obj, where: external_pair_from_dict(obj, where, video_root), skip_bad=skip_bad,
                      report=report, id_field="pair_id")


def pair_file_layout(path: str | os.PathLike) -> str | None:
    """``"verifier"`` (lines carry ``pair_id``) or ``"external"`` (LLaVA-Hound), told by the first line that
    is a JSON object (a malformed first line does not decide it); None when no line is one."""
    for _, line in iter_lines(path):
        if isinstance(line, RecordError):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return "verifier" if "pair_id" in obj else "external"
    return None


def load_pair_file(path: str | os.PathLike, video_root: str | os.PathLike | None = None, skip_bad: bool = False,
                   report: LoadReport | None = None) -> list[PreferencePair]:
    """A pair file in either layout (`pair_file_layout`): the verifier's (its lines carry ``pair_id``) or the
    external one. Every line is then read in that layout: a line of the other one is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such pair file. Fix: check preference.pairs")
    if pair_file_layout(path) == "verifier":
        return read_pairs(path, skip_bad=skip_bad, report=report)
    return read_external_pairs(path, video_root=video_root, skip_bad=skip_bad, report=report)


# ----------------------------------------------------------------------------------------------------
# Perturbations: frames (vision models) and captions (text-only models)
# ----------------------------------------------------------------------------------------------------


def _n_masked(T: int, fraction: float | tuple[float, float], rng: random.Random) -> int:
    lo, hi = fraction if isinstance(fraction, tuple) else (fraction, fraction)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"fraction must be in (0, 1] (or a (low, high) range in it), got {fraction!r}")
    return min(T, max(1, round(T * rng.uniform(lo, hi))))


def mask_frames(frames: Tensor, fraction: float | tuple[float, float] = (0.25, 0.5), seed: int = 0) -> Tensor:
    """RRPO perturbation: a copy of ``frames [T, C, H, W]`` with a random 25-50% of the frames blacked out."""
    rng = random.Random(seed)
    out = frames.clone()
    out[rng.sample(range(frames.shape[0]), _n_masked(frames.shape[0], fraction, rng))] = 0
    return out


def _derangement(n: int, rng: random.Random) -> list[int]:
    order = list(range(n))
    if n < 2:
        return order
    while order == sorted(order):
        rng.shuffle(order)
    return order


def shuffle_frames(frames: Tensor, seed: int = 0) -> Tensor:
    """RRPO perturbation: ``frames [T, C, H, W]`` in a shuffled (never the original) order."""
    return frames[_derangement(frames.shape[0], random.Random(seed))]


def augment_frames(frames: Tensor, seed: int = 0) -> Tensor:
    """LeanPO's augmented video, the same transform on every frame of ``[T, C, H, W]`` (0..255 floats):
    random resized crop (60-100% of each side, resized back), color jitter (brightness and contrast
    0.7-1.3), grayscale (p 0.2), 3x3 blur (p 0.5), horizontal flip (p 0.5)."""
    rng = random.Random(seed)
    T, C, H, W = frames.shape
    x = frames.float()
    h, w = max(1, round(H * rng.uniform(0.6, 1.0))), max(1, round(W * rng.uniform(0.6, 1.0)))
    top, left = rng.randint(0, H - h), rng.randint(0, W - w)
    x = torch.nn.functional.interpolate(x[:, :, top:top + h, left:left + w], size=(H, W), mode="bilinear",
                                        align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    if C == 3 and rng.random() < 0.2:
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand(T, 3, H, W)
    if rng.random() < 0.5:
        x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    if rng.random() < 0.5:
        x = x.flip(-1)
    return x.clamp(0, 255).to(frames.dtype)


_FRAME = re.compile(r"(frame \d+:)\s*(.*?)(?=\s*frame \d+:|$)", re.S)


def _frame_segments(caption: str) -> tuple[str, list[tuple[str, str]]]:
    """(header, [(label, content), ...]) of a ``frame t: ...`` caption; sentences when it has no labels."""
    found = _FRAME.findall(caption)
    if found:
        return caption[: caption.find(found[0][0])].strip(), [(a, b.strip()) for a, b in found]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", caption.strip()) if s]
    if len(sentences) < 2:
        return "", [("", s) for s in sentences]
    return sentences[0], [("", s) for s in sentences[1:]]


def _join(header: str, segments: Sequence[tuple[str, str]]) -> str:
    return " ".join([header] * bool(header) + [f"{a} {b}".strip() for a, b in segments])


def perturb_caption(caption: str, mode: str = "mask", fraction: float | tuple[float, float] = (0.25, 0.5),
                    seed: int = 0) -> str:
    """The text stand-in for a perturbed video: ``mask`` hides a random 25-50% of the frames' contents
    (``frame 3: [not visible].``), ``shuffle`` permutes the contents across the frame labels (the
    temporal order is scrambled, never left as is)."""
    rng = random.Random(seed)
    header, segs = _frame_segments(caption)
    if mode == "mask":
        hidden = set(rng.sample(range(len(segs)), _n_masked(len(segs), fraction, rng)))
        segs = [(a, "[not visible]." if i in hidden else b) for i, (a, b) in enumerate(segs)]
    elif mode == "shuffle":
        order = _derangement(len(segs), rng)
        segs = [(segs[i][0], segs[j][1]) for i, j in enumerate(order)]
    else:
        raise ValueError(f"perturbation mode must be 'mask' or 'shuffle', got {mode!r}")
    return _join(header, segs)


def augment_caption(caption: str, seed: int = 0, drop: float = 0.25) -> str:
    """The text stand-in for LeanPO's augmented video: a random `drop` fraction of the frames' sentences
    removed (a temporal crop of what the model can read)."""
    rng = random.Random(seed)
    header, segs = _frame_segments(caption)
    k = min(len(segs) - 1, max(1, round(len(segs) * drop)))
    gone = set(rng.sample(range(len(segs)), k)) if len(segs) > 1 else set()
    return _join(header, [s for i, s in enumerate(segs) if i not in gone])


def with_answer(response: str, answer: str) -> str:
    """`response` with the content of its last ``<answer>...</answer>`` replaced by `answer` (a minimal edit,
    so RRPO's phrases are the answer); ``<answer>answer</answer>`` when it has none."""
    end = response.rfind("</answer>")
    start = response.rfind("<answer>", 0, end) if end >= 0 else -1
    if start < 0:
        return f"<answer>{answer}</answer>"
    return response[: start + len("<answer>")] + answer + response[end:]


# ----------------------------------------------------------------------------------------------------
# Self-generated pairs
# ----------------------------------------------------------------------------------------------------


def _request(prompts, record: Record, video=None, follow_up: Sequence[dict] = (), request_id: str | None = None):
    """A `GenerationRequest` for `record` rendered by the run's `PromptBuilder` (chat template + style),
    optionally with more chat turns and a (perturbed) video."""
    tok = prompts.tokenizer
    messages = build_messages(record, prompts.style) + list(follow_up)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if video is not None:
        return GenerationRequest(prompt=text, video=video, request_id=request_id)
    return GenerationRequest(prompt_token_ids=tok(text, add_special_tokens=False)["input_ids"], request_id=request_id)


def _correct(text: str, record: Record) -> bool:
    return accuracy_reward(text, record.solution, record.problem_type) >= 0.5


def _video_for(video_loader, record: Record, transform: Callable[[Tensor], Tensor] | None):
    if video_loader is None:
        return None
    video = video_loader(record)
    if video is None or transform is None:
        return video
    return dataclasses.replace(video, frames=transform(video.frames))


def _pair(pid: str, ptype: str, record: Record, chosen: str, rejected: str, source: str, **extra) -> PreferencePair:
    return PreferencePair(pair_id=pid, problem_id=record.problem_id, type=ptype, prompt=build_prompt(record),
                          chosen=chosen, rejected=rejected, chosen_id=f"{pid}:chosen", rejected_id=f"{pid}:rejected",
                          video_path=record.path, record=record.to_dict(), extra={"source": source, **extra})


def rrpo_perturbation_pairs(engine, records: Sequence[Record], prompts, *, mode: str = "mask", n: int = 4,
                            sampling=None, fraction: float | tuple[float, float] = (0.25, 0.5), seed: int = 0,
                            max_pairs_per_prompt: int = 1, video_loader=None,
                            stats: dict | None = None) -> list[PreferencePair]:
    """RRPO self-alignment pairs (docs/algorithms.md section 5).

    For each record the model answers `n` times about a perturbed video (``mask``: 25-50% of the frames
    hidden; ``shuffle``: frame order scrambled; the caption's frames for a text model, the frames
    themselves when `video_loader(record) -> LoadedVideo` is given). Each wrong answer (accuracy < 0.5)
    becomes y-, and y+ is that response with the ground truth as its answer (`with_answer`), so the
    pair differs in the answer phrase. Pairs train on the original, unperturbed prompt (the record).

    Args:
        engine: a `RolloutEngine`; prompts: the run's `PromptBuilder` (``.tokenizer``, ``.style``).
        sampling: `SamplingConfig` (default temperature 1.0, 128 tokens).
        stats: filled with ``prompts``, ``samples``, ``wrong``, ``pairs``.
    """

    sampling = sampling or SamplingConfig(temperature=1.0, max_tokens=128, seed=seed)
    requests = []
    for i, rec in enumerate(records):
        s = seed * 1_000_003 + i
        if video_loader is None:
            perturbed = dataclasses.replace(rec, caption=perturb_caption(rec.caption or "", mode, fraction, s))
            requests.append(_request(prompts, perturbed, request_id=rec.problem_id))
        else:
            fn = (lambda f, s=s: mask_frames(f, fraction, s)) if mode == "mask" else (lambda f, s=s: shuffle_frames(f, s))
            requests.append(_request(prompts, rec, _video_for(video_loader, rec, fn), request_id=rec.problem_id))
    groups = engine.generate(requests, sampling, n)
    pairs, wrong = [], 0
    for rec, group in zip(records, groups):
        seen: set[str] = set()
        for sample in group:
            text = sample.text
            if _correct(text, rec) or text in seen:
                continue
            wrong += 1
            seen.add(text)
            if len(seen) <= max_pairs_per_prompt:
                pid = f"rrpo-{mode}-{rec.problem_id}-{len(seen) - 1}"
                pairs.append(_pair(pid, "penalty", rec, with_answer(text, rec.answer), text, "rrpo-perturbation",
                                   perturbation=mode))
    if stats is not None:
        stats.update(prompts=len(records), samples=sum(len(g) for g in groups), wrong=wrong, pairs=len(pairs))
    return pairs


HINT = "Hint: the reference answer is {answer}. Explain step by step why it is right."
REFLECT = ("Reflect on your response above: check each step against the video and the question, fix any step "
           "that is wrong, and reply again in the same format, ending with <answer> </answer>.")


def leanpo_pairs(engine, records: Sequence[Record], prompts, *, max_tokens: int = 128, rejected_temperature: float = 1.2,
                 seed: int = 0, video_loader=None, hint: str = HINT, reflect: str = REFLECT,
                 stats: dict | None = None) -> list[PreferencePair]:
    """LeanPO self-generated pairs (docs/algorithms.md section 5).

    y+: the model's greedy answer with the reference answer as a hint (`hint` appended to the question),
    refined once by a reflection turn (`reflect`); the refined answer is kept when it is correct, else the
    hinted one when that is, else the record yields no pair. y-: one sample without hints on an augmented
    video (`augment_caption` for text models, `augment_frames` with `video_loader`) at temperature 1.2.
    Pairs train on the original prompt.

    stats: filled with ``prompts``, ``pairs``, ``reflected`` (y+ from the reflection), ``no_correct``.
    """

    greedy = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    hinted = [dataclasses.replace(r, problem=f"{r.problem.strip()}\n{hint.format(answer=r.answer)}") for r in records]
    video = [_video_for(video_loader, r, None) for r in records]
    first = [g[0].text for g in engine.generate([_request(prompts, h, v) for h, v in zip(hinted, video)], greedy, 1)]
    turns = [[{"role": "assistant", "content": t}, {"role": "user", "content": reflect}] for t in first]
    refined = [g[0].text for g in engine.generate([_request(prompts, h, v, tr) for h, v, tr in zip(hinted, video, turns)],
                                                  greedy, 1)]
    reqs = []
    for i, rec in enumerate(records):
        s = seed * 1_000_003 + i
        if video_loader is None:
            reqs.append(_request(prompts, dataclasses.replace(rec, caption=augment_caption(rec.caption or "", s))))
        else:
            reqs.append(_request(prompts, rec, _video_for(video_loader, rec, lambda f, s=s: augment_frames(f, s))))
    hot = SamplingConfig(temperature=rejected_temperature, max_tokens=max_tokens, seed=seed)
    rejected = [g[0].text for g in engine.generate(reqs, hot, 1)]
    pairs, reflected, none = [], 0, 0
    for rec, y0, y1, neg in zip(records, first, refined, rejected):
        chosen = y1 if _correct(y1, rec) else (y0 if _correct(y0, rec) else None)
        if chosen is None or chosen == neg:
            none += chosen is None
            continue
        reflected += chosen is y1
        pairs.append(_pair(f"leanpo-{rec.problem_id}", "reflection", rec, chosen, neg, "leanpo",
                           chosen_from="reflection" if chosen is y1 else "hint"))
    if stats is not None:
        stats.update(prompts=len(records), pairs=len(pairs), reflected=reflected, no_correct=none)
    return pairs
