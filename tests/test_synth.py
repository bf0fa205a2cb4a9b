"""The synthetic video-QA generator: determinism, playable clips, valid records, answers that agree
with the pixels and with the caption, and chains of thought that derive them from the caption."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from veripo.data import synth
from veripo.data.prompts import PromptStyle, build_prompt
from veripo.data.records import Record, load_records
from veripo.rewards import extract_answer, extract_think
from veripo.stages.sft import sft_target

REPO = Path(__file__).resolve().parents[1]
SEED = 3
N = 20
MIN_PIXELS = 8  # fewer matching pixels than this: the colour is not on screen
NAME_RE = re.compile(r"\b(" + "|".join(synth.COLOURS) + r") (" + "|".join(synth.SHAPES) + r")\b")


# --------------------------------------------------------------------------- helpers


def decode(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a clip as uint8 RGB [T, H, W, 3], decoded with PyAV."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def colour_mask(frame: np.ndarray, colour: str, tol: int = 48) -> np.ndarray:
    return np.abs(frame.astype(np.int16) - np.array(synth.COLOURS[colour], np.int16)).max(-1) < tol


def centroid(frame: np.ndarray, colour: str) -> tuple[float, float] | None:
    ys, xs = np.nonzero(colour_mask(frame, colour))
    return (float(xs.mean()), float(ys.mean())) if len(xs) >= MIN_PIXELS else None


def first_frame(frames: np.ndarray, colour: str) -> int | None:
    return next((t for t in range(len(frames)) if centroid(frames[t], colour) is not None), None)


def direction_of(dx: float, dy: float) -> str:
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def option_text(options, letter: str) -> str:
    [text] = [o[3:] for o in options if o.startswith(f"{letter}. ")]
    return text


def bare(solution: str) -> str:
    m = re.fullmatch(r"<answer>(.+)</answer>", solution)
    assert m, f"solution not in <answer>..</answer> form: {solution!r}"
    return m.group(1)


def parse_caption(caption: str) -> list[dict[str, tuple[int, int]]]:
    """frame -> {object name: (x, y)} from the caption text."""
    frames = []
    for t, body in re.findall(r"frame (\d+): ([^.]*)\.", caption):
        assert int(t) == len(frames)
        frames.append({f"{c} {s}": (int(x), int(y))
                       for c, s, x, y in re.findall(NAME_RE.pattern + r" \((\d+), (\d+)\)", body)})
    return frames


def answer_from_caption(problem: str, family: str, caption: str, options) -> str:
    """Answer the question the way a text-only model could, from the caption alone."""
    frames = parse_caption(caption)
    names = {n for f in frames for n in f}
    if family == "count":
        return str(len(names))
    if family == "order":
        which = re.search(r"appears (first|second|last)", problem).group(1)
        ranked = sorted(names, key=lambda n: next(t for t, f in enumerate(frames) if n in f))
        name = {"first": ranked[0], "second": ranked[1], "last": ranked[-1]}[which]
        return next(o[0] for o in options if o[3:] == name)
    target = " ".join(NAME_RE.search(problem).groups())
    path = [f[target] for f in frames if target in f]
    dx, dy = path[-1][0] - path[0][0], path[-1][1] - path[0][1]
    if family == "direction":
        return next(o[0] for o in options if o[3:] == direction_of(dx, dy))
    return str(round(math.hypot(dx, dy), 1)).removesuffix(".0")


def read_split(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = synth.generate(out, N, seed=SEED, difficulty=0.6, progress=False)
    return out, summary


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_text_and_frames_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    synth.generate(tmp_path / "b", N, seed=SEED, difficulty=0.6, progress=False)
    synth.generate(tmp_path / "c", N, seed=SEED + 1, difficulty=0.6, progress=False)
    for name in ("train.jsonl", "test.jsonl", "meta.json"):
        assert (out / name).read_text() == (tmp_path / "b" / name).read_text(), name
    for i in range(N):
        clip = f"clips/{i:05d}.mp4"
        assert np.array_equal(decode(out / clip), decode(tmp_path / "b" / clip)), clip

    assert (out / "train.jsonl").read_text() != (tmp_path / "c" / "train.jsonl").read_text()
    for i in range(5):
        clip = f"clips/{i:05d}.mp4"
        assert not np.array_equal(decode(out / clip), decode(tmp_path / "c" / clip)), clip


def test_clip_i_does_not_depend_on_n(tmp_path):
    synth.generate(tmp_path / "small", 3, seed=9, progress=False)
    synth.generate(tmp_path / "big", 7, seed=9, progress=False)
    small = {r["problem_id"]: r for s in ("train", "test") for r in read_split(tmp_path / "small", s)}
    big = {r["problem_id"]: r for s in ("train", "test") for r in read_split(tmp_path / "big", s)}
    assert len(small) == 3 and len(big) == 7
    for pid, rec in small.items():
        assert big[pid] == rec
        assert np.array_equal(decode(tmp_path / "small" / rec["path"]), decode(tmp_path / "big" / rec["path"]))


def test_make_clip_is_deterministic_and_accepts_a_generator():
    a = synth.make_clip(11, "order", 0.5)
    b = synth.make_clip(np.random.default_rng(11), "order", 0.5)
    c = synth.make_clip(12, "order", 0.5)
    assert np.array_equal(a.frames, b.frames) and a.scene == b.scene and a.question == b.question
    assert a.scene != c.scene


# --------------------------------------------------------------------------- files and records


def test_writes_playable_clips_and_splits(dataset):
    out, summary = dataset
    clips = sorted((out / "clips").iterdir())
    assert [p.name for p in clips] == [f"{i:05d}.mp4" for i in range(N)]
    video = synth.VideoParams()
    for p in clips:
        frames = decode(p)
        assert frames.shape == (video.frames, video.height, video.width, 3), p
        assert frames.dtype == np.uint8
    with av.open(str(clips[0])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == video.fps
    assert len(read_split(out, "train")) == 16 and len(read_split(out, "test")) == 4
    assert summary["splits"]["train"]["n"] == 16 and summary["splits"]["test"]["n"] == 4
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temp files left behind"


def test_records_validate_and_follow_video_r1(dataset):
    out, _ = dataset
    recs = load_records(out / "train.jsonl", check_media=True) + load_records(out / "test.jsonl", check_media=True)
    assert len(recs) == N and len({r.problem_id for r in recs}) == N
    for r in recs:
        assert r.data_type == "video" and r.data_source == "veripo-synth"
        assert os.path.isfile(r.path) and r.path.endswith(".mp4")
        assert r.caption and r.caption.count("frame ") == synth.VideoParams().frames
        answer = bare(r.solution)
        if r.problem_type == "multiple choice":
            letters = [o[0] for o in r.options]
            assert letters == list("ABCD"[:len(r.options)]) and all(o[1:3] == ". " for o in r.options)
            assert answer in letters
            assert len(set(r.options)) == len(r.options)
        elif r.problem_type == "numerical":
            assert answer.isdigit() and 1 <= int(answer) <= synth.MAX_OBJECTS
        else:
            assert r.problem_type == "regression" and float(answer) > 0
    mc_letters = {bare(r.solution) for r in recs if r.problem_type == "multiple choice"}
    assert len(mc_letters) > 1, "options are not shuffled: the answer is always the same letter"


def test_meta_counts_cover_all_families(dataset):
    out, summary = dataset
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == SEED and meta["n"] == N and meta["difficulty"] == 0.6
    assert meta["version"] == synth.GENERATOR_VERSION
    records = read_split(out, "train") + read_split(out, "test")
    families = {}
    for r in records:
        families[r["family"]] = families.get(r["family"], 0) + 1
    assert meta["families"] == families and set(families) == set(synth.FAMILIES)
    types = {t: sum(r["problem_type"] == t for r in records) for t in ("multiple choice", "numerical", "regression")}
    assert meta["problem_types"] == types and all(types.values())
    assert {k: v for k, v in summary.items() if k in meta} == meta


@pytest.mark.parametrize("n,fraction,expected", [(20, 0.2, (16, 4)), (2, 0.2, (1, 1)), (1, 0.5, (1, 0)),
                                                 (5, 0.0, (5, 0))])
def test_split_sizes(n, fraction, expected):
    assert synth._split_sizes(n, fraction) == expected


# --------------------------------------------------------------------------- answers vs pixels and caption


def test_solutions_agree_with_decoded_frames(dataset):
    """Recompute every answer from the decoded video (colour masks and centroids) and compare."""
    out, _ = dataset
    checked = set()
    for rec in read_split(out, "train") + read_split(out, "test"):
        frames = decode(out / rec["path"])
        answer, family = bare(rec["solution"]), rec["family"]
        if family == "count":
            present = [c for c in synth.COLOURS if first_frame(frames, c) is not None]
            assert int(answer) == len(present), rec["problem_id"]
        elif family == "order":
            which = re.search(r"appears (first|second|last)", rec["problem"]).group(1)
            firsts = {c: t for c in synth.COLOURS if (t := first_frame(frames, c)) is not None}
            ranked = sorted(firsts, key=firsts.get)
            expected = {"first": ranked[0], "second": ranked[1], "last": ranked[-1]}[which]
            assert len(set(firsts.values())) == len(firsts), "objects must appear at distinct frames"
            assert option_text(rec["options"], answer).split()[0] == expected, rec["problem_id"]
        else:
            colour = NAME_RE.search(rec["problem"]).group(1)
            start = first_frame(frames, colour)
            (x0, y0), (x1, y1) = centroid(frames[start], colour), centroid(frames[-1], colour)
            if family == "direction":
                assert option_text(rec["options"], answer) == direction_of(x1 - x0, y1 - y0), rec["problem_id"]
            else:
                assert abs(float(answer) - math.hypot(x1 - x0, y1 - y0)) < 1.5, rec["problem_id"]
        checked.add(family)
    assert checked == set(synth.FAMILIES)


def test_caption_alone_answers_every_question(dataset):
    out, _ = dataset
    for rec in read_split(out, "train") + read_split(out, "test"):
        got = answer_from_caption(rec["problem"], rec["family"], rec["caption"], rec["options"])
        assert got == bare(rec["solution"]), (rec["problem_id"], rec["caption"])


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = len(xs) / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    return "square" if fill > 0.9 else "circle" if fill > 0.6 else "triangle"


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
@pytest.mark.parametrize("family", list(synth.FAMILIES))
def test_scene_matches_rendered_frames(family, difficulty):
    """Each object is drawn exactly where the scene (and the caption) says, with its own shape, from
    the frame it appears on; nothing overlaps; the question's target and answer fit the scene."""
    for seed in range(12):
        clip = synth.make_clip(seed, family, difficulty, width=80, height=64, frames=10)
        scene, q = clip.scene, clip.question
        assert clip.frames.shape == (10, 64, 80, 3) and clip.frames.dtype == np.uint8
        caption = parse_caption(scene.caption())
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        for obj in scene.objects:
            areas = set()
            for t in range(scene.frames):
                mask = colour_mask(clip.frames[t], obj.colour, tol=1)
                pos = obj.position(t)
                if pos is None:
                    assert not mask.any() and obj.name not in caption[t]
                    continue
                assert caption[t][obj.name] == pos
                ys, xs = np.nonzero(mask)
                assert abs(xs.mean() - pos[0]) < 0.5 and abs(ys.mean() - pos[1]) < 0.5
                assert _shape_of(mask) == obj.shape
                areas.add(len(xs))
            assert len(areas) == 1, f"{obj.name} is partly hidden or clipped"
        by_name = {o.name: o for o in scene.objects}
        if family == "count":
            assert q.answer == str(len(scene.objects)) and q.target is None
        elif family == "order":
            which = re.search(r"appears (first|second|last)", q.problem).group(1)
            ranked = sorted(scene.objects, key=lambda o: o.appear)
            assert len({o.appear for o in ranked}) == len(ranked)
            expected = {"first": ranked[0], "second": ranked[1], "last": ranked[-1]}[which]
            assert len(q.options) == 4 and option_text(q.options, q.answer) == expected.name == q.target
        else:
            target = by_name[q.target]
            assert f"the {q.target} " in q.problem
            vx, vy = target.velocity
            if family == "direction":
                assert len(q.options) == 4 and option_text(q.options, q.answer) == direction_of(vx, vy)
                assert abs(vx) != abs(vy)
            else:
                travel = scene.frames - 1 - target.appear
                assert abs(float(q.answer) - math.hypot(vx, vy) * travel) <= 0.05 and travel > 0


