"""veripo as a normal (non-editable) package: the wheel built from this checkout carries every recipe as
package data, and, installed into a fresh virtualenv and run from a folder outside the checkout,
``python -m veripo.run`` composes each shipped recipe into the same typed config the checkout does;
``--recipe-dir`` and ``$VERIPO_RECIPES`` pick another folder (the option first).

The virtualenv sees the test interpreter's packages (torch, Hydra, ...) but not its editable install of
this checkout, so ``import veripo`` there can only find the wheel's copy.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from veripo.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_RECIPES = ROOT / "veripo" / "recipes"
RECIPES = sorted(p.stem for p in CHECKOUT_RECIPES.glob("*.yaml"))
VERIPO_DATA = "/datasets/video-r1"  # the GPU recipes' ${oc.env:VERIPO_DATA,data}

# Run by the venv's python (from a folder outside the checkout): where veripo comes from, and every recipe
# of the recipe folder veripo.run picks, composed by Hydra, resolved and validated into RunConfig.
COMPOSE_ALL = r"""
import dataclasses, json, sys
import veripo, verifier
from veripo.run import recipes_dir
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from veripo.config import RunConfig

folder = recipes_dir()
out = {"veripo": veripo.__file__, "verifier": verifier.__file__, "folder": str(folder), "recipes": {}}
for path in sorted(folder.glob("*.yaml")):
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        cfg = compose(config_name=path.stem)
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    data.pop("hydra", None)
    out["recipes"][path.stem] = {"composed": data, "run": dataclasses.asdict(RunConfig.from_dict(data))}
print(json.dumps(out, default=str))
"""

CUSTOM_RECIPE = """\
# one self-contained file, no defaults list
name: {name}
stages: [grpo, eval]
grpo:
  steps: {steps}
  group_size: 4
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of the venv's commands: nothing that points back into the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VERIPO_RECIPES")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", VERIPO_DATA=VERIPO_DATA, **extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, \
        f"{proc.args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _build_isolation_needed() -> bool:
    """Build in this interpreter (fast, offline) when setuptools can build the wheel here: setuptools>=68
    as pyproject.toml asks, and either its own bdist_wheel (70.1+) or the wheel package."""
    if importlib.util.find_spec("setuptools") is None:
        return True
    version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2] if x.isdigit())
    return version < (68, 0) or (version < (70, 1) and importlib.util.find_spec("wheel") is None)


def _copy_sources(dest: Path) -> Path:
    """The files the build reads (pyproject.toml, its readme, the packages it finds), copied so that the
    build neither writes build/ and *.egg-info into the checkout nor picks up a stale build/lib there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    src = dest / "src"
    src.mkdir()
    for name in ["pyproject.toml", project["project"]["readme"], *(p.name for p in ROOT.glob("LICENSE*"))]:
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in sorted(ROOT.iterdir()):
        if (pkg / "__init__.py").is_file() and any(fnmatch.fnmatch(pkg.name, p) for p in include):
            shutil.copytree(pkg, src / pkg.name, ignore=skip)
    return src


@dataclasses.dataclass
class Installed:
    wheel: Path
    venv: Path
    python: Path
    outside: Path  # a folder outside the checkout: the commands' working folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("packaging")
    outside = tmp / "elsewhere"
    outside.mkdir()
    assert ROOT not in outside.resolve().parents

    # 1. the wheel, built from this checkout's sources with the running interpreter
    src, dist = _copy_sources(tmp), tmp / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)]
    if not _build_isolation_needed():
        build.insert(5, "--no-build-isolation")
    _ok(_run(build, cwd=outside))
    wheels = list(dist.glob("veripo-*.whl"))
    assert len(wheels) == 1, wheels

    # 2. a fresh virtualenv that sees this interpreter's packages. From a virtualenv, venv's
    #    --system-site-packages reaches only the base Python's, so the parent venv's site-packages are
    #    added by a .pth file of plain paths: its own .pth files (the editable install's finder of this
    #    checkout among them) are not run.
    venv = tmp / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=outside))
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_ok(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            cwd=outside)).stdout.strip())
    if sys.prefix != sys.base_prefix:
        (purelib / "_veripo_test_parent_env.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))

    # 3. the wheel into it, alone (--ignore-installed: never touch the parent's editable veripo)
    _ok(_run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
              str(wheels[0])], cwd=outside))
    return Installed(wheels[0], venv, python, outside)


def _in_venv(installed: Installed, path: str) -> bool:
    return installed.venv.resolve() in Path(path).resolve().parents


def _cli(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess:
    return _run([str(installed.python), "-m", "veripo.run", *args], cwd=installed.outside, timeout=120, **env)


def _printed(proc: subprocess.CompletedProcess) -> dict:
    """The config ``--cfg job --resolve`` printed, as a plain dict."""
    return OmegaConf.to_container(OmegaConf.create(_ok(proc).stdout))


def _checkout_config(name: str) -> tuple[dict, dict]:
    """The recipe composed from this checkout (as tests/test_recipes.py does): the dict, and RunConfig's."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CHECKOUT_RECIPES), version_base=None):
        cfg = compose(config_name=name)
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    data.pop("hydra", None)
    run = json.loads(json.dumps(dataclasses.asdict(RunConfig.from_dict(data)), default=str))
    return data, run


