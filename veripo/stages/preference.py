"""The preference stage (docs/algorithms.md section 4): pairs -> reference log-probs -> preference steps.

`run_preference_stage` reads as the algorithm: encode the pairs (prompt rendered as in GRPO, video
frames included for vision models), drop RRPO pairs with no differing phrase (counted), score the
reference once, then train on batches of pairs with `PreferenceLossFn` on the same policy engine as
GRPO (`PolicyEngine`, or anything with ``train_step`` / ``logprobs`` such as the Ray `TrainerGroup`).

Design decisions:

* **One forward for both sides.** A step's batch interleaves rows ``c0, r0, c1, r1, ...``: the
  engine's micro-batches and the trainer group's rank shards are contiguous row ranges, so a pair
  stays together whenever ``train.micro_batch_size`` (sequences) is even and each rank gets an even
  number of rows; `PreferenceLossFn` checks ``extras["pair_role"]`` / ``extras["pair_index"]`` and
  names the fix otherwise. Each row carries ``extras["pair_weight"] = 1 / pairs_in_step``, so the
  micro-batch losses ``sum(losses * weight)`` sum to the step's mean pair loss on any split
  (the engine's loss contract) without the loss needing the global counts.
* **Reference log-probs once.** The reference is the policy at the start of the stage: its
  per-token log-probs are computed with the same engine's ``logprobs`` (eval mode) before the first
  update and stored with the pairs (``PolicyBatch.ref_logp``): no second model for the DPO family.
* **RRPO's token-wise KL** needs the reference's full distribution at every chosen position, which is
  too big to store. A frozen copy of the starting weights (an in-memory copy for a single-process
  `PolicyEngine`, else an HF export the loss loads once per worker process) runs inside the loss on
  the chosen rows of each micro-batch, one row at a time; `veripo.algos.token_kl` then computes the KL
  chunked over T. Extra memory: the chosen rows' reference logits of one micro-batch (half the size of
  the policy logits the engine already holds), plus two float32 chunk slabs. alpha = 0 needs no copy.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from veripo.algos import token_kl, token_logprobs
from veripo.algos.preference import PreferenceHParams, PreferenceInputs, get_preference_loss, phrase_masks, phrase_spans
from veripo.config import PreferenceConfig
from veripo.config.video import VIDEO_R1
from veripo.data import Record, build_messages
from veripo.data.pairs import load_pair_file
from veripo.data.records import LoadReport, MissingFileError, RecordError
from veripo.data.rollouts import PreferencePair, read_pairs
from veripo.data.video import load_video, processor_inputs
from veripo.faults import fault_point
from veripo.stages.base import StageContext
from veripo.train import PolicyBatch, PolicyEngine
from veripo.train.engine import is_vision_language

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# Pairs -> token ids (and frames)
# ----------------------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    """One pair as two `PolicyBatch.collate` samples (``input_ids``, ``loss_mask``, optional visual fields
    and ``ref_logp``), the response start of each row, and RRPO's phrase spans (response coordinates)."""

    pair_id: str
    chosen: dict[str, Any]
    rejected: dict[str, Any]
    chosen_start: int
    rejected_start: int
    spans: list = field(default_factory=list)

    def response_ids(self) -> tuple[list[int], list[int]]:
        return (self.chosen["input_ids"][self.chosen_start:].tolist(),
                self.rejected["input_ids"][self.rejected_start:].tolist())


_VISION_MARKERS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