def test_options_are_shuffled():
    directions = [synth.make_clip(s, "direction").question for s in range(20)]
    orders = [synth.make_clip(s, "order").question for s in range(20)]
    assert len({q.options for q in directions}) > 5
    assert all(sorted(o[3:] for o in q.options) == sorted(synth.DIRECTIONS) for q in directions)
    assert len({q.answer for q in orders}) >= 3 and len({q.answer for q in directions}) >= 3


def test_difficulty_adds_objects_and_slows_motion():
    def stats(difficulty):
        clips = [synth.make_clip(s, "direction", difficulty) for s in range(30)]
        objects = np.mean([len(c.scene.objects) for c in clips])
        speed = np.mean([max(map(abs, c.scene.objects[0].velocity)) for c in clips])
        moving_distractors = sum(o.velocity != (0, 0) for c in clips for o in c.scene.objects[1:])
        return objects, speed, moving_distractors

    easy, hard = stats(0.0), stats(1.0)
    assert hard[0] > easy[0] + 1
    assert hard[1] < easy[1] / 2
    assert easy[2] == 0 and hard[2] > 0


def test_progress_bar_when_asked(tmp_path, capsys):
    synth.generate(tmp_path / "bar", 2, progress=True)
    assert "synth clips" in capsys.readouterr().err
    synth.generate(tmp_path / "quiet", 2)
    assert "synth clips" not in capsys.readouterr().err


