"""The preference stage on the policy engine: every loss moves a toy pair the right way, micro-batch split
invariance, one step of every loss on SmolLM2 (checked against the value at policy == reference), a
Qwen2.5-VL video pair whose frames reach the loss, and the pair sources (external JSONL, verifier file,
RRPO perturbation on SmolLM2 captions, LeanPO)."""

import json
import math
import re

import pytest
import torch

from veripo.algos import PreferenceHParams
from veripo.data.rollouts import PreferencePair, RolloutError, write_pairs
from veripo.stages.preference import (PairEncoder, PreferenceConfig, PreferenceLossFn, attach_reference_logps,
                                      pair_batch, phrase_spans, run_preference_stage)
from veripo.train import PolicyEngine, TrainConfig

ALL = ["sigmoid", "robust", "cdpo", "ipo", "hinge", "rrpo", "leanpo", "simpo"]
LN2 = math.log(2.0)


def build_tiny_llama(out_dir, seed=0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("pref_llama"))


class IdsTokenizer:
    """The tokenizer side the stage needs for pairs that carry token ids (prompt given as ids too)."""

    pad_token_id, eos_token_id = 0, 1


class IdsEncoder(PairEncoder):
    def _prompt_ids(self, pair):
        return list(pair.extra["prompt_ids"])


def id_pair(i, prompt, chosen, rejected) -> PreferencePair:
    return PreferencePair(pair_id=f"p{i}", problem_id=str(i), type="penalty", prompt="q", chosen="", rejected="",
                          chosen_id=f"c{i}", rejected_id=f"r{i}", chosen_token_ids=tuple(chosen),
                          rejected_token_ids=tuple(rejected), extra={"prompt_ids": list(prompt)})


def encode(pairs, spans=True, min_match=1):
    enc = IdsEncoder(IdsTokenizer())
    out = [enc(p) for p in pairs]
    if spans:
        for e in out:
            e.spans = phrase_spans(*e.response_ids(), min_match=min_match)
    return out


def margin(engine, encoded) -> tuple[float, float]:
    """(sum, mean) of log p(chosen) - log p(rejected) over the pairs' response tokens."""
    batch = pair_batch(encoded, pad_id=0)
    lp = (engine.logprobs(batch) * batch.loss_mask).sum(-1)
    n = batch.loss_mask.sum(-1)
    return float((lp[0::2] - lp[1::2]).sum()), float((lp[0::2] / n[0::2] - lp[1::2] / n[1::2]).sum())


TOY = id_pair(0, [5, 6, 7], [10, 11, 12, 1], [10, 13, 14, 1])


@pytest.fixture
def ids_encoder(monkeypatch):
    monkeypatch.setattr("veripo.stages.preference.PairEncoder._prompt_ids", IdsEncoder._prompt_ids)


@pytest.mark.parametrize("loss", ALL)
def test_every_loss_raises_chosen_over_rejected_on_a_toy_pair(loss, tiny_llama, ids_encoder):
    engine = PolicyEngine(TrainConfig(lr=1e-2, micro_batch_size=2, grad_clip=None), tiny_llama)
    before = margin(engine, encode([TOY]))
    extra = {"label_smoothing": 0.1} if loss in ("robust", "cdpo", "leanpo") else {}
    cfg = PreferenceConfig(loss=loss, lr=1e-2, steps=4, batch_size=1, alpha=0.1, **extra)
    history = run_preference_stage(cfg, engine, [TOY], IdsTokenizer())
    after = margin(engine, encode([TOY]))
    assert len(history) == 4 and all(math.isfinite(h["loss"]) for h in history)
    assert after[0] > before[0] + 0.05 and after[1] > before[1] + 0.01, (loss, before, after)
    assert history[-1]["loss"] < history[0]["loss"], loss
    assert history[0]["rewards/accuracy"] in (0.0, 1.0) and "rewards/margin" in history[0]