def test_the_wheel_ships_every_recipe_as_package_data(installed):
    shipped = {n for n in zipfile.ZipFile(installed.wheel).namelist() if n.startswith("veripo/recipes/")}
    expected = {f"veripo/{p.relative_to(ROOT / 'veripo').as_posix()}" for p in CHECKOUT_RECIPES.rglob("*.yaml")}
    assert "veripo/recipes/base/qwen2_5_vl.yaml" in expected and "veripo/recipes/smollm2_cpu.yaml" in expected
    assert shipped == expected
    assert "verifier/prompts/consistency.txt" in zipfile.ZipFile(installed.wheel).namelist()


def test_installed_veripo_composes_and_validates_every_shipped_recipe(installed, monkeypatch):
    got = json.loads(_ok(_run([str(installed.python), "-c", COMPOSE_ALL], cwd=installed.outside)).stdout)
    # (a) the venv's copy, not the checkout (which the parent interpreter has as an editable install)
    assert _in_venv(installed, got["veripo"]) and _in_venv(installed, got["verifier"]), got["veripo"]
    assert ROOT not in Path(got["veripo"]).resolve().parents
    assert _in_venv(installed, got["folder"]) and got["folder"].endswith(os.path.join("veripo", "recipes"))
    # (b) every recipe, composed there exactly as here
    assert sorted(got["recipes"]) == RECIPES and "smollm2_cpu" in RECIPES and len(RECIPES) > 1
    monkeypatch.setenv("VERIPO_DATA", VERIPO_DATA)
    for name, there in got["recipes"].items():
        data, run = _checkout_config(name)
        assert there["composed"] == data, name
        assert there["run"] == run, name
        assert there["run"]["name"] == name
        if name.startswith("qwen2_5_vl_"):
            size = name.split("_")[3].upper()
            assert there["run"]["model"]["path"] == f"Qwen/Qwen2.5-VL-{size}-Instruct"
            assert there["run"]["data"]["train"] == f"{VERIPO_DATA}/Video-R1-260k.json"  # oc.env resolved
    assert got["recipes"]["smollm2_cpu"]["run"]["model"]["path"] == "smollm2-135m-instruct"


def test_installed_cli_prints_recipes_from_any_folder(installed, monkeypatch):
    """The command line itself (every recipe went through Hydra above): the default, and a GPU recipe that
    pulls in base/ and reads VERIPO_DATA, with an override."""
    monkeypatch.setenv("VERIPO_DATA", VERIPO_DATA)
    default = _printed(_cli(installed, "--cfg", "job", "--resolve"))
    assert default == _checkout_config("smollm2_cpu")[0] and default["name"] == "smollm2_cpu"
    for name in ("smollm2_cpu", "qwen2_5_vl_7b_veripo"):
        printed = _printed(_cli(installed, f"recipe={name}", "grpo.steps=3", "--cfg", "job", "--resolve"))
        data = _checkout_config(name)[0]
        assert printed["grpo"]["steps"] == 3 and printed["name"] == name
        data["grpo"]["steps"] = 3
        assert printed == data, name
    bad = _cli(installed, "recipe=qwen2_5_vl_7b_veripo", "grpo.group_sise=8")  # the fast key check
    assert bad.returncode != 0 and "grpo.group_sise" in bad.stderr and "grpo.group_size" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.fixture()
