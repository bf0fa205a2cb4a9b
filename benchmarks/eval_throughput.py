"""Public-benchmark evaluation: throughput on CPU, overhead over a bare ``LLM.generate``, and agreement
of veripo's scorers with the published scoring scripts.

    python benchmarks/eval_throughput.py throughput [--records 24] [--max-tokens 48] [--repeats 3]
    python benchmarks/eval_throughput.py agreement --verIPO-repo GITDIR --video-r1-repo GITDIR

throughput: SmolLM2-135M-Instruct (vLLM CPU build, float32) answers a VerIPO-layout benchmark built
from synthetic clips' captions (``veripo.data.synth``), with the VerIPO template. Per repeat it times
(a) veripo's `run_benchmark` (requests, generation through veripo's engine, scoring, appending
samples.jsonl, results.json) and (b) a bare ``vllm.LLM.generate`` of the same prompt strings with
the same sampling parameters on the same engine, alternating which goes first, after one untimed pass of
every prompt through each (so both find the same prefix cache). Reports records/s for both and the
overhead (a - b, per repeat pair) with a t-based 95% interval over the repeats.

agreement: the cases of tests/test_benchmarks.py plus a grid of answer forms are scored by veripo
(`score_verIPO`, `score_video_r1`) and by the published code itself: VerIPO's
``evaluation/calculate_score.py`` run unmodified (one predictions file per case, read back from its
"Accuracy" line) and the scoring functions of Video-R1's ``src/eval_bench.py`` (and its
``grpo.py`` reward for OCR / free-form) compiled out of the script's source. GITDIRs are git
repositories of HITsz-TMG/VerIPO and tulerfeng/Video-R1 (read with ``git show HEAD:path``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _t95(xs: list[float]) -> tuple[float, float, float]:
    """mean, and the t-based 95% interval (n <= 10 supported)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}[n]
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)


# ---- throughput --------------------------------------------------------------------------------
def _caption_benchmark(out: Path, n: int) -> Path:
    from veripo.data.records import load_records
    from veripo.data.synth import generate

    generate(out / "synth", n, seed=0, test_fraction=0.0, progress=False)
    recs = load_records(out / "synth" / "train.jsonl")
    rows = []
    for r in recs:
        q = r.problem + ("\n" + "\n".join(r.options) if r.options else "")
        rows.append({"question_id": r.problem_id, "video_path": os.path.relpath(r.path, out / "synth"),
                     "question": q, "answer": r.answer, "processed_question": q, "caption": r.caption})
    path = out / "synth_bench.json"
    path.write_text(json.dumps(rows))
    return path


