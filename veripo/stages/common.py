"""What the stages share: prompts as token ids, (prompt, response) pairs as a PolicyBatch, the data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from veripo.config import RunConfig
from veripo.data import PromptStyle, Record, build_messages, load_records
from veripo.data.records import LoadReport


@dataclass(frozen=True)
class Prompt:
    """One record rendered for the policy: chat text and its token ids."""

    record: Record
    text: str
    token_ids: list[int]


class PromptBuilder:
    """Renders records with the policy's chat template (text-only: the caption stands in for the video)."""

    def __init__(self, tokenizer, cfg: RunConfig):
        self.tokenizer = tokenizer
        self.style = PromptStyle(use_caption=cfg.data.use_caption, use_video=cfg.data.use_video,
                                 system=cfg.data.system_prompt)
        self.max_tokens = cfg.data.max_prompt_tokens
        if cfg.model.chat_template:
            tokenizer.chat_template = cfg.model.chat_template

    def __call__(self, record: Record) -> Prompt:
        messages = build_messages(record, self.style)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_tokens:
            raise ValueError(f"record {record.problem_id!r}: prompt has {len(ids)} tokens, over "
                             f"data.max_prompt_tokens={self.max_tokens}. Fix: raise data.max_prompt_tokens "
                             "or shorten the question/caption")
        return Prompt(record=record, text=text, token_ids=list(ids))


def policy_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
                 advantages: Sequence[float] | None = None):
    """Right-padded ``[B, T]`` prompt+response ids with ``loss_mask`` 1 on response tokens."""
    from veripo.train import PolicyBatch

    samples = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        sample = {"input_ids": list(p) + list(r), "loss_mask": [0] * len(p) + [1] * len(r)}
        if advantages is not None:
            sample["advantages"] = float(advantages[i])
        samples.append(sample)
    return PolicyBatch.collate(samples, pad_id)


@dataclass
class RunData:
    train: list[Record]
    test: list[Record]
    skipped: int = 0


def load_run_data(cfg: RunConfig, run_dir: Path) -> RunData:
    """The recipe's train/test records, generating the synthetic set into the run folder when asked."""
    if cfg.data.train is None:
        from veripo.data.synth import generate

        out = run_dir / "data"
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
    if not train:
        raise ValueError(f"{train_path}: no usable records. Fix: check data.train")
    return RunData(train=train, test=test, skipped=report.skipped)