# --------------------------------------------------------------------------- chains of thought

POINT = r"\((\d+), (\d+)\)"
ENDS_RE = re.compile(r"<think>" + NAME_RE.pattern + r": frame (\d+) " + POINT + r", frame (\d+) " + POINT + r"\. ")


def conclusion(process: str, problem_type: str) -> str:
    """The answer a chain of thought ends on: its last "option X" or its last number."""
    think = extract_think(process)
    if problem_type == "multiple choice":
        return re.findall(r"option ([A-H])\b", think)[-1]
    return re.findall(r"\d+(?:\.\d+)?", think)[-1]


def check_process(process: str, problem: str, family: str, caption: str, options, answer: str) -> None:
    """The chain of thought reads only what the caption says, its steps hold, and it ends on the answer."""
    assert process.startswith("<think>") and process.endswith("</think>") and process.count("<think>") == 1
    assert extract_think(process) and "<answer>" not in process
    assert extract_answer(process + f"<answer>{answer}</answer>") == answer
    problem_type = {"count": "numerical", "distance": "regression"}.get(family, "multiple choice")
    assert conclusion(process, problem_type) == answer, process

    frames = parse_caption(caption)
    seen = {n for f in frames for n in f}
    first = {n: next(t for t, f in enumerate(frames) if n in f) for n in seen}
    named = [" ".join(m) for m in NAME_RE.findall(process)]
    assert set(named) <= seen, (process, caption)  # every object it names is in the caption
    for x, y in re.findall(POINT, process):  # every position it quotes is written in the caption
        assert f"({x}, {y})" in caption, (process, caption)

    if family in ("direction", "distance"):
        m = ENDS_RE.match(process)
        assert m, process
        colour, shape, a, x0, y0, b, x1, y1 = m.groups()
        name = f"{colour} {shape}"
        assert name == " ".join(NAME_RE.search(problem).groups())  # the question's object
        a, b, x0, y0, x1, y1 = map(int, (a, b, x0, y0, x1, y1))
        assert a == first[name] and b == len(frames) - 1
        assert frames[a][name] == (x0, y0) and frames[b][name] == (x1, y1)
        dx, dy = x1 - x0, y1 - y0
        if family == "direction":
            axis, delta = ("x", dx) if abs(dx) >= abs(dy) else ("y", dy)
            word = {"x": ("left", "right"), "y": ("up", "down")}[axis][delta > 0]
            assert f" {axis} {'grows' if delta > 0 else 'shrinks'}" in process
            assert f"it moves {word}: option {answer}." in process and option_text(options, answer) == word
        elif dx == 0 or dy == 0:
            hi, lo, dist = map(int, re.search(r"(\d+) - (\d+) = (\d+)\.</think>$", process).groups())
            assert hi - lo == dist == abs(dx + dy) and {hi, lo} == ({x0, x1} if dx else {y0, y1})
        else:
            m = re.search(r"x changes by (\d+), y by (\d+), so sqrt\((\d+)\^2 \+ (\d+)\^2\) (?:=|is about) ", process)
            assert m and m.groups() == (str(abs(dx)), str(abs(dy))) * 2, process
    elif family == "order":
        listed = re.search(r"First frames: (.*?)\. The ", process).group(1).split(", ")
        pairs = [(" ".join(item.split()[:2]), int(item.split()[2])) for item in listed]
        assert pairs == sorted(first.items(), key=lambda kv: kv[1])  # every object, at its first frame
        which = re.search(r"appears (first|second|last)", problem).group(1)
        assert f"The {which} is the {option_text(options, answer)}: option {answer}." in process
    else:
        listed = re.search(r"Objects seen: (.*?)\. That is (\d+)\.", process)
        names = listed.group(1).split(", ")
        assert set(names) == seen and len(names) == len(seen) == int(listed.group(2))


