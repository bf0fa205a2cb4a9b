"""The run report: one self-contained ``runs/NAME/report.html`` with plots, samples and tables.

`write_report(run_dir)` reads whatever the run folder holds so far (``config.yaml``,
``manifest.json``, ``metrics.jsonl``, ``iter{i}/grpo/rollouts.jsonl``, ``iter{i}/verify/pairs.jsonl``
and ``pairs.meta.json``, ``iter{i}/eval_{after}/results.json``) and writes the report atomically
(temp file + rename). Every input may be missing, half-written or from an older layout (stage folders
at the run root instead of under ``iter{i}/``): the report renders what exists and lists what is not
there yet. Plots are matplotlib PNGs (Agg canvas, no pyplot, no display) embedded as base64 data
URIs; the page needs no network and runs no script. All text from the run is HTML-escaped.

`build_report(run_dir)` returns the page without writing it, with the titles of the plots it made
(``Report.plots``) and the list of missing things (``Report.missing``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.config import stage_plan
from veripo.data.records import LoadReport
from veripo.data.rollouts import PAIR_TYPES, PreferencePair, Rollout, read_pairs, read_rollouts
from veripo.run_dir import PAIRS, PAIRS_META, RESULTS, ROLLOUTS, RunDir, atomic_write_text

__all__ = ["Report", "build_report", "write_report"]

EVAL_ORDER = ("base", "sft", "grpo", "preference")
# GRPO row keys ending in "_mean" that are not reward components
_NOT_COMPONENTS = {"reward_mean", "response_tokens_mean", "adv_abs_mean"}
_BIG_FILE = 16 * 1024 * 1024  # rollout / pair files above this are read from one end only
_MAX_TEXT = 3000  # characters of a response shown in a sample
_WIDE = ("Preference loss and reward margins", "Eval accuracy per eval point")  # full-width figures
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]


def esc(value: Any) -> str:
    """HTML-escape anything (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


# ---------------------------------------------------------------------------------------------
# reading the run folder (tolerant: every reader returns None / [] and notes the problem)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _get(row: dict, *keys: str) -> float | None:
    """The first numeric value among `keys` (each also tried with a ``train/`` prefix)."""
    for k in keys:
        for kk in (k, f"train/{k}"):
            v = _num(row.get(kk))
            if v is not None:
                return v
    return None


def _sub(row: dict, name: str) -> dict[str, float]:
    """A per-type dict that may be logged as a dict or flattened (``name/key`` or ``name.key``)."""
    out: dict[str, float] = {}
    val = row.get(name)
    if isinstance(val, dict):
        out.update({str(k): float(v) for k, v in val.items() if _num(v) is not None})
    for k, v in row.items():
        for sep in ("/", "."):
            if k.startswith(name + sep) and _num(v) is not None:
                out[k[len(name) + 1:]] = float(v)
    return out


def _key(name: str) -> Callable[[dict], float | None]:
    """A getter of one numeric metric (None when absent or not finite)."""
    return lambda row: _num(row.get(name))


def _prefixed(name: str) -> Callable[[dict], float | None]:
    """A getter of `name` or ``train/name``."""
    return lambda row: _get(row, name)


def _iteration(row: dict) -> int:
    it = row.get("iteration", 0)
    return it if isinstance(it, int) and not isinstance(it, bool) else 0


@dataclass
class RunView:
    run_dir: Path
    config: dict | None = None
    config_text: str | None = None
    manifest: dict | None = None
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unreadable files / lines

    def stage_rows(self, stage: str) -> list[dict]:
        return [r for r in self.rows if r.get("stage") == stage]

    @property
    def paths(self) -> RunDir:
        return RunDir(self.run_dir)

    def stage_dir(self, iteration: int, name: str) -> Path:
        """``iter{i}/{name}``; for iteration 0 a stage folder at the run root (older layout) too."""
        d = self.paths.stage(iteration, name)
        if not d.exists() and iteration == 0 and (self.run_dir / name).exists():
            return self.run_dir / name
        return d

    def iterations(self) -> list[int]:
        its = {_iteration(r) for r in self.rows} | set(self.paths.iterations())
        for s in self.stage_order():
            parsed = RunDir.parse_stage_id(s)
            if parsed:
                its.add(parsed[0])
        return sorted(its) or [0]

    def stage_order(self) -> list[str]:
        """Stage ids in run order: the config's plan (every iteration, pending stages too) followed by
        any other stage the manifest names; a manifest without ``iter{i}/`` ids (older layout) as is."""
        man = self.manifest or {}
        stages = man.get("stages") if isinstance(man.get("stages"), dict) else {}
        order = [s for s in man.get("order", []) if isinstance(s, str)] if isinstance(man.get("order"), list) else []
        order += [s for s in stages if s not in order]
        cfg = self.config or {}
        names = [s for s in cfg.get("stages", []) if isinstance(s, str)] if isinstance(cfg.get("stages"), list) else []
        if order and not any(re.match(r"iter\d+/", s) for s in order):  # older layout: plain stage names
            return order + [s for s in names if s != "eval" and s not in order]
        its = cfg.get("iterations", 1)
        its = min(its, 1000) if isinstance(its, int) and not isinstance(its, bool) and its >= 1 else 1
        planned = [f"iter{i}/{s}" for i in range(its) for s in stage_plan(names, i)] if names else []
        return planned + [s for s in order if s not in planned]


def _read_text(path: Path, data: RunView) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        data.problems.append(f"{path.name}: cannot read ({e})")
        return None


def _read_json(path: Path, data: RunView) -> Any:
    text = _read_text(path, data)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        data.problems.append(f"{path.relative_to(data.run_dir)}: not valid JSON ({e.msg} at line {e.lineno})")
        return None


def _read_metrics(path: Path, data: RunView) -> list[dict]:
    text = _read_text(path, data)
    if text is None:
        return []
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("stage"), str):
            rows.append(row)
        else:
            bad += 1
    if bad:
        data.problems.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    # a resumed run may log a step twice: the last row wins
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["stage"], _iteration(r), str(r.get("after", "")), r.get("step"))] = r
    return list(latest.values())