def throughput(args) -> dict:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from veripo import compat

    compat.install()
    from transformers import AutoTokenizer

    from veripo.config import RolloutConfig
    from veripo.eval.bench import run_benchmark
    from veripo.eval.benchmarks import load_benchmark
    from veripo.eval.templates import messages, user_text
    from veripo.models import resolve_model
    from veripo.rollout import GenerationRequest, SamplingConfig, build_engine

    tmp = Path(tempfile.mkdtemp(prefix="eval_tp_"))
    bench = _caption_benchmark(tmp, args.records)
    items, spec = load_benchmark(bench, rules="mmvu")  # letters and numbers: VerIPO scoring with math-verify
    model = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model)
    prompts = {it.qid: tok.apply_chat_template(messages(it, user_text(it, "verIPO", caption=True)), tokenize=False,
                                               add_generation_prompt=True) for it in items}
    engine = build_engine(RolloutConfig(dtype="float32", max_model_len=2048, enforce_eager=True, seed=0), model)
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens, logprobs="none")
    from vllm import SamplingParams

    bare_params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    def generate(reqs, s):
        return [g[0] for g in engine.generate(reqs, s, n=1)]

    # warm-up outside the timings (compilation, caches, the scorers' imports): all prompts once through
    # each path, so both then find the same prefix cache
    engine.generate([GenerationRequest(prompt=prompts[it.qid]) for it in items], sampling, n=1)
    engine.llm.generate([prompts[it.qid] for it in items], bare_params, use_tqdm=False)
    from veripo.eval.scoring import score_verIPO

    score_verIPO("<answer>$3$</answer>", "3"), score_verIPO("<answer>B</answer>", "B")
    veripo_s, bare_s, acc = [], [], None

    def run_veripo(rep: int) -> None:
        nonlocal acc
        t = time.perf_counter()
        s = run_benchmark(items, spec, generate, lambda it: GenerationRequest(prompt=prompts[it.qid], request_id=it.qid),
                          tmp / f"run{rep}", scorer="verIPO", sampling=sampling, batch_size=len(items), progress=False)
        veripo_s.append(time.perf_counter() - t)
        acc = s["accuracy"]

    def run_bare() -> None:
        t = time.perf_counter()
        outs = engine.llm.generate([prompts[it.qid] for it in items], bare_params, use_tqdm=False)
        bare_s.append(time.perf_counter() - t)
        assert len(outs) == len(items)

    for rep in range(args.repeats):  # alternate which goes first (ABBA), so drift in load hits both
        if rep % 2 == 0:
            run_veripo(rep), run_bare()
        else:
            run_bare(), run_veripo(rep)
    engine.close()
    over = [a - b for a, b in zip(veripo_s, bare_s)]
    rel = [a / b - 1 for a, b in zip(veripo_s, bare_s)]
    result = {
        "records": len(items), "max_tokens": args.max_tokens, "repeats": args.repeats, "accuracy": acc,
        "veripo_seconds": veripo_s, "bare_seconds": bare_s,
        "veripo_records_per_s": _t95([len(items) / x for x in veripo_s]),
        "bare_records_per_s": _t95([len(items) / x for x in bare_s]),
        "overhead_seconds": _t95(over), "overhead_relative": _t95(rel),
        "overhead_relative_median": sorted(rel)[len(rel) // 2],
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return result


# ---- agreement ---------------------------------------------------------------------------------
def _git_show(repo: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


LETTER_FORMS = ["<answer>{x}</answer>", "<answer> ${x}$ </answer>", "<answer>({x})</answer>", "<answer>{x}.</answer>",
                "<answer>{x}. the option</answer>", "<answer>{x} or C</answer>", "<think>{x}</think> {x}",
                "<answer></answer>", "", "<answer>{xl}</answer>", "<answer>Option {x}</answer>",
                "<answer>{x}</answer><answer>C</answer>"]
NUMBER_FORMS = ["<answer>{x}</answer>", "<answer> ${x}$ </answer>", "<answer>{x} cm</answer>", "<answer>${x}$ cm</answer>",
                "<answer>about {x}</answer>", "{x}", "<answer>{x}.</answer>", "<answer>\\frac{{{x}}}{{1}}</answer>",
                "The answer is ${x}$", "<answer></answer>"]


def _veripo_cases() -> list[tuple[str, str, str]]:
    """(file kind: vsi_bench | other, ground truth, model output)."""
    cases = []
    for gt in ("A", "B", "D"):
        for form in LETTER_FORMS:
            for x in ("B", "D"):
                cases.append(("other", gt, form.format(x=x, xl=x.lower())))
    for kind in ("vsi_bench", "other"):
        for gt, preds in (("2.5", ["2.5", "2.4", "3", "2.0", "10"]), ("12", ["12", "13", "9", "0"]),
                          ("0", ["0", "1"]), ("24/7", ["3.43", "24/7", "3.4285714"]),
                          ("['24/7', '3.429', '3.43']", ["3.43", "\\frac{24}{7}"])):
            for x in preds:
                for form in NUMBER_FORMS:
                    cases.append((kind, gt, form.format(x=x)))
    return cases


def agreement_verIPO(repo: str) -> dict:
    from veripo.eval.scoring import score_verIPO

    script = Path(tempfile.mkdtemp(prefix="verIPO_")) / "calculate_score.py"
    script.write_text(_git_show(repo, "evaluation/calculate_score.py"))
    work = script.parent
    agree, disagree = 0, []
    cases = _veripo_cases()
    for i, (kind, gt, output) in enumerate(cases):
        pred = work / f"{kind}_{i}.json"
        pred.write_text(json.dumps([{"question": {"question_id": str(i)}, "ground_truth": gt, "model_output": output}]))
        buf = io.StringIO()
        old_argv = sys.argv
        sys.argv = [str(script), "--pred_path", str(pred)]
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
                runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = old_argv
        theirs = float(buf.getvalue().strip().splitlines()[-1].split(":")[1].strip().rstrip("%")) / 100
        ours = score_verIPO(output, gt, mra=kind == "vsi_bench")
        if abs(theirs - ours) < 5e-5 + 1e-12:  # the script prints the percentage with 2 decimals
            agree += 1
        else:
            disagree.append({"kind": kind, "gt": gt, "output": output, "ours": ours, "theirs": theirs})
    return {"cases": len(cases), "agree": agree, "disagree": disagree}


def _r1_functions(repo: str) -> dict:
    """Video-R1's scoring functions, compiled from its scripts' own source (eval_bench.py's nested
    helpers and reward_fn; grpo.py's accuracy_reward)."""
    import re

    import torch
    from rouge_score import rouge_scorer

    ns: dict = {"re": re, "torch": torch, "rouge_scorer": rouge_scorer, "os": os}
    src = _git_show(repo, "src/eval_bench.py")
    wanted = {"extract_answer", "normalize_number", "mean_relative_accuracy", "reward_fn"}
    funcs = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name in wanted]
    exec(compile(ast.Module(body=funcs, type_ignores=[]), "eval_bench.py", "exec"), ns)
    grpo = _git_show(repo, "src/r1-v/src/open_r1/grpo.py")
    acc = [n for n in ast.walk(ast.parse(grpo)) if isinstance(n, ast.FunctionDef) and n.name == "accuracy_reward"]
    from datetime import datetime

    ns2: dict = {"re": re, "rouge_scorer": rouge_scorer, "os": os, "datetime": datetime}
    exec(compile(ast.Module(body=acc, type_ignores=[]), "grpo.py", "exec"), ns2)
    return {"reward_fn": ns["reward_fn"], "accuracy_reward": ns2["accuracy_reward"]}


def agreement_video_r1(repo: str) -> dict:
    from veripo.eval.scoring import score_video_r1

    fns = _r1_functions(repo)
    cases = []
    for gt in ("B", "D"):
        for form in LETTER_FORMS:
            cases.append(("multiple choice", gt, form.format(x="B", xl="b")))
    for ptype in ("numerical", "regression"):
        for gt, preds in (("2.5", ["2.5", "2.50", "2", "2.4", "3,000", "1e2"]), ("100", ["105", "95", "130", "100.0", "0"]),
                          ("1,000", ["1000", "1,000", "999.5"])):
            for x in preds:
                for form in NUMBER_FORMS[:7]:
                    cases.append((ptype, gt, form.format(x=x)))
    for ptype, gt, outs in (("OCR", "STOP HERE NOW", ["STOP HERE NOW", "STOP HERE", "stop here now", "", "GO"]),
                            ("free-form", "the red circle moves to the right",
                             ["the red circle moves right", "a blue square", "The red circle moves to the right."])):
        for o in outs:
            cases.append((ptype, gt, f"<answer>{o}</answer>"))
    agree, disagree = 0, []
    for ptype, gt, output in cases:
        sol = f"<answer>{gt}</answer>"
        ours = score_video_r1(output, sol, ptype)
        with contextlib.redirect_stdout(io.StringIO()):
            if ptype in ("OCR", "free-form"):
                theirs = fns["accuracy_reward"]([[{"content": output}]], [sol], problem_type=[ptype])[0]
            else:
                theirs = fns["reward_fn"]({"solution": sol}, output, ptype)
        if abs(ours - theirs) < 1e-9:
            agree += 1
        else:
            disagree.append({"type": ptype, "gt": gt, "output": output, "ours": ours, "theirs": theirs})
    return {"cases": len(cases), "agree": agree, "disagree": disagree}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--records", type=int, default=24)
    t.add_argument("--max-tokens", type=int, default=48)
    t.add_argument("--repeats", type=int, default=3)
    a = sub.add_parser("agreement")
    a.add_argument("--verIPO-repo", dest="verIPO_repo", required=True)
    a.add_argument("--video-r1-repo", dest="video_r1_repo", required=True)
    args = p.parse_args()
    if args.cmd == "throughput":
        throughput(args)
    else:
        res = {"verIPO": agreement_verIPO(args.verIPO_repo), "video_r1": agreement_video_r1(args.video_r1_repo)}
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
