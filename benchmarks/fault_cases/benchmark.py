"""Public-benchmark faults (``python -m veripo.eval --benchmark`` / ``score`` / ``merge``): bad files, missing
videos, bad flags must stop before a model loads, naming the file, record or flag and the fix."""

from __future__ import annotations

import json
from pathlib import Path

from faults import Outcome, case, classify, run_cli

MODEL = ["--model", "smollm2-135m-instruct"]
GOOD = [{"question_id": "q0", "video_path": "clips/a.mp4", "question": "How many?", "answer": "3",
         "caption": "three squares"}]


def _bench(tmp: Path, rows, name: str = "bench.json") -> Path:
    p = tmp / name
    p.write_text(rows if isinstance(rows, str) else json.dumps(rows))
    return p


@case("benchmark", "unknown benchmark name", config_error=True)
def unknown_name(tmp: Path) -> Outcome:
    res = run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", "tomato", "--bench-dir", str(tmp)], tmp)
    return classify(res, ["tomato.json", "--bench-dir"])


@case("benchmark", "benchmark file not JSON", config_error=True)
def not_json(tmp: Path) -> Outcome:
    p = _bench(tmp, '[{"question_id": "q0", ')
    return classify(run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", str(p)], tmp), [str(p), "not JSON"])


@case("benchmark", "record without an answer", config_error=True)
def no_answer(tmp: Path) -> Outcome:
    p = _bench(tmp, GOOD + [{"question_id": "q1", "video_path": "b.mp4", "question": "x", "answer": ""}])
    return classify(run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", str(p)], tmp), [str(p), "record 1", "'answer'"])


@case("benchmark", "neither layout", config_error=True)
def neither_layout(tmp: Path) -> Outcome:
    p = _bench(tmp, [{"id": 1, "q": "x"}])
    return classify(run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", str(p)], tmp), [str(p), "layout"])


@case("benchmark", "missing videos without --skip-missing", config_error=True)
def missing_video(tmp: Path) -> Outcome:
    p = _bench(tmp, GOOD)
    res = run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", str(p), "--video-root", str(tmp)], tmp)
    return classify(res, [str(tmp / "clips" / "a.mp4"), "--skip-missing"])


@case("benchmark", "bad --shard", config_error=True)
def bad_shard(tmp: Path) -> Outcome:
    p = _bench(tmp, GOOD)
    return classify(run_cli(["-m", "veripo.eval", *MODEL, "--benchmark", str(p), "--shard", "4/4"], tmp), ["--shard"])


@case("benchmark", "predictions file of another layout", config_error=True)
def bad_predictions(tmp: Path) -> Outcome:
    p = _bench(tmp, [{"answer": "A"}], "pred.json")
    return classify(run_cli(["-m", "veripo.eval", "score", str(p)], tmp), [str(p), "record 0"])


@case("benchmark", "merge of folders that are not shard runs", config_error=True)
def bad_merge(tmp: Path) -> Outcome:
    res = run_cli(["-m", "veripo.eval", "merge", str(tmp / "s0"), "--out", str(tmp / "m")], tmp)
    return classify(res, [str(tmp / "s0"), "run.json"])
