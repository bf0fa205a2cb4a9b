"""Model sources: the embedded default, HF folders and hub ids, and tiny test models."""

from veripo.models.loading import (EMBEDDED_MODELS, cache_dir, materialize_atomically, materialize_embedded,
                                   resolve_model)
from veripo.models.tiny import build_tiny_qwen2_5_vl

__all__ = ["EMBEDDED_MODELS", "build_tiny_qwen2_5_vl", "cache_dir", "materialize_atomically",
           "materialize_embedded", "resolve_model"]