def custom(installed) -> tuple[Path, Path]:
    """Two folders with a recipe `mine` each: one for --recipe-dir, one for VERIPO_RECIPES."""
    flag, env = installed.outside / "flag_recipes", installed.outside / "env_recipes"
    for folder, name, steps in ((flag, "from_flag", 5), (env, "from_env", 6)):
        folder.mkdir(exist_ok=True)
        (folder / "mine.yaml").write_text(CUSTOM_RECIPE.format(name=name, steps=steps))
    return flag, env


def test_recipe_dir_option_and_env_pick_the_folder(installed, custom):
    flag, env = custom
    # --recipe-dir DIR (relative to the working folder) and --recipe-dir=DIR, anywhere on the line
    for args in (["--recipe-dir", flag.name, "recipe=mine"], ["recipe=mine", f"--recipe-dir={flag}"]):
        cfg = _printed(_cli(installed, *args, "grpo.steps=7", "--cfg", "job"))
        assert (cfg["name"], cfg["grpo"]["steps"], cfg["grpo"]["group_size"]) == ("from_flag", 7, 4)
    # VERIPO_RECIPES alone, then with --recipe-dir, which wins
    cfg = _printed(_cli(installed, "recipe=mine", "--cfg", "job", VERIPO_RECIPES=str(env)))
    assert (cfg["name"], cfg["grpo"]["steps"]) == ("from_env", 6)
    cfg = _printed(_cli(installed, "--recipe-dir", str(flag), "recipe=mine", "--cfg", "job",
                        VERIPO_RECIPES=str(env)))
    assert (cfg["name"], cfg["grpo"]["steps"]) == ("from_flag", 5)
    # validated into RunConfig there, from the env's folder
    got = json.loads(_ok(_run([str(installed.python), "-c", COMPOSE_ALL], cwd=installed.outside,
                              VERIPO_RECIPES=env.name)).stdout)
    assert got["folder"] == str(env.resolve()) and list(got["recipes"]) == ["mine"]
    run = got["recipes"]["mine"]["run"]
    assert (run["name"], run["stages"], run["grpo"]["steps"], run["grpo"]["group_size"]) == \
        ("from_env", ["grpo", "eval"], 6, 4)
    # the fast unknown-key check reads the chosen folder
    bad = _cli(installed, "--recipe-dir", str(flag), "recipe=mine", "grpo.stepz=1")
    assert bad.returncode != 0 and "grpo.stepz: unknown key in recipe mine" in bad.stderr
    assert "Did you mean grpo.steps?" in bad.stderr and "Traceback" not in bad.stderr
    # a recipe the folder does not hold, and no recipe= (the default) in a folder without it
    for args in (["--recipe-dir", str(flag), "recipe=smollm2_cpu"], ["--recipe-dir", str(flag)]):
        proc = _cli(installed, *args, "--cfg", "job")
        assert proc.returncode != 0 and "smollm2_cpu" in proc.stderr and "mine" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_missing_recipe_folder_fails_in_one_line(installed, how):
    missing = installed.outside / "no_such_recipes"
    if how == "option":
        proc = _cli(installed, "--recipe-dir", "no_such_recipes", "--cfg", "job")
    else:
        proc = _cli(installed, "recipe=smollm2_cpu", "--cfg", "job", VERIPO_RECIPES=str(missing))
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"recipe folder {missing.resolve()} not found" in lines[0]
    assert "Fix:" in lines[0] and "--recipe-dir" in lines[0] and "VERIPO_RECIPES" in lines[0]
