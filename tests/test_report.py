"""The run report (veripo.report.html): a fake run folder written with the real writers, a partial run,
an empty folder, HTML escaping, the CLI, and a check in headless Chromium that every plot decodes."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import yaml

from veripo.data.rollouts import (
    PreferencePair,
    Rollout,
    append_rollouts,
    write_pairs,
    write_rollouts,
)
from veripo.report import MetricsLogger, write_report
from veripo.report.html import build_report

EVIL = "<script>alert('x')</script> & \"quoted\" <b>bold</b>"
TYPES = ("multiple choice", "numerical", "free-form")


def _grpo_metrics(step: int, it: int, kl: bool) -> dict:
    x = step / 40 + it * 0.3
    m = {"reward_mean": 0.4 + 0.8 * (1 - math.exp(-x)), "accuracy_mean": 0.3 + 0.5 * (1 - math.exp(-x)),
         "format_mean": 0.5 * (1 - math.exp(-3 * x)), "response_tokens_mean": 80 + 30 * math.sin(step / 5),
         "truncated_frac": max(0.0, 0.2 - step / 200), "adv_abs_mean": 0.7,
         "train/loss": 0.01 * math.cos(step), "train/grad_norm": 1.0, "train/lr": 1e-5,
         "train/pg_clipfrac": 0.02 + 0.01 * math.sin(step), "train/pg_clipfrac_dual": 0.0,
         "train/ppo_kl": 1e-4 * math.sin(step), "time_rollout_s": 2.0, "time_train_s": 1.5, "time_sync_s": 0.2,
         "iteration": it}
    if kl:
        m["train/kl"] = 0.001 * step
    return m


def _rollout(it: int, step: int, k: int, reward: float, response: str) -> Rollout:
    return Rollout(rollout_id=f"it{it}-s{step}-p{k // 4}-{k}", problem_id=str(k // 4), response=response,
                   token_ids=list(range(10 + k)), finish_reason="length" if k == 7 else "stop", reward=reward,
                   reward_components={"accuracy": float(reward >= 1.0), "format": 0.5}, advantage=reward - 0.8,
                   step=step, iteration=it, sample_index=k % 4,
                   record={"problem": f"Which way does the ball move? {EVIL}", "problem_type": "multiple choice",
                           "solution": "<answer>B</answer>", "options": ["A. left", "B. right"]})


def _pair(it: int, i: int, ptype: str) -> PreferencePair:
    return PreferencePair(pair_id=f"it{it}-pair{i}", problem_id=str(i), type=ptype,
                          prompt=f"Question {i}: which colour? {EVIL}",
                          chosen=f"<think>red is first</think><answer>A</answer> {i}",
                          rejected=f"<think>blue {EVIL}</think><answer>B</answer>", chosen_id=f"c{i}",
                          rejected_id=f"r{i}", chosen_checks={"accurate": True, "repetitive": False},
                          rejected_checks={"accurate": False}, chosen_verdict="consistent",
                          rejected_verdict="inconsistent", judge="rule")


def _summary(acc: float, inc: float) -> dict:
    return {"n": 48, "accuracy": acc, "accuracy_by_type": {t: min(1.0, acc + d) for t, d in zip(TYPES, (0.1, -0.1, 0.0))},
            "count_by_type": {t: 16 for t in TYPES}, "mra": acc - 0.05, "format_rate": 0.95,
            "inconsistency_rate": inc, "response_tokens_mean": 95.0}


def make_run(root: Path, partial: bool = False, grpo_steps: int = 60) -> Path:
    """A two-iteration run: sft -> [grpo -> eval -> verify -> preference -> eval] x 2.

    `partial`: iteration 1 stopped in the middle of GRPO (no verify, preference or eval there), and
    iteration 0 has no eval after preference either."""
    run = root / "fake_run"
    run.mkdir(parents=True)
    cfg = {"name": "fake_run", "output_dir": str(root), "seed": 0, "iterations": 2,
           "stages": ["sft", "eval", "grpo", "eval", "verify", "preference", "eval"],
           "model": {"path": "smollm2-135m-instruct"},
           "grpo": {"steps": grpo_steps, "prompts_per_step": 4, "group_size": 4, "max_tokens": 64, "lr": 1e-5,
                    "kl_coef": 0.001, "reward_weights": {"accuracy": 1.0, "format": 0.5}},
           "preference": {"loss": "sigmoid", "beta": 0.1}, "train": {"dtype": "float32", "strategy": "single"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    log = MetricsLogger(run, tensorboard=False)
    stages: dict[str, dict] = {}  # in the order the loop started them (manifest "order")
    for step in range(20):
        log.log("sft", step, {"loss": 2.5 * math.exp(-step / 8) + 0.3, "nll": 2.5 * math.exp(-step / 8) + 0.3,
                              "grad_norm": 1.0, "lr": 5e-5, "iteration": 0})
    stages["iter0/sft"] = {"done": True, "seconds": 41.2, "steps_done": 20}
    log.log("eval", 0, {"after": "sft", "iteration": 0, **_summary(0.35, 0.30)})
    stages["iter0/eval_sft"] = {"done": True, "seconds": 12.0}
    _write_eval(run, 0, "sft", _summary(0.35, 0.30))

    for it in (0, 1):
        steps = grpo_steps if (it == 0 or not partial) else 7
        for step in range(steps):
            log.log("grpo", step, _grpo_metrics(step, it, kl=True))
        last = steps - 1
        rollouts = [_rollout(it, s, k, reward=[1.5, 0.5, 1.0, 0.0, 1.5, 0.5, 0.0, 1.0][k],
                             response=f"<think>step {s} sample {k}</think><answer>{'AB'[k % 2]}</answer>")
                    for s in (last - 1, last) for k in range(8)]
        rollouts[-8] = _rollout(it, last, 0, reward=1.75, response=f"<think>best {EVIL}</think><answer>B</answer>")
        if it == 0:
            write_rollouts(run / "iter0/grpo/rollouts.jsonl", rollouts)
        else:
            append_rollouts(run / "iter1/grpo/rollouts.jsonl", rollouts)
        if partial and it == 1:
            stages["iter1/grpo"] = {"done": False, "steps_done": steps}
            break
        stages[f"iter{it}/grpo"] = {"done": True, "seconds": 300.5 + it, "steps_done": steps}
        acc = 0.5 + 0.1 * it
        log.log("eval", it, {"after": "grpo", "iteration": it, **_summary(acc, 0.25 - 0.05 * it)})
        _write_eval(run, it, "grpo", _summary(acc, 0.25 - 0.05 * it))
        stages[f"iter{it}/eval_grpo"] = {"done": True, "seconds": 10.0}

        by_type = {"penalty": 6 - it, "consistency": 9 + 2 * it, "reflection": 2, "caption": 1 + it}
        stats = {"rollouts": 256, "prompts": 64, "prompts_with_pair": 18, "pairs": sum(by_type.values()),
                 "pairs_by_type": by_type, "accurate": 150, "inconsistency_rate": 0.22 - 0.05 * it,
                 "accurate_inconsistency_rate": 0.12 - 0.03 * it}
        log.log("verify", 0, {**stats, "iteration": it})
        pairs = [_pair(it, i, t) for i, t in enumerate(t for t, n in by_type.items() for _ in range(n))]
        write_pairs(run / f"iter{it}/verify/pairs.jsonl", pairs)
        (run / f"iter{it}/verify/pairs.meta.json").write_text(json.dumps({"stats": stats, "config_hash": "abc"}))
        stages[f"iter{it}/verify"] = {"done": True, "seconds": 33.3, "pairs": len(pairs)}

        for step in range(12):
            margin = 0.05 * step
            log.log("preference", step, {"pairs": len(pairs), "loss": 0.69 - 0.02 * step, "rewards/chosen": margin / 2,
                                         "rewards/rejected": -margin / 2, "rewards/margin": margin,
                                         "rewards/accuracy": min(1.0, 0.5 + 0.05 * step), "iteration": it})
        stages[f"iter{it}/preference"] = {"done": True, "seconds": 20.0, "steps_done": 12}
        if partial:  # the eval after preference crashed
            stages["iter0/eval_preference"] = {"done": False}
            continue
        log.log("eval", it, {"after": "preference", "iteration": it, **_summary(acc + 0.04, 0.18 - 0.05 * it)})
        _write_eval(run, it, "preference", _summary(acc + 0.04, 0.18 - 0.05 * it))
        stages[f"iter{it}/eval_preference"] = {"done": True, "seconds": 10.0}
    log.close()
    (run / "manifest.json").write_text(json.dumps({"created": time.time() - 3600, "stages": stages,
                                                       "order": list(stages)}))
    return run


def _write_eval(run: Path, it: int, after: str, summary: dict) -> None:
    d = run / f"iter{it}/eval_{after}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps({"summary": summary, "meta": {"after": after}}))
    (d / "samples.jsonl").write_text(json.dumps({"problem_id": "0", "response": "x", "correct": True}) + "\n")


EXPECTED_FULL = ["GRPO reward and components (mean per step)", "GRPO response length", "GRPO KL",
                 "GRPO clip fraction", "GRPO step time", "SFT loss", "Preference loss and reward margins",
                 "Preference pairs by type per iteration", "Inconsistency rate per iteration",
                 "Eval accuracy per eval point"]


def _img_count(page: str) -> int:
    return len(re.findall(r'<img class="plot"', page))


def _plot_titles(page: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'<img class="plot" alt="([^"]*)"', page)]


def _claimed_plots(page: str) -> int:
    """How many plots the generator says it made (a meta tag in the page)."""
    return int(re.search(r'<meta name="veripo-plots" content="(\d+)">', page).group(1))


def test_full_run_report(tmp_path):
    run = make_run(tmp_path)
    rows = len((run / "metrics.jsonl").read_text().splitlines())
    assert rows >= 150
    t0 = time.perf_counter()
    path = write_report(run)
    seconds = time.perf_counter() - t0
    assert path == run / "report.html" and path.is_file()
    assert not list(run.glob(".report.html.*"))  # the temp file was renamed
    page = path.read_text()
    assert _plot_titles(page) == EXPECTED_FULL
    assert _claimed_plots(page) == len(EXPECTED_FULL)
    assert "veripo run: fake_run" in page and "smollm2-135m-instruct" in page
    assert "Stages: 12/12 done" in page and "5 min 00 s" in page  # iter0/grpo's 300.5 s
    assert "Sample rollouts" in page and "Sample preference pairs" in page and "<h2>Evaluation</h2>" in page
    assert "best reward of step 59" in page and "worst reward of step 59" in page
    assert "iteration 1: 20 pairs" in page
    assert "Not there yet" not in page and "Problems reading" not in page
    assert "<script" not in page  # no script at all, and the evil text is escaped
    assert "http://" not in page and "https://" not in page  # no external resource
    # a few hundred rows in well under 3 s on an idle machine; generous here for shared CI cores
    assert seconds < 8.0, f"report took {seconds:.2f} s for {rows} metric rows"


def test_partial_run_renders_and_says_what_is_missing(tmp_path):
    run = make_run(tmp_path, partial=True)
    report = build_report(run)
    page = report.html
    box = page.split("Not there yet", 1)[1].split("</div>", 1)[0]
    assert "iter1/grpo: started, not done" in box and "no rollouts.jsonl" not in box  # it has 7 steps
    assert "iter1/verify: pending (no pairs.jsonl yet)" in box
    assert "iter1/eval_grpo: pending (no results.json yet)" in box
    assert "iter0/eval_preference: started, not done" in box
    assert any("iter1/verify" in m for m in report.missing)
    # what exists still renders: iteration 1's 7 GRPO steps, its rollouts, iteration 0's pairs and evals
    assert _plot_titles(page) == report.plots == EXPECTED_FULL
    assert "iteration 1, last GRPO step 6" in page
    assert "iteration 0: 18 pairs" in page


def test_empty_and_broken_run_dirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    for what in ("manifest.json: not there yet", "config.yaml: not there yet", "metrics.jsonl: not there yet",
                 "GRPO rollouts: not there yet"):
        assert what in page
    assert _img_count(page) == 0

    broken = make_run(tmp_path / "b")
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"stage": "grpo", "step": 99, "rew')  # torn last line of a crashed run
    (broken / "manifest.json").write_text('{"stages": {')
    (broken / "iter0/eval_sft/results.json").write_text("{")
    with open(broken / "iter1/grpo/rollouts.jsonl", "a") as f:
        f.write('{"rollout_id": "x", "prob')
    page = write_report(broken).read_text()
    problems = page.split("Problems reading the run", 1)[1].split("</div>", 1)[0]
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in problems
    assert "manifest.json: not valid JSON" in problems
    assert "results.json: not valid JSON" in problems
    assert "rollouts.jsonl: 1 bad line(s) skipped" in problems
    assert _img_count(page) == len(EXPECTED_FULL)  # eval_sft still comes from metrics.jsonl


def test_old_layout_without_iterations(tmp_path):
    """Stage folders at the run root and no "iteration" key (the loop before iterations existed)."""
    run = tmp_path / "old"
    log = MetricsLogger(run, tensorboard=False)
    for step in range(5):
        log.log("sft", step, {"loss": 2.0 - step * 0.1, "nll": 2.0 - step * 0.1})
    for step in range(8):
        m = _grpo_metrics(step, 0, kl=False)
        del m["iteration"]
        log.log("grpo", step, m)
    write_rollouts(run / "grpo/rollouts.jsonl", [_rollout(0, 7, k, float(k), "r") for k in range(4)])
    (run / "manifest.json").write_text(json.dumps({"stages": {"sft": {"done": True, "seconds": 3},
                                                              "grpo": {"done": True, "seconds": 9}}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "old", "stages": ["sft", "grpo"]}))
    report = build_report(run)
    assert report.plots == ["GRPO reward and components (mean per step)", "GRPO response length", "GRPO KL",
                            "GRPO clip fraction", "GRPO step time", "SFT loss"]
    assert "best reward of step 7" in report.html
    assert not any("verif" in m.lower() or "eval" in m.lower() for m in report.missing), report.missing
    assert any("KL to the reference: not logged" in m for m in report.missing)


def test_user_text_is_escaped(tmp_path):
    run = tmp_path / "esc"
    write_rollouts(run / "iter0/grpo/rollouts.jsonl",
                   [_rollout(0, 0, 0, 1.0, f"<think>{EVIL}</think><answer>A</answer>")])
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "<i>run</i>", "model": {"path": "m&<x>"}}))
    page = build_report(run).html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;think&gt;" in page and "<think>" not in page
    assert EVIL not in page and "<script" not in page and "<b>bold" not in page
    assert "&lt;i&gt;run&lt;/i&gt;" in page and "<i>run</i>" not in page
    assert "m&amp;&lt;x&gt;" in page


def test_cli(tmp_path, capsys):
    from veripo.report.__main__ import main

    run = make_run(tmp_path, partial=True, grpo_steps=10)
    assert main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    out = tmp_path / "elsewhere" / "r.html"
    assert main([str(run), "--out", str(out)]) == 0 and out.is_file()
    assert main([str(tmp_path / "nope")]) == 2


# ---------------------------------------------------------------------------------------------
# headless Chromium: the plots decode in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var pre = document.createElement('pre');
  pre.id = 'imgcheck';
  pre.textContent = JSON.stringify({total: imgs.length, ok: ok.length, images: document.images.length,
    failed: bad.map(function (i) { return i.alt; }), widths: ok.map(function (i) { return i.naturalWidth; })});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args: list[str], tmp_path: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(cmd)}")


def _png_size_and_colours(data: bytes) -> tuple[int, int, int]:
    """Width, height and (roughly) how many distinct pixel values a PNG holds (8-bit RGB/RGBA only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp + 1
    colours = set()
    for y in range(0, height, 7):  # filter bytes make this approximate; enough to tell blank from drawn
        row = raw[y * stride + 1:(y + 1) * stride]
        colours.update(row[x:x + 3] for x in range(0, len(row), bpp * 5))
    return width, height, len(colours)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); "
                    "the browser check of the report's plots is skipped")