def four_pairs():
    return [id_pair(0, [5, 6, 7], [10, 11, 12, 1], [10, 13, 14, 1]),
            id_pair(1, [8, 9], [20, 21, 22, 23, 24, 1], [20, 25, 23, 1]),
            id_pair(2, [5, 6, 7, 30, 31], [40, 1], [41, 42, 1]),
            id_pair(3, [9], [50, 51, 52, 53, 1], [50, 51, 54, 53, 55, 1])]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "rrpo", "leanpo"])
def test_micro_batch_split_invariance(loss, tiny_llama, tmp_path):
    ref_model = PolicyEngine(TrainConfig(), build_tiny_llama(tmp_path / "other", seed=1)).model.eval()
    results = []
    for mbs in (2, 4, 8):
        engine = PolicyEngine(TrainConfig(lr=1e-3, micro_batch_size=mbs, grad_clip=None), tiny_llama)
        encoded = encode(four_pairs())
        attach_reference_logps(engine, encoded, pad_id=0, batch_size=4)
        fn = PreferenceLossFn(loss, PreferenceHParams(beta=0.5, alpha=0.5, sft_weight=0.3), reference=ref_model)
        batch = pair_batch(encoded, 0, phrases=loss == "rrpo")
        if loss == "sigmoid":  # policy == reference: each pair costs ln 2 + 0.3 * NLL(y+); the step is their mean
            lp = engine.logprobs(batch)
            nll = -(lp * batch.loss_mask).sum(-1)[0::2] / batch.loss_mask.sum(-1)[0::2]
            expected = float((LN2 + 0.3 * nll).mean())
        m = engine.train_step(batch, fn)
        if loss == "sigmoid":
            assert m["loss"] == pytest.approx(expected, rel=1e-5)
        grads = torch.cat([p.grad.flatten() for p in engine.model.parameters()])
        results.append((m["loss"], grads))
    (l2, g2), (l4, g4), (l8, g8) = results
    assert l2 == pytest.approx(l4, rel=1e-6) and l2 == pytest.approx(l8, rel=1e-6)
    assert g2.abs().max() > 1e-4
    assert torch.allclose(g2, g4, atol=1e-6) and torch.allclose(g2, g8, atol=1e-6)


def test_a_micro_batch_that_splits_a_pair_is_refused(tiny_llama):
    engine = PolicyEngine(TrainConfig(micro_batch_size=3), tiny_llama)
    encoded = encode(four_pairs(), spans=False)
    attach_reference_logps(engine, encoded, pad_id=0, batch_size=4)
    with pytest.raises(ValueError, match="splits a preference pair.*micro_batch_size to an even number"):
        engine.train_step(pair_batch(encoded, 0), PreferenceLossFn("sigmoid", PreferenceHParams(beta=0.1)))


def test_rrpo_skips_pairs_without_a_differing_phrase(tiny_llama, ids_encoder):
    engine = PolicyEngine(TrainConfig(lr=1e-3, micro_batch_size=2), tiny_llama)
    same = id_pair(9, [5], [10, 11, 1], [10, 11, 1])
    insert_only = id_pair(8, [5], [10, 11, 1], [10, 99, 11, 1])
    seen = []
    history = run_preference_stage(PreferenceConfig(loss="rrpo", steps=1, batch_size=4), engine,
                                   [TOY, same, insert_only], IdsTokenizer(), metrics=lambda s, row: seen.append(row))
    assert history[0]["pairs_skipped_no_phrase"] == 2 and history[0]["pairs"] == 1 and history[0]["sequences"] == 2
    assert run_preference_stage(PreferenceConfig(loss="rrpo", steps=1), engine, [same], IdsTokenizer(),
                                metrics=lambda s, row: seen.append(row)) == []
    assert seen[-1]["steps"] == 0 and seen[-1]["pairs_skipped_no_phrase"] == 1


