"""Synthetic video-QA: short clips of moving coloured shapes with questions whose answers are known.

Each clip shows a few objects (a circle, square or triangle in one of a few named colours) moving in
straight lines over a plain background; objects may appear at different frames and then stay. One
question per clip, from one of four families:

============  =================  ==========================================================
family        problem_type       question
============  =================  ==========================================================
direction     multiple choice    which way (left/right/up/down) does the red circle move?
order         multiple choice    which object appears first / second / last?
count         numerical          how many objects appear in the video?
distance      regression         how many pixels does the red circle travel?
============  =================  ==========================================================

The records follow the Video-R1 layout (`veripo.data.records.Record`); every record carries a
per-frame caption complete enough for a text-only model to answer from it, and a short Video-R1-COT
style chain of thought (``"process": "<think>...</think>"``, for the SFT cold start) that derives the
answer from that caption alone (`make_process`)::

    direction  <think>green square: frame 0 (76, 16), frame 5 (56, 16). x shrinks, so it moves left: option B.</think>
    order      <think>First frames: yellow circle 0, cyan triangle 2, white triangle 4. The second is the cyan
               triangle: option D.</think>
    count      <think>Objects seen: yellow triangle, blue square. That is 2.</think>
    distance   <think>purple triangle: frame 0 (43, 46), frame 5 (43, 76). Only y changes: 76 - 46 = 30.</think>

A data set is::

    DIR/train.jsonl  DIR/test.jsonl  DIR/clips/00000.mp4 ...  DIR/meta.json

Everything is deterministic per seed: clip ``i`` is drawn from its own generator (seed, i), so it does
not depend on ``n``, and the family of clip ``i`` comes from a seeded permutation of the four families
per block of four clips, so every block of four covers every family.

    python -m veripo.data.synth --out data/synth --n 200 --seed 0 --difficulty 0.3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

import numpy as np

from veripo.data.records import Record, write_records
from veripo.errors import DEBUG_ENV, UserError
from veripo.registry import Registry

GENERATOR_VERSION = "2"
DATA_SOURCE = "veripo-synth"
DEFAULT_DIFFICULTY = 0.3
DEFAULT_TEST_FRACTION = 0.2

SHAPES = ("circle", "square", "triangle")
# Saturated colours, every pair at least 120 apart in some channel, so they stay apart after yuv420p.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
BACKGROUND = (16, 16, 16)
DIRECTIONS = ("left", "right", "up", "down")
_UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_LETTERS = "ABCDEFGH"
MAX_OBJECTS = 5
_TRIES = 100  # scene samples before dropping an object that cannot be placed without touching another


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class VideoParams:
    """Clip geometry and encoding: frame size in pixels (even, for yuv420p), frame count, frame rate."""

    width: int = 96
    height: int = 96
    frames: int = 12
    fps: int = 6

    def __post_init__(self):
        for name in ("width", "height"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 32 or val > 1024 or val % 2:
                raise ValueError(f"video {name} must be an even integer in [32, 1024] (yuv420p needs even"
                                 f" sizes), got {val!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or not 4 <= self.frames <= 256:
            raise ValueError(f"video frames must be an integer in [4, 256], got {self.frames!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, int) or not 1 <= self.fps <= 60:
            raise ValueError(f"video fps must be an integer in [1, 60], got {self.fps!r}")

    @classmethod
    def from_kwargs(cls, params: dict) -> VideoParams:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise TypeError(f"unknown video parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**params)


def _check_difficulty(difficulty: float) -> float:
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be a number in [0, 1] (0 easy, 1 hard), got {difficulty!r}")
    return float(difficulty)


@dataclass(frozen=True)
class _Knobs:
    """What difficulty and the video size mean for one scene."""

    width: int
    height: int
    frames: int
    difficulty: float

    @property
    def radius(self) -> int:
        return max(3, round(0.08 * min(self.width, self.height)))

    @property
    def extent(self) -> int:
        """Half-size of every shape's bounding box (the triangle is the largest)."""
        return math.ceil(1.25 * self.radius)

    @property
    def scale(self) -> float:
        return min(self.width, self.height) / 96.0

    def lerp(self, easy: float, hard: float) -> float:
        return easy + (hard - easy) * self.difficulty

    def bounds(self, axis: int) -> tuple[int, int]:
        """Inclusive range of centre coordinates keeping a shape inside the frame with a 1-pixel margin."""
        size = self.width if axis == 0 else self.height
        return self.extent + 1, size - 2 - self.extent

    @property
    def max_travel(self) -> int:
        """The longest straight move along either axis that stays inside the frame."""
        lo, hi = self.bounds(0 if self.width <= self.height else 1)
        return hi - lo

    def max_speed(self, moving_frames: int) -> int:
        return self.max_travel // max(1, moving_frames)


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class SceneObject:
    """One shape: visible from frame `appear` on, centre `start` then, moving `velocity` pixels a frame."""

    shape: str
    colour: str
    radius: int
    appear: int
    start: tuple[int, int]
    velocity: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    def position(self, t: int) -> tuple[int, int] | None:
        """Centre (x, y) in pixels at frame t, or None before the object appears."""
        if t < self.appear:
            return None
        dt = t - self.appear
        return self.start[0] + self.velocity[0] * dt, self.start[1] + self.velocity[1] * dt


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    frames: int
    objects: tuple[SceneObject, ...]

    def caption(self) -> str:
        """Per-frame text: which objects are visible and where their centres are."""
        parts = [(f"A {self.width}x{self.height} video of {self.frames} frames; (x, y) is an object's centre"
                  " in pixels, x grows to the right and y grows downward.")]
        for t in range(self.frames):
            seen = [f"{o.name} ({p[0]}, {p[1]})" for o in self.objects if (p := o.position(t)) is not None]
            parts.append(f"frame {t}: {', '.join(seen) if seen else 'no objects'}.")
        return " ".join(parts)