def load_run(run_dir: str | os.PathLike) -> RunView:
    data = RunView(Path(run_dir))
    data.config_text = _read_text(data.paths.config, data)
    if data.config_text is not None:
        try:
            import yaml

            cfg = yaml.safe_load(data.config_text)
            data.config = cfg if isinstance(cfg, dict) else None
        except Exception as e:  # noqa: BLE001  (a half-written YAML must not stop the report)
            data.problems.append(f"config.yaml: not valid YAML ({type(e).__name__})")
    man = _read_json(data.paths.manifest, data)
    data.manifest = man if isinstance(man, dict) else None
    data.rows = _read_metrics(data.paths.metrics, data)
    return data


def _read_records(path: Path, from_dict: Callable[[Any, str], Any], reader: Callable, data: RunView,
                  tail: bool) -> list:
    """Rollouts / pairs with the project's validating readers, skipping bad lines. A file above
    `_BIG_FILE` is read from its end (`tail`, the newest rollouts) or its start only."""
    if not path.is_file():
        return []
    rel = path.relative_to(data.run_dir)
    size = path.stat().st_size
    report = LoadReport()
    if size <= _BIG_FILE:
        try:
            items = reader(path, skip_bad=True, report=report)
        except Exception as e:  # noqa: BLE001
            data.problems.append(f"{rel}: unreadable ({type(e).__name__}: {e})")
            return []
    else:
        with open(path, "rb") as f:
            f.seek(size - _BIG_FILE if tail else 0)
            lines = f.read(_BIG_FILE).decode("utf-8", errors="replace").splitlines()
        lines = lines[1:] if tail else lines[:-1]  # the cut line is partial
        items = []
        for i, line in enumerate(lines):
            try:
                items.append(from_dict(json.loads(line), f"{rel}:~{i}"))
            except Exception:  # noqa: BLE001
                report.skipped += 1
    if report.skipped:
        data.problems.append(f"{rel}: {report.skipped} bad line(s) skipped")
    return items


# ---------------------------------------------------------------------------------------------
# plots


class _Plotter:
    """Makes PNG figures on an explicit Agg canvas each. No pyplot: nothing touches a display, and the
    process's global backend (a notebook's, say) is left as it is."""

    def __init__(self) -> None:
        # matplotlib only when a report is drawn (0.6 s, 55 MiB): veripo.report is imported by every run
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._Figure, self._Canvas = Figure, FigureCanvasAgg
        self._rc = {"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                    "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
                    "legend.framealpha": 0.85, "figure.dpi": 100}
        self.plots: list[tuple[str, str]] = []  # (title, base64 png)

    def figure(self, ncols: int = 1, width: float = 6.4, height: float = 3.0, right: float = 0.25,
               bottom: float = 0.5):
        """A figure with fixed margins in inches (a layout engine would draw every figure twice)."""
        fig = self._Figure(figsize=(width, height))
        self._Canvas(fig)
        fig.subplots_adjust(left=0.7 / width, right=1 - right / width, bottom=bottom / height,
                            top=1 - 0.35 / height, wspace=0.3)
        return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]

    def style(self):
        """The plots' rc settings; make, draw and save every figure inside it."""
        import matplotlib

        return matplotlib.rc_context(self._rc)

    def add(self, title: str, fig) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        self.plots.append((title, base64.b64encode(buf.getvalue()).decode("ascii")))


def _concat(rows: Iterable[dict]) -> tuple[list[tuple[float, dict]], list[tuple[float, int]]]:
    """Rows of one stage with iterations laid end to end on x: ``[(x, row)]`` and ``[(x0, iteration)]``."""
    by_it: dict[int, list[dict]] = {}
    for r in rows:
        by_it.setdefault(_iteration(r), []).append(r)
    out, starts, offset = [], [], 0.0
    for it in sorted(by_it):
        its = sorted(by_it[it], key=lambda r: r.get("step") if isinstance(r.get("step"), (int, float)) else 0)
        starts.append((offset, it))
        last = offset
        for i, r in enumerate(its):
            step = r.get("step")
            x = offset + (step if isinstance(step, (int, float)) and not isinstance(step, bool) else i)
            out.append((x, r))
            last = max(last, x)
        offset = last + 1
    return out, starts


def _dividers(ax, starts: Sequence[tuple[float, int]]) -> None:
    if len(starts) < 2:
        return
    for x0, it in starts:
        if x0 > 0:
            ax.axvline(x0 - 0.5, color="#888", linestyle="--", linewidth=0.8)
        ax.text(x0, 1.0, f" iter {it}", transform=ax.get_xaxis_transform(), va="top", ha="left",
                fontsize=7, color="#666")