def test_every_record_carries_a_process_that_derives_its_answer_from_the_caption(dataset):
    out, _ = dataset
    recs = load_records(out / "train.jsonl") + load_records(out / "test.jsonl")
    raw = {r["problem_id"]: r for s in ("train", "test") for r in read_split(out, s)}
    for r in recs:
        assert raw[r.problem_id]["process"] == r.extra["process"]  # a top-level JSONL field, like "family"
        check_process(r.extra["process"], r.problem, r.extra["family"], r.caption, r.options, r.answer)
        assert sft_target(r) == f"{r.extra['process']}<answer>{r.answer}</answer>"


@pytest.mark.parametrize("difficulty,frames", [(0.0, 6), (0.3, 12), (0.6, 8), (1.0, 10)])
@pytest.mark.parametrize("family", list(synth.FAMILIES))
def test_process_reads_only_the_prompted_caption(family, difficulty, frames):
    """For many scenes the process's objects, frames and positions all come from the caption that the
    text-only prompt shows, and its conclusion is the ground truth."""
    style = PromptStyle(use_caption=True, use_video=False)
    for seed in range(15):
        clip = synth.make_clip(seed, family, difficulty, frames=frames)
        rec = synth._record(clip, f"p{seed}", "clips/x.mp4")
        prompt = build_prompt(rec, style)
        caption = prompt.split("Video description:\n", 1)[1].split("\n\nQuestion: ", 1)[0]
        assert caption == rec.caption
        check_process(rec.extra["process"], rec.problem, family, caption, rec.options, rec.answer)
        assert rec.extra["process"] == synth.make_process(clip.scene, clip.question)  # deterministic