@dataclass(frozen=True)
class Question:
    """`answer` is the bare ground truth (a letter for multiple choice, a number otherwise)."""

    family: str
    problem: str
    problem_type: str
    answer: str
    options: tuple[str, ...] = ()
    target: str | None = None

    @property
    def solution(self) -> str:
        return f"<answer>{self.answer}</answer>"


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    scene: Scene
    question: Question


# --------------------------------------------------------------------------- sampling helpers


def _identities(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n (shape, colour) pairs with distinct colours, so a colour names one object."""
    names = list(COLOURS)
    colours = [names[i] for i in rng.permutation(len(names))[:n]]
    return [(SHAPES[int(rng.integers(len(SHAPES)))], c) for c in colours]


def _place(rng: np.random.Generator, k: _Knobs, ident: tuple[str, str], appear: int,
           velocity: tuple[int, int]) -> SceneObject | None:
    """Pick a start so the whole visible path stays inside the frame; None if the path cannot fit."""
    travel = k.frames - 1 - appear
    start = []
    for axis in (0, 1):
        lo, hi = k.bounds(axis)
        shift = velocity[axis] * travel
        lo, hi = lo - min(0, shift), hi - max(0, shift)
        if lo > hi:
            return None
        start.append(int(rng.integers(lo, hi + 1)))
    return SceneObject(ident[0], ident[1], k.radius, appear, (start[0], start[1]), velocity)


def _target_speed(rng: np.random.Generator, k: _Knobs, travel: int) -> int:
    """Fast and obvious when easy, slow when hard; capped so the path fits in the frame."""
    lo = max(1, round(k.lerp(4.0, 1.0) * k.scale))
    hi = max(lo, round(k.lerp(6.0, 2.0) * k.scale))
    return max(1, min(int(rng.integers(lo, hi + 1)), k.max_speed(travel)))


def _wander_velocity(rng: np.random.Generator, k: _Knobs, travel: int) -> tuple[int, int]:
    """Distractors stand still when easy and drift in any direction when hard."""
    if k.difficulty < 1 / 3:
        return 0, 0
    top = min(max(1, round(k.lerp(1.0, 3.0) * k.scale)), k.max_speed(travel))
    return int(rng.integers(-top, top + 1)), int(rng.integers(-top, top + 1))


def _collides(objects: list[SceneObject], k: _Knobs, frames: int) -> bool:
    """True if two visible objects come closer than their sizes allow in any frame."""
    gap = 2 * k.extent + 2
    for t in range(frames):
        pts = [p for o in objects if (p := o.position(t)) is not None]
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                if (pts[i][0] - pts[j][0]) ** 2 + (pts[i][1] - pts[j][1]) ** 2 < gap * gap:
                    return True
    return False


def _sample_objects(rng: np.random.Generator, k: _Knobs, n: int, minimum: int,
                    build: Callable[[np.random.Generator, int], list[SceneObject] | None]) -> list[SceneObject]:
    """Call build(rng, n) until the objects fit without touching; drop an object after many misses."""
    while n >= minimum:
        for _ in range(_TRIES):
            objects = build(rng, n)
            if objects is not None and not _collides(objects, k, k.frames):
                return objects
        n -= 1
    raise RuntimeError(f"could not place {minimum} non-overlapping objects in a {k.width}x{k.height} frame;"
                       " use a larger frame size")


def _n_between(rng: np.random.Generator, lo: float, hi: float) -> int:
    lo_i, hi_i = round(lo), max(round(lo), round(hi))
    return int(rng.integers(lo_i, hi_i + 1))


def _distractors(rng: np.random.Generator, k: _Knobs, idents: list[tuple[str, str]]) -> list[SceneObject] | None:
    out = []
    for ident in idents:
        appear = int(rng.integers(0, k.frames // 2 + 1))
        obj = _place(rng, k, ident, appear, _wander_velocity(rng, k, k.frames - 1 - appear))
        if obj is None:
            return None
        out.append(obj)
    return out


def _lettered(rng: np.random.Generator, choices: list[str], correct: str) -> tuple[tuple[str, ...], str]:
    """Shuffle the choices; return ("A. ...", ...) and the correct letter."""
    order = [choices[i] for i in rng.permutation(len(choices))]
    return tuple(f"{_LETTERS[i]}. {c}" for i, c in enumerate(order)), _LETTERS[order.index(correct)]


def _format_number(x: float) -> str:
    x = round(x, 1)
    return str(int(x)) if x == int(x) else f"{x:.1f}"


# --------------------------------------------------------------------------- question families

QuestionFamily = Callable[[np.random.Generator, _Knobs], tuple[list[SceneObject], Question]]
# Registration order matters: clips draw a family by index into FAMILIES.ordered_names().
FAMILIES: Registry[QuestionFamily] = Registry("question family")


def register_family(name: str) -> Callable[[QuestionFamily], QuestionFamily]:
    return FAMILIES.register(name)


def _moving_target(rng: np.random.Generator, k: _Knobs, n: int, velocity_for: Callable[[int], tuple[int, int]]):
    """A scene builder: object 0 is the target (appears early, moves with velocity_for(travel))."""
    def build(rng: np.random.Generator, n: int) -> list[SceneObject] | None:
        idents = _identities(rng, n)
        appear = 0 if k.difficulty < 0.5 else int(rng.integers(0, k.frames // 4 + 1))
        appear = max(appear, k.frames - 1 - k.max_travel)  # long clips: appear late enough to fit the path
        target = _place(rng, k, idents[0], appear, velocity_for(k.frames - 1 - appear))
        rest = _distractors(rng, k, idents[1:])
        return None if target is None or rest is None else [target] + rest
    return _sample_objects(rng, k, n, 1, build)


@register_family("direction")
def _direction(rng: np.random.Generator, k: _Knobs) -> tuple[list[SceneObject], Question]:
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    ux, uy = _UNIT[direction]

    def velocity(travel: int) -> tuple[int, int]:
        speed = _target_speed(rng, k, travel)
        drift = speed // 3 if k.difficulty >= 0.5 else 0  # a small sideways drift, never dominant
        side = int(rng.integers(-drift, drift + 1))
        return (ux * speed + (side if ux == 0 else 0), uy * speed + (side if uy == 0 else 0))

    n = 1 + _n_between(rng, k.lerp(0, 2), k.lerp(1, 4))
    objects = _moving_target(rng, k, n, velocity)
    target = objects[0]
    options, letter = _lettered(rng, list(DIRECTIONS), direction)
    q = Question("direction", f"In which direction does the {target.name} move?", "multiple choice",
                 letter, options, target.name)
    return objects, q


@register_family("distance")
def _distance(rng: np.random.Generator, k: _Knobs) -> tuple[list[SceneObject], Question]:
    diagonal = k.difficulty >= 0.5 and rng.random() < 0.5

    def velocity(travel: int) -> tuple[int, int]:
        speed = _target_speed(rng, k, travel)
        ux, uy = _UNIT[DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]]
        if not diagonal:
            return ux * speed, uy * speed
        other = int(rng.integers(1, speed + 1)) * (1 if rng.random() < 0.5 else -1)
        return (ux * speed, other) if ux else (other, uy * speed)

    n = 1 + _n_between(rng, k.lerp(0, 2), k.lerp(1, 4))
    objects = _moving_target(rng, k, n, velocity)
    target = objects[0]
    travel = k.frames - 1 - target.appear
    dist = math.hypot(*target.velocity) * travel
    q = Question("distance", f"How many pixels does the centre of the {target.name} travel from the frame"
                 " where it first appears to the last frame? Answer with a number.", "regression",
                 _format_number(dist), (), target.name)
    return objects, q


def _appear_frames(rng: np.random.Generator, frames: int, n: int, gap: int) -> list[int]:
    """n distinct appearance frames, at least `gap` apart, all before the last frame."""
    slots = frames - 1 - (n - 1) * (gap - 1)
    picks = np.sort(rng.choice(slots, size=n, replace=False))
    return [int(p) + i * (gap - 1) for i, p in enumerate(picks)]


@register_family("order")
def _order(rng: np.random.Generator, k: _Knobs) -> tuple[list[SceneObject], Question]:
    n = _n_between(rng, k.lerp(2, 3), k.lerp(3, 5))
    n = min(n, k.frames - 1)  # distinct appearance frames, all before the last frame
    gap = max(1, round(k.lerp(3, 1)))  # frames between appearances, narrowed below when the clip is short

    def build(rng: np.random.Generator, n: int) -> list[SceneObject] | None:
        g = max(1, min(gap, (k.frames - 2) // (n - 1)))
        appears = _appear_frames(rng, k.frames, n, g)
        out = []
        for ident, appear in zip(_identities(rng, n), [appears[i] for i in rng.permutation(n)]):
            obj = _place(rng, k, ident, appear, _wander_velocity(rng, k, k.frames - 1 - appear))
            if obj is None:
                return None
            out.append(obj)
        return out

    objects = _sample_objects(rng, k, n, 2, build)
    ranked = sorted(objects, key=lambda o: o.appear)
    which = ("first", "second", "last")[int(rng.integers(3))]
    correct = {"first": ranked[0], "second": ranked[1], "last": ranked[-1]}[which].name
    present = [o.name for o in objects]
    others = [present[i] for i in rng.permutation(len(present)) if present[i] != correct][:3]
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
    while len(others) < 3:  # pad to four options with objects that never appear
        others.append(absent.pop(int(rng.integers(len(absent)))))
    options, letter = _lettered(rng, [correct] + others, correct)
    q = Question("order", f"Which object appears {which} in the video?", "multiple choice", letter, options,
                 correct)
    return objects, q


@register_family("count")
def _count(rng: np.random.Generator, k: _Knobs) -> tuple[list[SceneObject], Question]:
    n = _n_between(rng, 1, k.lerp(3, MAX_OBJECTS))
    latest = round(k.lerp(0, k.frames // 2))

    def build(rng: np.random.Generator, n: int) -> list[SceneObject] | None:
        out = []
        for ident in _identities(rng, n):
            appear = int(rng.integers(0, latest + 1))
            obj = _place(rng, k, ident, appear, _wander_velocity(rng, k, k.frames - 1 - appear))
            if obj is None:
                return None
            out.append(obj)
        return out

    objects = _sample_objects(rng, k, n, 1, build)
    q = Question("count", "How many objects appear in the video in total? Answer with a number.", "numerical",
                 str(len(objects)))
    return objects, q


# --------------------------------------------------------------------------- chains of thought
#
# Every record carries a short Video-R1-COT style `process` ("<think>...</think>") for the SFT cold
# start. It reads only what the caption says (first frames, positions as printed) and ends on the
# answer: "option X" for multiple choice, the number last for numerical and regression questions.

ProcessWriter = Callable[[Scene, Question], str]
PROCESSES: Registry[ProcessWriter] = Registry("chain-of-thought writer")


def register_process(name: str) -> Callable[[ProcessWriter], ProcessWriter]:
    return PROCESSES.register(name)


def _first_frame(obj: SceneObject, frames: int) -> int:
    """The first caption frame listing obj (its appearance frame, which is always inside the clip)."""
    return next(t for t in range(frames) if obj.position(t) is not None)


def _seen_in_order(scene: Scene) -> list[tuple[SceneObject, int]]:
    """(object, first caption frame) in the order a reader of the caption meets them."""
    firsts = [(o, _first_frame(o, scene.frames)) for o in scene.objects]
    return sorted(firsts, key=lambda pair: pair[1])  # stable: ties keep the caption's order


def _ends(scene: Scene, name: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The NAME's centre in the first caption frame listing it and in the last frame, as text
    ('NAME: frame a (x0, y0), frame b (x1, y1)', positions written as the caption writes them) and the
    two points."""
    [obj] = [o for o in scene.objects if o.name == name]
    a, b = _first_frame(obj, scene.frames), scene.frames - 1
    p0, p1 = obj.position(a), obj.position(b)
    return f"{name}: frame {a} ({p0[0]}, {p0[1]}), frame {b} ({p1[0]}, {p1[1]})", p0, p1


def _option_letter(q: Question, text: str) -> str:
    return next(o[0] for o in q.options if o[3:] == text)


@register_process("direction")
def _direction_process(scene: Scene, q: Question) -> str:
    """The target's first and last position; the coordinate that changes most and its sign give the way."""
    path, (x0, y0), (x1, y1) = _ends(scene, q.target)
    dx, dy = x1 - x0, y1 - y0
    axis, delta = ("x", dx) if abs(dx) >= abs(dy) else ("y", dy)
    direction = {"x": ("left", "right"), "y": ("up", "down")}[axis][delta > 0]
    change = ("grows" if delta > 0 else "shrinks") + (" most" if dx and dy else "")
    return f"<think>{path}. {axis} {change}, so it moves {direction}: option {_option_letter(q, direction)}.</think>"


@register_process("order")
def _order_process(scene: Scene, q: Question) -> str:
    seen = _seen_in_order(scene)
    which = q.problem.split(" appears ")[1].split()[0]  # first / second / last
    firsts = ", ".join(f"{o.name} {t}" for o, t in seen)
    name = {"first": seen[0], "second": seen[1], "last": seen[-1]}[which][0].name
    return f"<think>First frames: {firsts}. The {which} is the {name}: option {_option_letter(q, name)}.</think>"


@register_process("count")
def _count_process(scene: Scene, q: Question) -> str:
    names = [o.name for o, _ in _seen_in_order(scene)]
    return f"<think>Objects seen: {', '.join(names)}. That is {len(names)}.</think>"


@register_process("distance")
def _distance_process(scene: Scene, q: Question) -> str:
    """The target's first and last position; the path is straight, so its length is their distance:
    the one coordinate's change for an axis move, Pythagoras for a diagonal (rounded like the answer)."""
    path, (x0, y0), (x1, y1) = _ends(scene, q.target)
    dx, dy = abs(x1 - x0), abs(y1 - y0)
    dist = _format_number(math.hypot(dx, dy))
    if dx == 0 or dy == 0:
        a, b = (x0, x1) if dx else (y0, y1)
        how = f"Only {'x' if dx else 'y'} changes: {max(a, b)} - {min(a, b)} = {dist}"
    else:
        equals = "=" if float(dist) == math.hypot(dx, dy) else "is about"
        how = f"x changes by {dx}, y by {dy}, so sqrt({dx}^2 + {dy}^2) {equals} {dist}"
    return f"<think>{path}. {how}.</think>"


def make_process(scene: Scene, question: Question) -> str | None:
    """The record's chain of thought, derived from the caption; None for a family without a writer."""
    if question.family not in PROCESSES:
        return None
    return PROCESSES.get(question.family)(scene, question)


# --------------------------------------------------------------------------- rendering and encoding


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: int) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = round(0.85 * r)
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # equilateral triangle, apex up, inscribed in a circle of radius 1.25 r centred on the object
    big = 1.25 * r
    return (dy <= big / 2) & (np.abs(dx) * math.sqrt(3) <= dy + big)