def _lines(ax, pts: list[tuple[float, dict]], series: Sequence[tuple[str, Callable[[dict], float | None]]],
           styles: dict | None = None) -> int:
    """One line per series; a line breaks between iterations (the policy and its data change there)."""
    drawn = 0
    for i, (label, fn) in enumerate(series):
        xs: list[float] = []
        ys: list[float] = []
        prev_it = None
        for x, r in pts:
            y = fn(r)
            if y is None:
                continue
            if prev_it is not None and _iteration(r) != prev_it:
                xs.append(x - 0.5)
                ys.append(math.nan)
            prev_it = _iteration(r)
            xs.append(x)
            ys.append(y)
        if not xs:
            continue
        kw = {"color": _COLORS[i % len(_COLORS)], "linewidth": 1.4, "label": label}
        if len(xs) < 30:
            kw.update(marker="o", markersize=3)
        kw.update((styles or {}).get(label, {}))
        ax.plot(xs, ys, **kw)
        drawn += 1
    return drawn


def _step_plot(p: _Plotter, title: str, rows: list[dict], series, ylabel: str = "", xlabel: str = "step",
               twin: Sequence | None = None, twin_label: str = "", ylim: tuple | None = None) -> bool:
    pts, starts = _concat(rows)
    fig, (ax,) = p.figure(right=0.8 if twin else 0.25)
    n = _lines(ax, pts, series)
    handles, labels = ax.get_legend_handles_labels()
    if twin:
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        styles = {lbl: {"color": "#999", "linestyle": ":"} for lbl, _ in twin}
        if _lines(ax2, pts, twin, styles):
            ax2.set_ylabel(twin_label)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
    if not n:
        return False
    if ylim:
        ax.set_ylim(*ylim)
        if ylim[1] is None:
            ax.set_ylim(top=ax.get_ylim()[1] * 1.05)
    _dividers(ax, starts)
    ax.set_title(title)
    ax.set_xlabel(xlabel + (" (iterations concatenated)" if len(starts) > 1 else ""))
    ax.set_ylabel(ylabel)
    if len(handles) > 1:
        ax.legend(handles, labels, loc="best")
    p.add(title, fig)
    return True