# -- SmolLM2: one step of every loss, at policy == reference -----------------------------------------
def test_one_step_of_every_loss_on_smollm2(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    pair = PreferencePair(pair_id="s0", problem_id="0", type="penalty", prompt="What colour is the circle?",
                          chosen="<think>It is red.</think><answer>red</answer>",
                          rejected="<think>It is blue.</think><answer>blue</answer>", chosen_id="c", rejected_id="r")
    engine = PolicyEngine(TrainConfig(lr=1e-6, micro_batch_size=2), smollm2_dir)
    # the reference is the policy at the stage's start, so the first step sees D = 0 (and zero token KL)
    at_start = {"sigmoid": LN2, "robust": LN2, "cdpo": LN2, "rrpo": LN2, "ipo": 1 / (4 * 0.1 ** 2), "hinge": 1.0}
    for loss in ALL:
        extra = {"label_smoothing": 0.2} if loss in ("robust", "cdpo") else {}
        h = run_preference_stage(PreferenceConfig(loss=loss, steps=1, batch_size=1, max_response_tokens=24, **extra),
                                 engine, [pair], tok)
        m = h[0]
        assert m["sequences"] == 2 and math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0, loss
        if loss in at_start:
            assert m["loss"] == pytest.approx(at_start[loss], abs=1e-4), loss
            assert abs(m["rewards/margin"]) < 1e-4, loss
        else:  # reference-free, from the rewards (beta * mean logp): LeanPO smooths mis-ranked pairs only
            D = m["rewards/margin"] / 2.0
            eps = 0.1 if (loss == "leanpo" and D < 0) else 0.0
            sp = lambda x: math.log1p(math.exp(-x))  # noqa: E731  (-log sigma)
            assert m["loss"] == pytest.approx((1 - eps) * sp(2 * D - 0.5) + eps * sp(-2 * D - 0.5), abs=1e-4), loss
    assert engine.step == len(ALL)


# -- Qwen2.5-VL: the video reaches the loss -----------------------------------------------------------
def test_video_pair_carries_its_frames(tiny_vlm_dir, synth_dir):
    from transformers import AutoProcessor

    from veripo.config import DataConfig, RunConfig
    from veripo.data import load_records
    from veripo.data.video import VideoConfig
    from veripo.stages.common import PromptBuilder

    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    rec = next(r for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video")
    prompts = PromptBuilder(proc.tokenizer, RunConfig(data=DataConfig(use_caption=False, use_video=True)))
    pair = PreferencePair(pair_id="v0", problem_id=rec.problem_id, type="penalty", prompt=rec.problem,
                          chosen="<think>it moves</think><answer>B</answer>",
                          rejected="<think>red</think><answer>C</answer>", chosen_id="c", rejected_id="r",
                          record=rec.to_dict())
    engine = PolicyEngine(TrainConfig(lr=1e-3, micro_batch_size=2), tiny_vlm_dir)
    batches = []

    class Spy:
        def __getattr__(self, name):
            return getattr(engine, name)

        def train_step(self, batch, fn):
            batches.append(batch)
            return engine.train_step(batch, fn)

    video_cfg = VideoConfig(fps=2.0, nframes=None, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28, max_frames=8)
    h = run_preference_stage(PreferenceConfig(loss="rrpo", steps=1, batch_size=1, alpha=0.5), Spy(), [pair],
                             proc.tokenizer, prompts, processor=proc, video_cfg=video_cfg,
                             reference=engine.model.__class__.from_pretrained(tiny_vlm_dir).eval())
    b = batches[0]
    assert b.videos_per_sample.tolist() == [1, 1] and b.pixel_values_videos.shape[0] > 0
    assert torch.equal(b.slice(0, 1).pixel_values_videos, b.slice(1, 2).pixel_values_videos)  # same clip, both rows
    assert h[0]["loss"] == pytest.approx(LN2, abs=1e-4)  # policy == reference: u = 0 and zero token KL
    visual = engine.base_model.model.visual.patch_embed.proj.weight
    assert visual.grad is not None and visual.grad.abs().sum() > 0  # the frames reached the loss


# -- pair sources ----------------------------------------------------------------------------------
def test_external_pairs_in_llava_hound_layout(tmp_path):
    from veripo.data import LoadReport
    from veripo.data.pairs import load_pair_file, read_external_pairs

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "v1.mp4").write_bytes(b"")
    good = {"id": "v1-0", "prompt": "<video>\nWhat happens?", "answer": "A dog runs.", "video": "clips/v1",
            "chosen": "A dog runs across the yard.", "rejected": "A cat sleeps.", "chosen_score": 5, "rejected_score": 2}
    path = tmp_path / "hound.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "v1-1", "question": "Why?"}) + "\n")
    pairs = read_external_pairs(path)
    assert [p.prompt for p in pairs] == ["What happens?", "What happens?"]  # prompt wins over question
    p = pairs[0]
    assert (p.type, p.chosen, p.rejected, p.chosen_score) == ("caption", good["chosen"], good["rejected"], 5.0)
    assert p.video_path == str(tmp_path / "clips" / "v1.mp4") and p.extra["answer"] == "A dog runs."
    assert [q.pair_id for q in load_pair_file(path)] == ["v1-0", "v1-1"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "rejected"}) + "\n")
    with pytest.raises(RolloutError, match=rf"{bad}:2:rejected: missing required field"):
        read_external_pairs(bad)
    bad.write_text(json.dumps({**good, "chosen": 3}) + "\n")
    with pytest.raises(RolloutError, match=rf"{bad}:1:chosen: must be a non-empty string"):
        read_external_pairs(bad)
    bad.write_text(json.dumps({**good, "chosen_score": "high"}) + "\n{not json\n")
    report = LoadReport()
    assert read_external_pairs(bad, skip_bad=True, report=report) == [] and report.skipped == 2

    verifier = tmp_path / "pairs.jsonl"
    write_pairs(verifier, [PreferencePair(pair_id="a", problem_id="1", type="penalty", prompt="q", chosen="x",
                                          rejected="y", chosen_id="r1", rejected_id="r2")])
    assert load_pair_file(verifier)[0].chosen_id == "r1"