def render(scene: Scene) -> np.ndarray:
    """Draw the scene: uint8 RGB frames [T, H, W, 3]; later objects are drawn over earlier ones."""
    frames = np.empty((scene.frames, scene.height, scene.width, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    yy, xx = np.mgrid[0:scene.height, 0:scene.width]
    for t in range(scene.frames):
        for obj in scene.objects:
            p = obj.position(t)
            if p is not None:
                frames[t][_shape_mask(obj.shape, xx - p[0], yy - p[1], obj.radius)] = obj.rgb
    return frames


# Constant quantiser, one thread, no B-frames or scene-cut analysis: x264's CRF mode (its macroblock
# tree) gave different bytes, and sometimes different decoded pixels, for the same input within one
# process; this setting gave identical bytes in every repeat we tried. qp 10 keeps colours accurate.
_X264_OPTIONS = {"qp": "10", "preset": "medium", "threads": "1", "x264-params": "bframes=0:scenecut=0"}


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 RGB frames [T, H, W, 3] as H.264/yuv420p MP4, atomically (temp file + rename)."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("writing clips needs PyAV: pip install av") from e
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = _X264_OPTIONS
            for i, frame in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                video_frame.pts, video_frame.time_base = i, Fraction(1, fps)
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- public API


def _as_rng(rng_or_seed: np.random.Generator | np.random.SeedSequence | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip `index` in the data set of `seed`; it does not depend on the set's size."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))


def family_of(seed: int, index: int) -> str:
    """Clip `index`'s family: each block of four clips holds every family once, in a seeded order."""
    block_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index // 4)))
    names = FAMILIES.ordered_names()
    return names[int(block_rng.permutation(len(names))[index % len(names)])]


def make_clip(rng_or_seed: np.random.Generator | np.random.SeedSequence | int, family: str | None = None,
              difficulty: float = DEFAULT_DIFFICULTY, width: int = 96, height: int = 96,
              frames: int = 12) -> Clip:
    """Sample one scene and question and render it.

    Returns `Clip(frames, scene, question)`: frames are uint8 RGB [T, H, W, 3]; `scene` lists every
    object's shape, colour, appearance frame and motion, so the answer can be checked against pixels.
    `family` is one of `FAMILIES` (default: drawn from the generator, by index in registration order).
    """
    rng = _as_rng(rng_or_seed)
    video = VideoParams(width=width, height=height, frames=frames)
    k = _Knobs(video.width, video.height, video.frames, _check_difficulty(difficulty))
    if family is None:
        family = FAMILIES.ordered_names()[int(rng.integers(len(FAMILIES)))]
    objects, question = FAMILIES.get(family)(rng, k)  # an unknown family: UnknownNameError, a ValueError
    scene = Scene(k.width, k.height, k.frames, tuple(objects))
    return Clip(render(scene), scene, question)


def _record(clip: Clip, problem_id: str, rel_path: str) -> Record:
    q = clip.question
    extra = {"family": q.family}
    if (process := make_process(clip.scene, q)) is not None:
        extra["process"] = process
    return Record(problem_id=problem_id, problem=q.problem, data_type="video", problem_type=q.problem_type,
                  solution=q.solution, options=q.options, path=rel_path, data_source=DATA_SOURCE,
                  caption=clip.scene.caption(), extra=extra)


def _split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    n_test = math.floor(n * test_fraction + 0.5)
    if test_fraction > 0 and n >= 2:
        n_test = max(1, n_test)
    n_test = min(n_test, n - 1)
    return n - n_test, n_test


def _count_by(records: list[Record], key: Callable[[Record], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[key(r)] = out.get(key(r), 0) + 1
    return dict(sorted(out.items()))


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate(out_dir: str | os.PathLike, n: int, seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY,
             test_fraction: float = DEFAULT_TEST_FRACTION, progress: bool | None = None,
             **video_params) -> dict:
    """Write a synthetic video-QA set: out_dir/{train,test}.jsonl, out_dir/clips/*.mp4, out_dir/meta.json.

    `n` counts clips over both splits; the last ``round(n * test_fraction)`` clips form the held-out
    test split (at least one when test_fraction > 0 and n >= 2). `video_params` are `VideoParams`
    fields (width, height, frames, fps). `progress`: show a tqdm bar (default: when n >= 50).
    Returns the summary written to meta.json plus the written paths.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of clips) must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    difficulty = _check_difficulty(difficulty)
    video = VideoParams.from_kwargs(video_params)

    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    n_train, _ = _split_sizes(n, test_fraction)
    from tqdm import tqdm

    bar = tqdm(total=n, desc="synth clips", unit="clip", disable=(n < 50) if progress is None else not progress)
    records: list[Record] = []
    for i in range(n):
        clip = make_clip(clip_rng(seed, i), family_of(seed, i), difficulty, video.width, video.height, video.frames)
        rel = f"clips/{i:05d}.mp4"
        write_mp4(out / rel, clip.frames, video.fps)
        records.append(_record(clip, f"synth-{seed}-{i:05d}", rel))
        bar.update(1)
    bar.close()

    train, test = records[:n_train], records[n_train:]
    write_records(out / "train.jsonl", train)
    write_records(out / "test.jsonl", test)
    meta = {
        "generator": "veripo.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "difficulty": difficulty,
        "test_fraction": test_fraction,
        "video": asdict(video),
        "splits": {
            name: {"n": len(recs),
                   "problem_types": _count_by(recs, lambda r: r.problem_type),
                   "families": _count_by(recs, lambda r: r.extra["family"])}
            for name, recs in (("train", train), ("test", test))
        },
        "problem_types": _count_by(records, lambda r: r.problem_type),
        "families": _count_by(records, lambda r: r.extra["family"]),
    }
    _write_json_atomic(out / "meta.json", meta)
    return {**meta, "train_path": str(out / "train.jsonl"), "test_path": str(out / "test.jsonl"),
            "meta_path": str(out / "meta.json"), "clips_dir": str(out / "clips")}


# --------------------------------------------------------------------------- CLI


def _ranged(kind: type, lo: float | None = None, hi: float | None = None, hi_open: bool = False,
            even: bool = False) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            val = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if isinstance(val, float) and not math.isfinite(val):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and val < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        if hi is not None and (val >= hi if hi_open else val > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        if even and val % 2:
            raise argparse.ArgumentTypeError(f"must be even (yuv420p), got {text}")
        return val
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m veripo.data.synth",
                                description="Generate a synthetic video-QA set (moving shapes; direction, order,"
                                            " count and distance questions) in the Video-R1 JSONL layout.")
    d = VideoParams()
    p.add_argument("--out", required=True, help="output folder (train.jsonl, test.jsonl, clips/, meta.json)")
    p.add_argument("--n", type=_ranged(int, 1), required=True, help="number of clips over both splits")
    p.add_argument("--seed", type=_ranged(int, 0), default=0, help="random seed (default 0)")
    p.add_argument("--difficulty", type=_ranged(float, 0.0, 1.0), default=DEFAULT_DIFFICULTY,
                   help=f"0 easy .. 1 hard: more distractors, slower motion (default {DEFAULT_DIFFICULTY})")
    p.add_argument("--test-fraction", type=_ranged(float, 0.0, 1.0, hi_open=True), default=DEFAULT_TEST_FRACTION,
                   help=f"share of clips held out for test, in [0, 1) (default {DEFAULT_TEST_FRACTION})")
    p.add_argument("--width", type=_ranged(int, 32, 1024, even=True), default=d.width, help="frame width, even")
    p.add_argument("--height", type=_ranged(int, 32, 1024, even=True), default=d.height, help="frame height, even")
    p.add_argument("--frames", type=_ranged(int, 4, 256), default=d.frames, help="frames per clip")
    p.add_argument("--fps", type=_ranged(int, 1, 60), default=d.fps, help="frames per second")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    bar.add_argument("--quiet", dest="progress", action="store_false", help="never show a progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = generate(args.out, args.n, seed=args.seed, difficulty=args.difficulty,
                           test_fraction=args.test_fraction, progress=args.progress, width=args.width,
                           height=args.height, frames=args.frames, fps=args.fps)
    except UserError as e:  # one line, exit 2, like every entry point (VERIPO_DEBUG=1: with its traceback)
        from veripo.entry import report

        return report("veripo.data.synth", e)
    except (ValueError, RuntimeError, OSError) as e:  # bad values, an unplaceable scene, an unwritable --out
        if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            raise
        parser.error(str(e))
    split = summary["splits"]
    print(f"wrote {summary['n']} clips to {args.out}: {split['train']['n']} train, {split['test']['n']} test;"
          f" problem types {summary['problem_types']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