def _components(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k.endswith("_mean") and "/" not in k and k not in _NOT_COMPONENTS and k not in keys and _num(v) is not None:
                keys.append(k)
    first = [k for k in ("accuracy_mean", "format_mean") if k in keys]
    return first + sorted(k for k in keys if k not in first)


def _keys_like(rows: list[dict], pred: Callable[[str], bool]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if pred(k) and k not in keys and _num(v) is not None]
    return keys


def _grpo_plots(p: _Plotter, grpo: list[dict], notes: list[str]) -> None:
    if not grpo:
        notes.append("GRPO: no metrics yet (no \"grpo\" rows in metrics.jsonl)")
        return
    comps = _components(grpo)
    series = [("reward", _key("reward_mean"))] + [(k[: -len("_mean")], _key(k)) for k in comps]
    _step_plot(p, "GRPO reward and components (mean per step)", grpo, series, "reward")
    _step_plot(p, "GRPO response length", grpo, [("response tokens", _key("response_tokens_mean"))],
               "tokens", twin=[("truncated fraction", _key("truncated_frac"))],
               twin_label="truncated fraction")
    kl_keys = _keys_like(grpo, lambda k: k in ("train/kl", "kl", "train/ppo_kl"))
    if "train/kl" not in kl_keys and "kl" not in kl_keys:
        notes.append("GRPO KL to the reference: not logged (grpo.kl_coef = 0?); the KL plot shows ppo_kl only"
                     if kl_keys else "GRPO KL: not logged")
    if kl_keys:
        labels = {"train/kl": "KL to reference", "kl": "KL to reference", "train/ppo_kl": "ppo_kl (old vs new policy)"}
        _step_plot(p, "GRPO KL", grpo, [(labels[k], _key(k)) for k in kl_keys], "KL")
    clip = _keys_like(grpo, lambda k: "clip" in k and ("frac" in k or k.endswith("clip")))
    if clip:
        _step_plot(p, "GRPO clip fraction", grpo,
                   [(k.removeprefix("train/"), _key(k)) for k in clip], "fraction")
    else:
        notes.append("GRPO clip fraction: not logged (no train/*clipfrac* key)")
    if _keys_like(grpo, lambda k: k.startswith("mismatch_")):  # grpo.rollout_correction set
        _step_plot(p, "GRPO rollout/trainer mismatch", grpo,
                   [("IS ratio mean", _key("mismatch_ratio_mean")), ("IS ratio max", _key("mismatch_ratio_max")),
                    ("fraction corrected", _key("mismatch_corrected_frac"))], "ratio / fraction",
                   twin=[("k3 KL (trainer || engine)", _key("mismatch_kl_k3"))], twin_label="k3 KL")
    if _keys_like(grpo, lambda k: k.startswith("ds_")):  # grpo.dynamic_sampling
        _step_plot(p, "GRPO dynamic sampling", grpo,
                   [("rounds", _key("ds_rounds")), ("groups drawn", _key("ds_groups_seen")),
                    ("informative groups", _key("ds_informative_groups")),
                    ("uninformative groups trained", _key("ds_filled_groups"))], "count", ylim=(0, None))
    times = [("rollout", "time_rollout_s"), ("train", "time_train_s"), ("weight sync", "time_sync_s")]
    present = set(_keys_like(grpo, lambda k: k.startswith("time_")))
    times = [(lbl, _key(k)) for lbl, k in times if k in present]
    if times:
        _step_plot(p, "GRPO step time", grpo, times, "seconds", ylim=(0, None))


def _sft_plot(p: _Plotter, sft: list[dict], notes: list[str], expected: bool) -> None:
    if not sft:
        if expected:
            notes.append("SFT: no metrics yet (no \"sft\" rows in metrics.jsonl)")
        return
    series = [("loss", _prefixed("loss"))]
    if any(_get(r, "nll") is not None and abs(_get(r, "nll") - (_get(r, "loss") or 0.0)) > 1e-6 for r in sft):
        series.append(("nll", _prefixed("nll")))
    _step_plot(p, "SFT loss", sft, series, "loss")


def _preference_plot(p: _Plotter, rows: list[dict], notes: list[str], expected: bool) -> None:
    pts, starts = _concat(rows)
    if not any(_get(r, "loss") is not None for r in rows):
        if expected:
            notes.append("Preference: no training steps logged yet" if rows else
                         "Preference: no metrics yet (no \"preference\" rows in metrics.jsonl)")
        return
    fig, axes = p.figure(ncols=3, width=11.0, height=3.0)
    _lines(axes[0], pts, [("loss", _prefixed("loss"))])
    axes[0].set_title("loss")
    _lines(axes[1], pts, [(lbl, _prefixed(f"rewards/{lbl}")) for lbl in ("margin", "chosen", "rejected")])
    axes[1].set_title("implicit rewards")
    if axes[1].lines:
        axes[1].legend(loc="best")
    _lines(axes[2], pts, [("accuracy", _prefixed("rewards/accuracy"))])
    axes[2].set_title("reward accuracy (chosen > rejected)")
    axes[2].set_ylim(-0.05, 1.05)
    for ax in axes:
        _dividers(ax, starts)
        ax.set_xlabel("step")
    p.add("Preference loss and reward margins", fig)


def _bar_plot(p: _Plotter, title: str, groups: list[int], by_type: dict[int, dict[str, float]], ylabel: str) -> bool:
    types = [t for t in PAIR_TYPES if any(t in by_type[g] for g in groups)]
    types += sorted({t for g in groups for t in by_type[g]} - set(types))
    if not types:
        return False
    fig, (ax,) = p.figure(height=3.3, bottom=0.95)
    width = 0.8 / len(types)
    for j, t in enumerate(types):
        xs = [i + (j - (len(types) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [by_type[g].get(t, 0) for g in groups], width, label=t, color=_COLORS[j % len(_COLORS)])
        ax.bar_label(bars, fontsize=7, fmt="%g")
    ax.set_xticks(range(len(groups)), [f"iter {g}" for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    ax.margins(y=0.12)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=min(4, len(types)))
    p.add(title, fig)
    return True


def _eval_label(key: tuple[int, str]) -> str:
    return f"it{key[0]} {key[1]}"


def _eval_sort(key: tuple[int, str]) -> tuple:
    return key[0], EVAL_ORDER.index(key[1]) if key[1] in EVAL_ORDER else len(EVAL_ORDER), key[1]


def _inconsistency_plot(p: _Plotter, verify: dict[int, dict], evals: dict[tuple[int, str], dict]) -> bool:
    series: list[tuple[str, list[tuple[int, float]]]] = []
    for label, key in (("verify: GRPO rollouts", "inconsistency_rate"),
                       ("verify: accurate rollouts", "accurate_inconsistency_rate")):
        pts = [(i, _num(verify[i].get(key))) for i in sorted(verify)]
        series.append((label, [(i, v) for i, v in pts if v is not None]))
    afters = sorted({a for _, a in evals}, key=lambda a: _eval_sort((0, a)))
    for a in afters:
        pts = [(i, _num(s.get("inconsistency_rate"))) for (i, aa), s in sorted(evals.items()) if aa == a]
        series.append((f"eval after {a}", [(i, v) for i, v in pts if v is not None]))
    series = [(lbl, pts) for lbl, pts in series if pts]
    if not series:
        return False
    fig, (ax,) = p.figure(height=3.3, bottom=1.0)
    for j, (lbl, pts) in enumerate(series):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.4, label=lbl, color=_COLORS[j % len(_COLORS)],
                linestyle="-" if lbl.startswith("verify") else "--")
    its = sorted({x for _, pts in series for x, _ in pts})
    ax.set_xticks(its, [f"iter {i}" for i in its])
    ax.set_xlim(min(its) - 0.5, max(its) + 0.5)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("inconsistent / judged")
    ax.set_title("Reasoning-answer inconsistency rate per iteration")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=min(3, len(series)))
    p.add("Inconsistency rate per iteration", fig)
    return True


def _eval_plot(p: _Plotter, evals: dict[tuple[int, str], dict]) -> bool:
    keys = sorted(evals, key=_eval_sort)
    if not any(_num(evals[k].get("accuracy")) is not None for k in keys):
        return False
    fig, (ax,) = p.figure(width=11.0, height=3.2, right=2.0, bottom=0.5 + (0.3 if len(keys) > 10 else 0))
    xs = list(range(len(keys)))

    def draw(label, values, **kw):
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=4, label=label, **kw)

    draw("accuracy (all)", [_num(evals[k].get("accuracy")) for k in keys], color="black", linewidth=2.2)
    types = sorted({t for k in keys for t in _sub(evals[k], "accuracy_by_type")})
    for j, t in enumerate(types):
        draw(t, [_sub(evals[k], "accuracy_by_type").get(t) for k in keys], color=_COLORS[j % len(_COLORS)],
             linewidth=1.0, alpha=0.85)
    if any(_num(evals[k].get("mra")) is not None for k in keys):
        draw("MRA (regression)", [_num(evals[k].get("mra")) for k in keys], color="#555", linestyle=":", linewidth=1.2)
    ax.set_xticks(xs, [_eval_label(k) for k in keys], rotation=30 if len(keys) > 10 else 0)
    ax.set_xlim(-0.5, len(keys) - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title("Eval accuracy per eval point (overall and by problem type)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    p.add("Eval accuracy per eval point", fig)
    return True


# ---------------------------------------------------------------------------------------------
# collecting the per-iteration data


def _verify_data(data: RunView, iterations: list[int]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in data.stage_rows("verify"):
        out[_iteration(r)] = dict(r)
    for it in iterations:
        meta = _read_json(data.stage_dir(it, "verify") / PAIRS_META, data)
        stats = meta.get("stats") if isinstance(meta, dict) else None
        if isinstance(stats, dict):
            row = out.setdefault(it, {})
            for k, v in stats.items():
                row.setdefault(k, v)
    return out


def _eval_data(data: RunView) -> dict[tuple[int, str], dict]:
    out: dict[tuple[int, str], dict] = {}
    for r in data.stage_rows("eval"):
        after = str(r.get("after") or "?")
        it = r.get("iteration", r.get("step", 0))
        it = it if isinstance(it, int) and not isinstance(it, bool) else 0
        out[(it, after)] = dict(r)
    paths = [(int(m.group(1)), d) for d in data.run_dir.glob("iter*/eval_*")
             if (m := re.fullmatch(r"iter(\d+)", d.parent.name))]
    paths += [(0, d) for d in data.run_dir.glob("eval_*")]
    for it, d in paths:
        res = _read_json(d / RESULTS, data)
        summary = res.get("summary") if isinstance(res, dict) else None
        if isinstance(summary, dict):
            key = (it, d.name[len("eval_"):])
            out[key] = {**out.get(key, {}), **summary, "_results": str((d / RESULTS).relative_to(data.run_dir))}
    return out


# ---------------------------------------------------------------------------------------------
# HTML pieces

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f7f9;font-size:14px}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:14px 0 6px}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0}
th,td{border:1px solid #e1e4e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:6px}
figure.wide{grid-column:1/-1}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
.st-done{color:#1a7f37;font-weight:600}.st-run{color:#bf8700;font-weight:600}.st-pend{color:#888}
.missing{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:8px 14px;margin:12px 0}
.missing li,.problems li{margin:2px 0}
.problems{background:#ffebe9;border:1px solid #f5b5ad;border-radius:6px;padding:8px 14px;margin:12px 0}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px 12px;margin:10px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
pre.txt{white-space:pre-wrap;word-break:break-word;background:#fafbfc;border:1px solid #eee;padding:6px 8px;
margin:4px 0;font-size:12px;max-height:360px;overflow:auto}
.chosen{border-left:4px solid #2da44e;padding-left:8px}.rejected{border-left:4px solid #cf222e;padding-left:8px}
.kv{color:#555;font-size:12px}details{margin:8px 0}summary{cursor:pointer;color:#0969da}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], num_cols: Iterable[int] = ()) -> str:
    num_cols = set(num_cols)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{c}</td>" if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(v: Any, pct: bool = False) -> str:
    n = _num(v)
    if n is None:
        return "" if v is None else esc(v)
    if pct:
        return f"{100 * n:.1f}%"
    if n == int(n) and abs(n) < 1e15 and isinstance(v, int):
        return str(int(n))
    return f"{n:.4g}"


def _duration(s: Any) -> str:
    n = _num(s)
    if n is None:
        return ""
    if n < 60:
        return f"{n:.1f} s"
    if n < 3600:
        return f"{int(n // 60)} min {int(n % 60):02d} s"
    return f"{int(n // 3600)} h {int(n % 3600 // 60):02d} min"


def _dotted(cfg: dict, key: str) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


_CONFIG_KEYS = ("model.path", "stages", "iterations", "seed", "data.train", "data.test", "data.use_video",
                "sft.steps", "grpo.steps", "grpo.prompts_per_step", "grpo.group_size", "grpo.max_tokens",
                "grpo.lr", "grpo.kl_coef", "grpo.reward_weights", "verify.mode", "verify.judge",
                "verify.judge_model", "preference.loss", "preference.beta", "preference.lr",
                "eval.limit", "prune.enabled", "train.dtype", "train.strategy", "train.lora", "rollout.backend",
                "ray.trainer_workers", "ray.rollout_workers")


def _stage_status(info: Any) -> tuple[str, str]:
    if not isinstance(info, dict):
        return "pending", "st-pend"
    if info.get("done"):
        return "done", "st-done"
    return "started, not done (running or interrupted)", "st-run"


def _header(data: RunView, name: str, missing: list[str]) -> str:
    cfg = data.config or {}
    man = data.manifest or {}
    stages = man.get("stages") if isinstance(man.get("stages"), dict) else {}
    parts = [f"<h1>veripo run: {esc(name)}</h1>"]
    sub = [f"folder <code>{esc(data.run_dir)}</code>"]
    model = _dotted(cfg, "model.path") or man.get("model")
    if model:
        sub.append(f"model <b>{esc(model)}</b>")
    if _num(man.get("created")):
        sub.append("created " + esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(man["created"]))))
    last = max((r.get("time") for r in data.rows if _num(r.get("time"))), default=None)
    if last:
        sub.append("last metric " + esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))))
    sub.append("report written " + esc(time.strftime("%Y-%m-%d %H:%M:%S")))
    parts.append(f"<div class=\"sub\">{' · '.join(sub)}</div>")

    order = data.stage_order()
    cols = []
    if order:
        rows, total, n_done = [], 0.0, 0
        for s in order:
            info = stages.get(s)
            label, cls = _stage_status(info)
            info = info if isinstance(info, dict) else {}
            n_done += label == "done"
            total += _num(info.get("seconds")) or 0.0
            extra = {k: v for k, v in info.items() if k not in ("done", "seconds", "steps_done")
                     and isinstance(v, (str, int, float)) and not isinstance(v, bool)}
            rows.append([esc(s), f"<span class=\"{cls}\">{esc(label)}</span>", _duration(info.get("seconds")),
                         _fmt(info.get("steps_done")), esc(", ".join(f"{k}={v}" for k, v in extra.items()))])
        cols.append(f"<div><h3>Stages: {n_done}/{len(order)} done, {esc(_duration(total) or '0 s')} wall time</h3>"
                    + _table(["stage", "status", "wall time", "steps", "info"], rows, num_cols=[2, 3]) + "</div>")
    if not data.paths.manifest.is_file():
        missing.append("manifest.json: not there yet (no stage has started)")
    if data.config is not None:
        rows = []
        for k in _CONFIG_KEYS:
            v = _dotted(cfg, k)
            if v is not None and v != {} and v != []:
                text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                rows.append([esc(k), esc(text)])
        cols.append("<div><h3>Config summary</h3>" + _table(["key", "value"], rows) + "</div>")
    elif data.config_text is None:
        missing.append("config.yaml: not there yet")
    parts.append(f"<div class=\"cols\">{''.join(cols)}</div>")
    if data.config_text is not None:
        parts.append("<details><summary>full config.yaml</summary>"
                     f"<pre class=\"txt\">{esc(data.config_text)}</pre></details>")
    return "\n".join(parts)


def _clip_text(text: str) -> str:
    if len(text) <= _MAX_TEXT:
        return esc(text)
    return esc(text[:_MAX_TEXT]) + f"\n<i>… {len(text) - _MAX_TEXT} more characters</i>"


def _rollout_card(r, title: str) -> str:
    rec = r.record or {}
    comps = ", ".join(f"{k}={v:.3g}" for k, v in r.reward_components.items())
    kv = [f"reward <b>{r.reward:.3g}</b>", esc(comps)]
    if r.advantage is not None:
        kv.append(f"advantage {r.advantage:.3g}")
    kv += [f"finish {esc(r.finish_reason)}", f"{len(r.token_ids)} tokens", f"problem {esc(r.problem_id)}",
           f"id {esc(r.rollout_id)}"]
    out = [f"<div class=\"card\"><h3>{esc(title)}</h3><div class=\"kv\">{' · '.join(kv)}</div>"]
    if rec.get("problem"):
        out.append(f"<div class=\"kv\">question ({esc(rec.get('problem_type', ''))}):</div>"
                   f"<pre class=\"txt\">{_clip_text(str(rec['problem']))}</pre>")
    if rec.get("solution"):
        out.append(f"<div class=\"kv\">solution: {esc(rec['solution'])}</div>")
    out.append(f"<div class=\"kv\">response:</div><pre class=\"txt\">{_clip_text(r.response)}</pre></div>")
    return "".join(out)


def _rollout_section(data: RunView, iterations: list[int], missing: list[str]) -> str:
    for it in reversed(iterations):
        path = data.stage_dir(it, "grpo") / ROLLOUTS
        rollouts = _read_records(path, Rollout.from_dict, read_rollouts, data, tail=True)
        if not rollouts:
            continue
        last = max(r.step for r in rollouts)
        step = sorted((r for r in rollouts if r.step == last), key=lambda r: r.reward, reverse=True)
        picks = [("best", step[0])]
        if len(step) > 1:
            picks.append(("worst", step[-1]))
        if len(step) > 3:
            picks.insert(1, ("2nd best", step[1]))
            picks.append(("2nd worst", step[-2]))
        rel = path.relative_to(data.run_dir)
        cards = "".join(_rollout_card(r, f"{lbl} reward of step {last}") for lbl, r in picks)
        return (f"<h2>Sample rollouts</h2><div class=\"sub\">iteration {it}, last GRPO step {last} "
                f"({len(step)} rollouts) from <code>{esc(rel)}</code></div>{cards}")
    missing.append("GRPO rollouts: not there yet (no iter*/grpo/rollouts.jsonl)")
    return "<h2>Sample rollouts</h2><p class=\"sub\">No GRPO rollouts yet.</p>"


def _pair_side(p, side: str) -> str:
    checks = getattr(p, f"{side}_checks") or {}
    verdict = getattr(p, f"{side}_verdict")
    score = getattr(p, f"{side}_score")
    kv = [f"id {esc(getattr(p, f'{side}_id'))}"]
    if verdict is not None:
        kv.append(f"verdict <b>{esc(verdict)}</b>")
    if score is not None:
        kv.append(f"score {score:.3g}")
    kv += [f"{esc(k)}={esc(v)}" for k, v in checks.items() if isinstance(v, (str, int, float, bool))]
    return (f"<div class=\"{side}\"><b>{side}</b><div class=\"kv\">{' · '.join(kv)}</div>"
            f"<pre class=\"txt\">{_clip_text(getattr(p, side))}</pre></div>")


def _pairs_section(data: RunView, iterations: list[int], missing: list[str], expected: bool) -> str:
    for it in reversed(iterations):
        path = data.stage_dir(it, "verify") / PAIRS
        pairs = _read_records(path, PreferencePair.from_dict, read_pairs, data, tail=False)
        if not pairs:
            continue
        picks, seen = [], set()
        for p in pairs:  # one per type first, then fill up to four
            if p.type not in seen:
                picks.append(p)
                seen.add(p.type)
        picks += [p for p in pairs if p not in picks][: max(0, 4 - len(picks))]
        cards = "".join(
            f"<div class=\"card\"><h3>{esc(p.type)} pair {esc(p.pair_id)}</h3>"
            f"<div class=\"kv\">problem {esc(p.problem_id)}" + (f" · judge {esc(p.judge)}" if p.judge else "")
            + f"</div><pre class=\"txt\">{_clip_text(p.prompt)}</pre>"
            f"<div class=\"pair\">{_pair_side(p, 'chosen')}{_pair_side(p, 'rejected')}</div></div>"
            for p in picks[:6])
        return (f"<h2>Sample preference pairs</h2><div class=\"sub\">iteration {it}: {len(pairs)} pairs in "
                f"<code>{esc(path.relative_to(data.run_dir))}</code></div>{cards}")
    if expected:
        missing.append("verifier pairs: not there yet (no iter*/verify/pairs.jsonl)")
        return "<h2>Sample preference pairs</h2><p class=\"sub\">No verifier pairs yet.</p>"
    return ""


def _eval_table(evals: dict[tuple[int, str], dict]) -> str:
    keys = sorted(evals, key=_eval_sort)
    types = sorted({t for k in keys for t in _sub(evals[k], "accuracy_by_type")})
    header = ["iteration", "after", "n", "accuracy", "MRA", "format rate", "inconsistency", "response tokens"]
    header += [f"acc: {t}" for t in types]
    rows = []
    for k in keys:
        s = evals[k]
        by_type = _sub(s, "accuracy_by_type")
        counts = _sub(s, "count_by_type")
        rows.append([str(k[0]), esc(k[1]), _fmt(s.get("n")), _fmt(s.get("accuracy"), pct=True),
                     _fmt(s.get("mra"), pct=True), _fmt(s.get("format_rate"), pct=True),
                     _fmt(s.get("inconsistency_rate"), pct=True), _fmt(s.get("response_tokens_mean"))]
                    + [_fmt(by_type.get(t), pct=True) + (f" <span class=\"kv\">({_fmt(counts[t])})</span>"
                                                         if t in counts else "") for t in types])
    return _table(header, rows, num_cols=range(2, len(header)))


# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    html: str
    plots: list[str]  # titles of the plots embedded, in page order
    missing: list[str]  # what is not there yet
    seconds: float = 0.0


def _expects(data: RunView, name: str) -> bool:
    """Whether the run is configured to have stage `name` (``eval`` matches ``eval_grpo`` ...); when
    neither the manifest nor the config names any stage, assume yes."""
    order = data.stage_order()
    return not order or any(s.split("/")[-1].split("_")[0] == name for s in order)


def skipped_input(manifest: dict | None) -> list[str]:
    """One line per input the run left out, from the manifest: the records ``data.skip_bad`` skipped
    (``inputs.data``), each stage's skipped lines (``skipped_lines`` / ``skipped_errors``), unreadable judge
    verdicts, image records a vision run left out, and a preference stage that had nothing to train."""
    man = manifest if isinstance(manifest, dict) else {}
    out = []

    def lines(name: str, info: Any) -> None:
        if not isinstance(info, dict):
            return
        n = info.get("skipped_lines")
        if isinstance(n, int) and n > 0:
            errors = [e for e in info.get("skipped_errors") or [] if isinstance(e, str)]
            first = "; ".join(errors[:3])
            out.append(f"{name}: {n} bad line(s) skipped" + (f" (first: {first})" if first else ""))
        images = info.get("images_left_out")
        if isinstance(images, int) and images > 0:
            out.append(f"{name}: {images} image record(s) left out (the vision path takes video and text)")
        reason = info.get("not_trained")
        if isinstance(reason, str) and reason:
            out.append(f"{name}: nothing trained: {reason}")
        unknown = info.get("verdicts_unknown")
        if isinstance(unknown, int) and unknown > 0:
            out.append(f"{name}: {unknown} judge reply(ies) unreadable as a verdict (counted as unknown)")

    inputs = man.get("inputs")
    if isinstance(inputs, dict):
        lines("data (data.train / data.test)", inputs.get("data"))
    stages = man.get("stages")
    if isinstance(stages, dict):
        for name, info in stages.items():
            lines(str(name), info)
    return out


def build_report(run_dir: str | os.PathLike) -> Report:
    """Read the run folder and render the report page (nothing is written)."""
    t0 = time.perf_counter()
    data = load_run(run_dir)
    name = (data.config or {}).get("name") or data.run_dir.resolve().name
    iterations = data.iterations()
    missing: list[str] = []
    notes: list[str] = []
    header = _header(data, str(name), missing)
    if not data.paths.metrics.is_file():
        missing.append("metrics.jsonl: not there yet (no step logged)")

    p = _Plotter()
    sections: list[tuple[str, int]] = []  # (heading, index of the first plot in that section)

    with p.style():
        sections.append(("Training curves", len(p.plots)))
        grpo = data.stage_rows("grpo")
        if grpo or _expects(data, "grpo"):
            _grpo_plots(p, grpo, notes)
        _sft_plot(p, data.stage_rows("sft"), notes, _expects(data, "sft"))
        _preference_plot(p, data.stage_rows("preference"), notes, _expects(data, "preference"))

        sections.append(("Verifier and evaluation per iteration", len(p.plots)))
        verify = _verify_data(data, iterations)
        its = sorted(verify)
        by_type = {i: _sub(verify[i], "pairs_by_type") for i in its}
        if not _bar_plot(p, "Preference pairs by type per iteration", its, by_type, "pairs") \
                and _expects(data, "verify"):
            notes.append("Verifier: no pair statistics yet (no \"verify\" metrics row or pairs.meta.json)")
        evals = _eval_data(data)
        if not _inconsistency_plot(p, verify, evals) and (_expects(data, "verify")
                                                                       or _expects(data, "eval")):
            notes.append("Inconsistency rate: no verify or eval value yet")
        if not _eval_plot(p, evals) and _expects(data, "eval"):
            notes.append("Eval: no results yet (no \"eval\" rows in metrics.jsonl or iter*/eval_*/results.json)")

    # per-stage expectations from the manifest order
    stages = (data.manifest or {}).get("stages") or {}
    outputs = {"grpo": ROLLOUTS, "verify": PAIRS, "eval": RESULTS}
    for s in data.stage_order():
        info = stages.get(s) if isinstance(stages, dict) else None
        it, stage = RunDir.parse_stage_id(s) or (0, s)
        kind = stage.split("_")[0]
        label, _ = _stage_status(info)
        has_output = kind in outputs and (data.stage_dir(it, stage) / outputs[kind]).is_file()
        if label != "done":
            what = f" (no {outputs[kind]} yet)" if kind in outputs and not has_output else ""
            missing.append(f"{s}: {label}{what}")
        elif kind in outputs and not has_output:
            missing.append(f"{s}: done, but {outputs[kind]} is missing")

    missing.extend(notes)
    rollouts_html = _rollout_section(data, iterations, missing)
    pairs_html = _pairs_section(data, iterations, missing, _expects(data, "verify"))

    body = [header]
    if missing:
        body.append("<div class=\"missing\"><b>Not there yet</b><ul>" + "".join(f"<li>{esc(m)}</li>" for m in missing)
                    + "</ul></div>")
    skips = skipped_input(data.manifest)
    if skips:
        body.append("<div class=\"problems\"><b>Input left out (skipped under a skip flag)</b><ul>"
                    + "".join(f"<li>{esc(m)}</li>" for m in skips) + "</ul></div>")
    if data.problems:
        body.append("<div class=\"problems\"><b>Problems reading the run</b><ul>"
                    + "".join(f"<li>{esc(m)}</li>" for m in data.problems) + "</ul></div>")
    bounds = [i for _, i in sections] + [len(p.plots)]
    for (heading, start), end in zip(sections, bounds[1:]):
        figs = []
        for title, png in p.plots[start:end]:
            wide = " class=\"wide\"" if title in _WIDE else ""
            figs.append(f"<figure{wide}><img class=\"plot\" alt=\"{esc(title)}\" title=\"{esc(title)}\" "
                        f"src=\"data:image/png;base64,{png}\"></figure>")
        body.append(f"<h2>{esc(heading)}</h2>")
        body.append(f"<div class=\"plots\">{''.join(figs)}</div>" if figs else "<p class=\"sub\">No plots yet.</p>")
    if evals:
        body.append("<h2>Evaluation</h2>" + _eval_table(evals))
    body += [rollouts_html, pairs_html]

    seconds = time.perf_counter() - t0
    titles = [t for t, _ in p.plots]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"veripo-plots\" content=\"{len(titles)}\">"
            f"<title>veripo report: {esc(name)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(b for b in body if b)
            + f"\n<p class=\"sub\">{len(titles)} plots · rendered in {seconds:.2f} s by veripo.report</p>"
            + "\n</main></body></html>\n")
    return Report(page, titles, missing, seconds)


def write_report(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """(Re)write ``run_dir/report.html`` (or `path`) atomically from whatever the run holds; returns the path."""
    report = build_report(run_dir)
    return atomic_write_text(Path(path) if path is not None else RunDir(run_dir).report, report.html)