def test_diagonal_distance_process_rounds_like_the_answer():
    done = set()
    for seed in range(60):
        clip = synth.make_clip(seed, "distance", 1.0)
        process, answer = synth.make_process(clip.scene, clip.question), clip.question.answer
        if "sqrt(" not in process:
            continue
        dx, dy = map(int, re.search(r"sqrt\((\d+)\^2 \+ (\d+)\^2\)", process).groups())
        assert process.endswith(f" {answer}.</think>") and answer == synth._format_number(math.hypot(dx, dy))
        done.add(" = " in process)
    assert False in done, "no rounded diagonal distance among the samples"


def test_processes_fit_the_cpu_recipes_token_budget(smollm2_dir):
    """The embedded recipe (difficulty 0, 6 frames) samples 64 tokens: a whole taught response
    (process, answer, end of sequence) must fit, so GRPO can reward complete answers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    for family in synth.FAMILIES:
        lengths = []
        for seed in range(25):
            clip = synth.make_clip(seed, family, 0.0, frames=6)
            target = sft_target(synth._record(clip, "x", "clips/x.mp4"))
            lengths.append(len(tok(target, add_special_tokens=False)["input_ids"]) + 1)
        assert max(lengths) <= 64, (family, lengths)


def test_sft_target_falls_back_to_a_stub_without_a_usable_process():
    rec = synth._record(synth.make_clip(0, "count"), "x", "clips/x.mp4")
    for extra in ({}, {"process": "no tags here"}, {"process": "<think>unclosed"}, {"process": 3}):
        stub = Record(rec.problem_id, rec.problem, rec.data_type, rec.problem_type, rec.solution, path=rec.path,
                      caption=rec.caption, extra=extra)
        target = sft_target(stub)
        assert extract_think(target) and extract_answer(target) == rec.answer
        assert "unclosed" not in target and "no tags" not in target


# --------------------------------------------------------------------------- bad input


def test_api_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="n .* >= 1"):
        synth.generate(tmp_path, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        synth.generate(tmp_path, 4, test_fraction=1.0)
    with pytest.raises(ValueError, match="difficulty"):
        synth.generate(tmp_path, 4, difficulty=-0.1)
    with pytest.raises(TypeError, match="size.*known: width, height, frames, fps"):
        synth.generate(tmp_path, 4, size=64)
    with pytest.raises(ValueError, match="even"):
        synth.generate(tmp_path, 4, width=63)
    with pytest.raises(ValueError, match="unknown question family .colour.; known: count, direction, distance, order"):
        synth.make_clip(0, family="colour")
    assert not (tmp_path / "train.jsonl").exists()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "tmp"
    proc = subprocess.run([sys.executable, "-m", "veripo.data.synth", "--out", str(out), "--n", "4", "--seed", "1"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 clips" in proc.stdout
    assert len(load_records(out / "train.jsonl", check_media=True)) + len(load_records(out / "test.jsonl")) == 4
    assert json.loads((out / "meta.json").read_text())["seed"] == 1


def test_cli_bad_n_exits_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "veripo.data.synth", "--out", str(tmp_path / "x"), "--n", "0"],
                          capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert proc.returncode == 2
    assert "--n" in proc.stderr and ">= 1" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,flag", [
    (["--n", "four"], "--n"),
    (["--n", "4", "--test-fraction", "1"], "--test-fraction"),
    (["--n", "4", "--test-fraction", "-0.1"], "--test-fraction"),
    (["--n", "4", "--difficulty", "1.5"], "--difficulty"),
    (["--n", "4", "--width", "63"], "--width"),
    (["--n", "4", "--frames", "2"], "--frames"),
    (["--n", "4", "--seed", "-1"], "--seed"),
    (["--n", "4", "--fps", "nan"], "--fps"),
])
def test_cli_rejects_bad_values(argv, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--out", str(tmp_path / "x")] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err
    assert not (tmp_path / "x").exists()


def test_cli_requires_out(capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--n", "4"])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err