class PairEncoder:
    """Renders a `PreferencePair` for the policy: the prompt exactly as the GRPO stage renders it (via the
    `PromptBuilder` when the pair carries its record, else the chat template around ``pair.prompt``),
    the responses from their token ids when known (else their text plus EOS), and for a vision model
    (`processor` given) the pair's video, loaded once and attached to both rows."""

    def __init__(self, tokenizer, prompts=None, processor=None, video_cfg=None, max_response_tokens: int | None = None):
        self.tokenizer, self.prompts, self.processor = tokenizer, prompts, processor
        self.video_cfg, self.max_response_tokens = video_cfg, max_response_tokens
        eos = tokenizer.eos_token_id
        self.eos_ids = [] if eos is None else [int(eos)]

    def __call__(self, pair: PreferencePair) -> EncodedPair:
        video = self._video_path(pair)
        if self.processor is not None and video is not None:
            return self._encode_video(pair, video)
        prompt = self._prompt_ids(pair)
        chosen = self._response_ids(pair.chosen, pair.chosen_token_ids)
        rejected = self._response_ids(pair.rejected, pair.rejected_token_ids)
        return EncodedPair(pair.pair_id, self._text_sample(prompt, chosen, pair.pair_id, "chosen"),
                           self._text_sample(prompt, rejected, pair.pair_id, "rejected"), len(prompt), len(prompt))

    # -- text ---------------------------------------------------------------------------------------
    def _record(self, pair: PreferencePair):
        if pair.record is None or self.prompts is None:
            return None
        return Record.from_dict(pair.record, where=f"pair {pair.pair_id}")

    def _messages(self, pair: PreferencePair, video: str | None) -> list[dict]:
        record = self._record(pair)
        if record is not None:
            return build_messages(record, self.prompts.style)
        content: Any = pair.prompt
        if video is not None:
            content = [{"type": "video", "video": video}, {"type": "text", "text": pair.prompt}]
        system = getattr(getattr(self.prompts, "style", None), "system", None)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]

    def _prompt_ids(self, pair: PreferencePair) -> list[int]:
        record = self._record(pair)
        if record is not None:
            return list(self.prompts(record).token_ids)
        text = self.tokenizer.apply_chat_template(self._messages(pair, None), add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _response_ids(self, text: str, ids: Sequence[int]) -> list[int]:
        out = list(ids) if ids else list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + self.eos_ids
        return out[: self.max_response_tokens] if self.max_response_tokens else out

    @staticmethod
    def _text_sample(prompt: list[int], response: list[int], pair_id: str, side: str) -> dict[str, Any]:
        if not response:
            raise ValueError(f"pair {pair_id!r}: the {side} response is empty. Fix: drop the pair or give it text")
        return {"input_ids": torch.tensor(prompt + response, dtype=torch.long),
                "loss_mask": torch.tensor([0] * len(prompt) + [1] * len(response), dtype=torch.long)}

    # -- video --------------------------------------------------------------------------------------
    @staticmethod
    def _video_path(pair: PreferencePair) -> str | None:
        if pair.video_path:
            return pair.video_path
        rec = pair.record or {}
        return rec.get("path") if rec.get("data_type") == "video" else None

    def _encode_video(self, pair: PreferencePair, path: str) -> EncodedPair:
        record = self._record(pair)
        messages = self._messages(pair, None if record is not None else path)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        video = load_video(path, self.video_cfg or VIDEO_R1)
        tok = self.processor.tokenizer
        eos = tok.eos_token or ""
        rows, starts = [], []
        for text, ids in ((pair.chosen, pair.chosen_token_ids), (pair.rejected, pair.rejected_token_ids)):
            response = tok.decode(list(ids)) if ids else text + eos  # the processor re-tokenises the text
            # a sampled vision placeholder would be read as one more frame slot: drop it from the response
            for marker in _VISION_MARKERS:
                response = response.replace(marker, "")
            inputs = processor_inputs(self.processor, [prompt + response], [video], padding=False)
            n = len(tok(response, add_special_tokens=False)["input_ids"])
            ids_T = inputs["input_ids"][0].long()
            start = ids_T.shape[0] - n
            keep = start + min(n, self.max_response_tokens or n)
            sample = {"input_ids": ids_T[:keep], "loss_mask": (torch.arange(keep) >= start).long(),
                      "attention_mask": inputs["attention_mask"][0][:keep]}
            if "mm_token_type_ids" in inputs:
                sample["mm_token_type_ids"] = inputs["mm_token_type_ids"][0][:keep]
            for name in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
                if inputs.get(name) is not None:
                    sample[name] = inputs[name]
            rows.append(sample)
            starts.append(start)
        return EncodedPair(pair.pair_id, rows[0], rows[1], starts[0], starts[1])


# ----------------------------------------------------------------------------------------------------
# Encoded pairs -> PolicyBatch
# ----------------------------------------------------------------------------------------------------


def pair_batch(pairs: Sequence[EncodedPair], pad_id: int, phrases: bool = False):
    """Interleaved rows ``c0, r0, c1, r1, ...`` with ``extras``: ``pair_index`` and ``pair_role`` (0 chosen,
    1 rejected) for the split check, ``pair_weight`` = 1 / len(pairs), and with `phrases` RRPO's
    ``phrase_mask`` [2P, T] (the chosen phrase mask on chosen rows, the rejected one on rejected rows)."""
    w = 1.0 / len(pairs)
    samples = []
    for i, p in enumerate(pairs):
        for role, s in enumerate((p.chosen, p.rejected)):
            samples.append({**s, "extras": {"pair_index": torch.tensor(i), "pair_role": torch.tensor(role),
                                            "pair_weight": torch.tensor(w, dtype=torch.float64)}})
    batch = PolicyBatch.collate(samples, pad_id=pad_id)
    if not phrases:
        return batch
    T = batch.seq_len
    mc, mr = phrase_masks([p.spans for p in pairs], T, T, [p.chosen_start for p in pairs],
                          [p.rejected_start for p in pairs])
    interleaved = torch.stack([mc, mr], dim=1).reshape(2 * len(pairs), T)
    return batch.with_fields(extras={**batch.extras, "phrase_mask": interleaved})


def attach_reference_logps(trainer, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int) -> None:
    """Score every pair once under the trainer's current weights (the reference) and store the per-token
    log-probs as each row's ``ref_logp``. Call before the first update."""
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        logp = trainer.logprobs(pair_batch(chunk, pad_id)).detach().float().cpu()
        for k, p in enumerate(chunk):
            for j, row in enumerate((p.chosen, p.rejected)):
                row["ref_logp"] = logp[2 * k + j, : row["input_ids"].shape[0]].clone()


# ----------------------------------------------------------------------------------------------------
# The loss callable the policy engine runs
# ----------------------------------------------------------------------------------------------------

_REFERENCES: dict[tuple, torch.nn.Module] = {}


def _reference_module(ref: Any, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The frozen reference: a module as given, or an HF folder loaded once per process (cached)."""
    if isinstance(ref, torch.nn.Module):
        return ref
    key = (str(ref), str(device), str(dtype))
    if key not in _REFERENCES:
        # transformers only to load a reference: importing it sets os.environ["TORCHINDUCTOR_CACHE_DIR"]
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        cls = AutoModelForImageTextToText if is_vision_language(AutoConfig.from_pretrained(ref)) else AutoModelForCausalLM
        model = cls.from_pretrained(ref, dtype=dtype).to(device).eval()
        model.requires_grad_(False)
        _REFERENCES[key] = model
    return _REFERENCES[key]


def check_pair_rows(micro) -> None:
    """Rows must come as (chosen, rejected) of the same pair; a micro-batch or shard that split a pair fails."""
    role, index = micro.extras.get("pair_role"), micro.extras.get("pair_index")
    if role is None or index is None:
        raise ValueError("preference batch lacks extras['pair_role'] / ['pair_index']; build it with pair_batch()")
    B = micro.batch_size
    ok = B % 2 == 0 and bool((role[0::2] == 0).all()) and bool((role[1::2] == 1).all()) \
        and bool((index[0::2] == index[1::2]).all())
    if not ok:
        raise ValueError(f"a micro-batch of {B} sequences splits a preference pair (rows must be chosen, rejected, "
                         "chosen, rejected, ...). Fix: set train.micro_batch_size to an even number (a pair is two "
                         "sequences) and give each trainer rank an even number of sequences")


@dataclass(frozen=True)
class PreferenceLossFn:
    """``loss_fn(logits, micro, ctx)`` for `PolicyEngine.train_step` (see veripo.train.engine).

    One forward over interleaved rows; chosen rows are 0::2 and rejected rows 1::2. Returns
    ``sum(losses * pair_weight)`` (weights 1 / pairs in the step: micro-batches sum to the mean).
    `reference` (RRPO with alpha > 0): an HF folder (loaded once per process) or a frozen module.
    """

    loss: str
    hparams: PreferenceHParams
    chunk_size: int | None = None
    reference: Any = None

    def __call__(self, logits: Tensor, micro, ctx) -> tuple[Tensor, dict[str, float]]:
        spec = get_preference_loss(self.loss)
        check_pair_rows(micro)
        logp = token_logprobs(logits, micro.input_ids, chunk_size=self.chunk_size)
        c, r = slice(0, None, 2), slice(1, None, 2)
        mask = micro.loss_mask
        ref = micro.ref_logp
        if spec.needs_reference and ref is None:
            raise ValueError(f"preference loss {self.loss!r} needs reference log-probs (batch.ref_logp); "
                             "see attach_reference_logps")
        pm = micro.extras.get("phrase_mask")
        if spec.needs_phrases and pm is None:
            raise ValueError(f"preference loss {self.loss!r} needs extras['phrase_mask']; use pair_batch(phrases=True)")
        kl = self._token_kl(logits, micro) if spec.needs_token_kl and self.hparams.alpha > 0 else None
        inputs = PreferenceInputs(
            logp[c], logp[r], mask[c], mask[r],
            None if ref is None else ref[c], None if ref is None else ref[r],
            None if pm is None else pm[c], None if pm is None else pm[r], kl)
        losses, metrics = spec(inputs, self.hparams)
        weight = micro.extras["pair_weight"][c].to(losses.dtype)
        return (losses * weight).sum(), {k: float(v) for k, v in metrics.items()}

    def _token_kl(self, logits: Tensor, micro) -> Tensor:
        if self.reference is None:
            raise ValueError("rrpo with alpha > 0 needs a frozen reference model (PreferenceLossFn.reference)")
        model = _reference_module(self.reference, logits.device, logits.dtype)
        P = micro.batch_size // 2
        ref_logits = torch.empty((P, *logits.shape[1:]), dtype=logits.dtype, device=logits.device)
        with torch.no_grad():
            for k in range(P):  # one chosen row at a time: reference activations for a single sequence
                row = micro.slice(2 * k, 2 * k + 1)
                ref_logits[k] = model(**row.model_inputs(), use_cache=False).logits[0].to(logits.dtype)
        kl_BT = token_kl(logits[0::2], ref_logits, chunk_size=self.chunk_size)
        mask = micro.loss_mask[0::2]
        return torch.where(mask != 0, kl_BT * mask.to(kl_BT.dtype), torch.zeros((), dtype=kl_BT.dtype,
                                                                                device=kl_BT.device)).sum(-1)


def frozen_reference(trainer, out_dir: str | Path | None = None) -> Any:
    """The stage's starting weights as a frozen reference for RRPO's token KL: an in-memory copy for a
    single-process `PolicyEngine` (in its compute dtype), else an HF export the loss loads per process."""
    if isinstance(trainer, PolicyEngine) and trainer.group is None:
        ref = copy.deepcopy(trainer.model).to(trainer.compute_dtype).eval()
        ref.requires_grad_(False)
        return ref
    path = Path(out_dir) / "reference" if out_dir else Path(tempfile.mkdtemp(prefix="veripo-ref-")) / "reference"
    if "dtype" in inspect.signature(trainer.export_hf).parameters:
        trainer.export_hf(str(path), dtype=torch.float32)
    else:
        trainer.export_hf(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------


def _set_lr(trainer, lr: float, warmup: int, total: int) -> None:
    if hasattr(trainer, "set_lr"):
        trainer.set_lr(lr, warmup, total)
    else:
        trainer.reset_optimizer(lr=lr, warmup_steps=warmup, total_steps=total)


def _schedule(n: int, cfg: PreferenceConfig, seed: int) -> list[list[int]]:
    """Pair indices of every step: epochs of (shuffled) consecutive batches; the last one may be short."""
    steps, out, epoch = cfg.total_steps(n), [], 0
    while len(out) < steps:
        order = list(range(n))
        if cfg.shuffle:
            random.Random(f"{seed}:{epoch}").shuffle(order)
        out += [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        epoch += 1
    return out[:steps]


def _logger(metrics) -> Callable[[int, dict], None]:
    if metrics is None:
        return lambda step, row: None
    if hasattr(metrics, "log"):
        return lambda step, row: metrics.log("preference", step, row)
    return metrics


def run_preference_stage(cfg: PreferenceConfig, trainer, pairs: Sequence[PreferencePair], tokenizer, prompts=None,
                         metrics=None, progress: bool = False, *, processor=None, video_cfg=None, reference: Any = None,
                         out_dir: str | Path | None = None, seed: int = 0, chunk_size: int | None = None,
                         start_step: int = 0, on_step_done: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train `trainer` on `pairs` with ``cfg.loss``; returns one metrics dict per step.

    Args:
        trainer: a `PolicyEngine`, or anything with ``train_step(batch, loss_fn)`` and ``logprobs(batch)``
            (and ``set_lr`` or ``reset_optimizer``) such as the Ray `TrainerGroup`; its current weights
            are the reference.
        pairs: `PreferencePair` records (`veripo.data.pairs` reads them from any source).
        tokenizer: the policy's tokenizer; prompts: the run's `PromptBuilder` (renders a pair's record as
            GRPO did; None: the chat template around ``pair.prompt``).
        metrics: a `MetricsLogger` (``log("preference", step, row)``) or a callable ``(step, row)``.
        processor / video_cfg: for vision models, the processor and `VideoConfig`; video pairs then
            carry their frames.
        reference: RRPO's frozen reference (HF folder or module); None builds one with `frozen_reference`.
        out_dir: where an exported reference goes (RRPO in a multi-process trainer), and where the
            reference log-probs are kept (``reference_logps.pt``) so a resumed stage scores against the
            stage's starting weights, not the half-trained ones.
        start_step / on_step_done: resume at `start_step` of the (deterministic) schedule; the callback
            runs after every step (the loop checkpoints there).
    """
    spec = get_preference_loss(cfg.loss)
    t0 = time.perf_counter()
    pairs = list(pairs)[: cfg.max_pairs] if cfg.max_pairs else list(pairs)
    encoder = PairEncoder(tokenizer, prompts, processor, video_cfg, cfg.max_response_tokens)
    encoded = [encoder(p) for p in pairs]
    skipped = 0
    if spec.needs_phrases:
        for e in encoded:
            e.spans = phrase_spans(*e.response_ids(), min_match=cfg.min_match)
        skipped = sum(not e.spans for e in encoded)
        encoded = [e for e in encoded if e.spans]
    log_row = _logger(metrics)
    setup = {"pairs": len(encoded), "pairs_skipped_no_phrase": skipped}
    if not encoded:
        log.warning("preference: no usable pairs (%d given, %d without a differing phrase); nothing to train",
                    len(pairs), skipped)
        log_row(0, {**setup, "steps": 0})
        return []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if spec.needs_reference:
        cache = Path(out_dir) / "reference_logps.pt" if out_dir else None
        if not _load_reference_logps(cache, encoded):
            if start_step > 0:
                raise RuntimeError(f"preference: resuming at step {start_step} needs the stage's reference "
                                   f"log-probs, but {cache} is missing. Fix: delete the stage's checkpoint to "
                                   "restart the stage")
            attach_reference_logps(trainer, encoded, pad_id, cfg.batch_size)
            _save_reference_logps(cache, encoded)
    hp = cfg.hparams()
    needs_model = spec.needs_token_kl and hp.alpha > 0
    ref_model = None
    if needs_model:
        exported = Path(out_dir) / "reference" if out_dir else None
        if reference is not None:
            ref_model = reference
        elif exported is not None and (exported / ".complete").is_file():
            ref_model = str(exported)
        else:
            ref_model = frozen_reference(trainer, out_dir)
            if isinstance(ref_model, str):
                (Path(ref_model) / ".complete").write_text("")
    if chunk_size is None:  # the engine's own setting, when the trainer exposes it
        chunk_size = getattr(getattr(trainer, "cfg", None), "logprob_chunk_size", None)
    loss_fn = PreferenceLossFn(cfg.loss, hp, chunk_size=chunk_size, reference=ref_model)
    setup["setup_s"] = time.perf_counter() - t0
    plan = _schedule(len(encoded), cfg, seed)
    if start_step == 0:  # a resumed stage keeps the optimizer and schedule its checkpoint restored
        _set_lr(trainer, cfg.lr, cfg.warmup_steps, len(plan))

    from tqdm import tqdm

    history = []
    bar = tqdm(range(start_step, len(plan)), desc=f"preference/{cfg.loss}", disable=not progress, unit="step",
               initial=start_step, total=len(plan))
    for step in bar:
        idx = plan[step]
        batch = pair_batch([encoded[i] for i in idx], pad_id, phrases=spec.needs_phrases)
        row = {**setup, "step_pairs": len(idx), **trainer.train_step(batch, loss_fn)}
        history.append(row)
        log_row(step, row)
        if on_step_done is not None:
            on_step_done(step, row)
    return history


def _save_reference_logps(path: Path | None, pairs: Sequence[EncodedPair]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {p.pair_id: (p.chosen["ref_logp"], p.rejected["ref_logp"]) for p in pairs}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_reference_logps(path: Path | None, pairs: Sequence[EncodedPair]) -> bool:
    """Attach saved reference log-probs when the file covers exactly these pairs (else False)."""
    if path is None or not path.is_file():
        return False
    state = torch.load(path, weights_only=True)
    if set(state) != {p.pair_id for p in pairs}:
        return False
    for p in pairs:
        p.chosen["ref_logp"], p.rejected["ref_logp"] = state[p.pair_id]
    return True


class PreferenceStage:
    """``preference.loss`` on the iteration's verifier pairs (or the file ``preference.pairs`` names), on the
    same policy engine as GRPO; the reference is the policy at the stage's start."""

    name = "preference"
    trains = True

    def run(self, ctx: StageContext, out: Path, start_step: int) -> dict:
        c = ctx.cfg.preference
        report = LoadReport()
        if c.pairs:  # the user's file: bad lines skipped (counted, said) under data.skip_bad
            path = Path(c.pairs)
            pairs = load_pair_file(path, skip_bad=ctx.cfg.data.skip_bad, report=report)
        else:
            path = ctx.run.pairs(ctx.iteration)
            if not path.is_file():
                raise MissingFileError(f"{path}: no pair file. Fix: put verify before preference in stages, or "
                                       "set preference.pairs=PATH (a verifier or LLaVA-Hound-style pair JSONL)")
            pairs = read_pairs(path, skip_bad=ctx.cfg.data.skip_bad, report=report)
        if not pairs and (c.pairs or report.skipped):
            # the user's own file, or one whose every line is bad: a mistake to fix, not a run to "complete"
            what = f"all {report.skipped} line(s) are bad and were skipped" if report.skipped else "the file is empty"
            raise RecordError(str(path), "<file>", f"no preference pairs to train on ({what})",
                              "give preference.pairs a file with pairs" if c.pairs else
                              "rerun this iteration's verify stage (delete its folder and its manifest entry)")
        if not pairs:
            # the verifier's own output: finding no contrastive pair in a round is an outcome (small or early
            # runs), so the loop goes on with the policy unchanged, said here and kept in the manifest
            reason = ("the verifier found no contrastive pair in this iteration's rollouts (see "
                      f"{path.with_name('pairs.meta.json')}, stats.prompts_without_pair)")
            print(f"veripo: preference: nothing to train: {reason}; the policy goes on unchanged")
            ctx.progress.begin(ctx.stage_id, out, 0, lr=None)
            return {"steps_done": 0, "pairs": 0, "not_trained": reason}
        print(f"veripo: preference: {len(pairs)} pairs from {path}"
              + (f"; {report.summary()}" if report.skipped else ""))
        n_pairs = min(len(pairs), c.max_pairs) if c.max_pairs else len(pairs)
        total = c.total_steps(n_pairs) if n_pairs else 0
        # the optimizer and schedule: run_preference_stage sets them on a fresh start, once it knows the
        # steps its usable pairs make; a resumed stage keeps the ones its checkpoint restores
        ctx.progress.begin(ctx.stage_id, out, start_step, lr=None)

        def done(step: int, row: dict) -> None:
            fault_point("preference.step")
            ctx.progress.step_done(ctx.stage_id, out, step, total)

        video = ctx.cfg.data.use_video  # a vision model: video pairs carry their frames
        history = run_preference_stage(c, ctx.workers.trainer, pairs, ctx.tokenizer, ctx.prompts, ctx.metrics,
                                       progress=ctx.cfg.logging.progress, out_dir=out, seed=ctx.cfg.seed + ctx.iteration,
                                       start_step=start_step, on_step_done=done,
                                       processor=ctx.prompts.processor if video else None,
                                       video_cfg=ctx.prompts.video_cfg if video else None)
        unusable = (f"none of the {len(pairs)} pairs is usable by {c.loss} (no differing phrase between chosen and "
                    "rejected)")
        if start_step == 0 and not history and c.pairs:
            raise RecordError(str(path), "<file>", unusable,
                              "use pairs whose answers differ, or another preference.loss")
        ctx.progress.sync_weights()
        outputs = {"steps_done": start_step + len(history), "pairs": len(pairs)}
        if start_step == 0 and not history:
            print(f"veripo: preference: nothing to train: {unusable}; the policy goes on unchanged")
            outputs["not_trained"] = unusable
        if report.skipped:
            outputs.update(skipped_lines=report.skipped, skipped_errors=report.to_dict()["errors"])
        return outputs