@pytest.mark.timeout(240)
def test_plots_render_in_headless_chromium(tmp_path):
    run = make_run(tmp_path, partial=True)
    report_path = write_report(run)
    page = report_path.read_text()
    n_plots = _claimed_plots(page)
    assert n_plots == len(EXPECTED_FULL)
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))

    res = _chromium(["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], tmp_path)
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', res.stdout)
    assert m, f"no image check in chromium's DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["failed"] == []
    assert result["total"] == result["ok"] == result["images"] == n_plots
    assert all(w >= 400 for w in result["widths"]), result["widths"]

    shot = tmp_path / "report.png"
    res = _chromium(["--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}",
                     report_path.as_uri()], tmp_path)
    assert shot.is_file(), f"no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"
    width, height, colours = _png_size_and_colours(shot.read_bytes())
    assert (width, height) == (1280, 2400)
    assert colours > 50, f"the screenshot looks blank ({colours} distinct colours)"


def test_plot_images_are_valid_pngs(tmp_path):
    """Without a browser: every embedded data URI is a PNG of a sensible size with something drawn."""
    run = make_run(tmp_path, grpo_steps=15)
    page = build_report(run).html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(EXPECTED_FULL)
    for b64 in uris:
        w, h, colours = _png_size_and_colours(base64.b64decode(b64))
        assert 500 <= w <= 1200 and 250 <= h <= 400 and colours > 10


def test_big_rollout_file_is_read_from_its_end(tmp_path, monkeypatch):
    """Above the size limit only the end of rollouts.jsonl is read: the newest step still shows."""
    import veripo.report.html as report_html

    run = tmp_path / "big"
    for step in range(30):
        append_rollouts(run / "iter0/grpo/rollouts.jsonl",
                        [_rollout(0, step, k, float(k), f"step {step} sample {k}") for k in range(4)])
    monkeypatch.setattr(report_html, "_BIG_FILE", 4000)
    page = build_report(run).html
    assert "best reward of step 29" in page and "step 29 sample 3" in page
    assert "Problems reading" not in page