def test_caption_and_frame_perturbations():
    from veripo.data.pairs import (augment_caption, augment_frames, mask_frames, perturb_caption, shuffle_frames,
                                   with_answer)

    cap = "A clip of 8 frames. " + " ".join(f"frame {i}: red circle ({i}, 4)." for i in range(8))
    masked = perturb_caption(cap, "mask", seed=3)
    assert masked.startswith("A clip of 8 frames.") and 2 <= masked.count("[not visible]") <= 4
    shuffled = perturb_caption(cap, "shuffle", seed=3)
    parse = lambda c: re.findall(r"frame (\d+): (.*?\.)(?= frame|$)", c)  # noqa: E731
    labels, contents = zip(*parse(shuffled))
    assert list(labels) == [str(i) for i in range(8)]  # labels keep their order ...
    assert list(contents) != [c for _, c in parse(cap)] and sorted(contents) == sorted(c for _, c in parse(cap))
    assert 6 <= augment_caption(cap, seed=1).count("frame ") <= 7
    frames = torch.rand(8, 3, 16, 16) * 255
    hidden = (mask_frames(frames, seed=0).flatten(1).abs().sum(-1) == 0).sum()
    assert 2 <= hidden <= 4
    sh = shuffle_frames(frames, seed=0)
    assert not torch.equal(sh, frames) and torch.equal(sh.sort(0).values, frames.sort(0).values)
    aug = augment_frames(frames, seed=0)
    assert aug.shape == frames.shape and aug.min() >= 0 and aug.max() <= 255 and not torch.equal(aug, frames)
    assert with_answer("<think>x</think><answer>A</answer>", "B") == "<think>x</think><answer>B</answer>"
    assert with_answer("no tags", "B") == "<answer>B</answer>"


def test_rrpo_perturbation_pairs_on_smollm2_captions(smollm2_dir, synth_dir):
    from transformers import AutoTokenizer

    from veripo.config import RunConfig
    from veripo.data import load_records
    from veripo.data.pairs import rrpo_perturbation_pairs
    from veripo.rewards import accuracy_reward
    from veripo.rollout import RolloutConfig, SamplingConfig, build_engine
    from veripo.stages.common import PromptBuilder

    recs = [r for r in load_records(f"{synth_dir}/train.jsonl") if r.problem_type == "multiple choice"][:2]
    prompts = PromptBuilder(AutoTokenizer.from_pretrained(smollm2_dir), RunConfig())
    engine = build_engine(RolloutConfig(backend="hf", dtype="float32"), smollm2_dir)
    stats = {}
    pairs = rrpo_perturbation_pairs(engine, recs, prompts, n=2, stats=stats,
                                    sampling=SamplingConfig(temperature=1.0, max_tokens=16, seed=0))
    assert stats["prompts"] == 2 and stats["samples"] == 4 and len(pairs) >= 1
    by_id = {r.problem_id: r for r in recs}
    for p in pairs:
        rec = by_id[p.problem_id]
        assert accuracy_reward(p.rejected, rec.solution, rec.problem_type) < 0.5
        assert accuracy_reward(p.chosen, rec.solution, rec.problem_type) == 1.0
        assert p.record == rec.to_dict() and p.extra["source"] == "rrpo-perturbation"  # trains on the clean prompt


class ScriptedEngine:
    """A RolloutEngine double that records requests and answers from a script (LeanPO's control flow)."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, requests, sampling, n=1):
        from veripo.rollout import Sample

        self.calls.append((requests, sampling))
        texts = self.script[len(self.calls) - 1]
        return [[Sample(str(i), 0, [1], t, "stop", [], [])] for i, t in enumerate(texts)]


def test_leanpo_pairs_hint_reflection_and_hot_rejected(smollm2_dir, synth_dir):
    from transformers import AutoTokenizer

    from veripo.config import RunConfig
    from veripo.data import load_records
    from veripo.data.pairs import leanpo_pairs
    from veripo.stages.common import PromptBuilder

    recs = [r for r in load_records(f"{synth_dir}/train.jsonl") if r.problem_type == "multiple choice"][:3]
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = PromptBuilder(tok, RunConfig())
    a = [r.answer for r in recs]
    wrong = [next(x for x in "ABCD" if x != ans) for ans in a]
    engine = ScriptedEngine([
        [f"<answer>{a[0]}</answer>", f"<answer>{wrong[1]}</answer>", f"<answer>{wrong[2]}</answer>"],  # hinted
        [f"<think>re-checked</think><answer>{a[0]}</answer>", f"<answer>{a[1]}</answer>", "no idea"],  # reflected
        [f"<answer>{wrong[0]}</answer>", "hot sample 1", "hot sample 2"],                              # T = 1.2
    ])
    stats = {}
    pairs = leanpo_pairs(engine, recs, prompts, stats=stats)
    hinted, _ = engine.calls[0]
    assert f"reference answer is {a[0]}" in tok.decode(hinted[0].prompt_token_ids)
    reflected, greedy = engine.calls[1]
    text = tok.decode(reflected[0].prompt_token_ids)
    assert "Reflect on your response" in text and f"<answer>{a[0]}</answer>" in text and greedy.temperature == 0
    hot_reqs, hot = engine.calls[2]
    hot_text = tok.decode(hot_reqs[0].prompt_token_ids)
    assert hot.temperature == 1.2 and "reference answer" not in hot_text and "frame" in hot_text
    assert hot_text.count("frame ") < tok.decode(hinted[0].prompt_token_ids).count("frame ")  # augmented caption
    assert [p.chosen for p in pairs] == [f"<think>re-checked</think><answer>{a[0]}</answer>", f"<answer>{a[1]}</answer>"]
    assert [p.extra["chosen_from"] for p in pairs] == ["reflection", "reflection"]
    assert stats == {"prompts": 3, "pairs": 2, "reflected": 2, "no_correct": 1}
