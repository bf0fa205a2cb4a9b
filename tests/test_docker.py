"""docker/: the compose file rendered by ``docker-compose config`` (no Docker engine needed), the two
Dockerfiles checked against pyproject.toml and the README, and the images' entrypoint run with a stand-in
``python``. No image is built here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
SERVICES = {"ray-head", "ray-worker", "driver"}


def _compose_bin() -> str:
    found = shutil.which("docker-compose")
    if found is None and os.path.exists("/usr/bin/docker-compose"):
        found = "/usr/bin/docker-compose"
    if found is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose); "
                    "the compose file is validated with `docker-compose config`")
    return found


def render(env: dict[str, str] | None = None, env_file: Path | None = None) -> dict:
    """``docker-compose config`` of docker/docker-compose.yml, parsed; only ``env`` is in the environment."""
    cmd = [_compose_bin(), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    proc = subprocess.run([*cmd, "config"], check=False, cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def targets(service: dict) -> dict[str, str]:
    """Volume target -> source (a host path or a named volume)."""
    out = {}
    for v in service["volumes"]:
        if isinstance(v, dict):
            out[v["target"]] = v.get("source", "")
        else:
            src, dst = v.split(":")[:2]
            out[dst] = src
    return out


def env_file_values() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


# ----------------------------------------------------------------------------------------- compose


def test_compose_default_config():
    cfg = render()
    services = cfg["services"]
    assert set(services) == SERVICES

    head, worker, driver = services["ray-head"], services["ray-worker"], services["driver"]
    assert head["command"].split() == [
        "ray", "start", "--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0",
        "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
    assert worker["command"].split() == [
        "ray", "start", "--address=ray-head:6379", "--block", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
    assert shlex.split(driver["command"]) == [
        "python", "-m", "veripo.run", "recipe=smollm2_cpu", "ray.address=ray-head:6379", "output_dir=/runs"]

    assert worker["deploy"]["replicas"] == 1
    assert driver["environment"]["VERIPO_RAY_WAIT_WORKERS"] == "1"  # the driver waits for the replicas
    assert driver["environment"]["VERIPO_RAY_JOIN"] == "ray-head:6379"
    assert head["healthcheck"]["test"] == ["CMD", "ray", "status"]
    for name in ("ray-worker", "driver"):
        assert services[name]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    ports = [p if isinstance(p, dict) else {"target": str(p).rsplit(":", 1)[-1]} for p in head["ports"]]
    assert any(int(p["target"]) == 8265 for p in ports)

    for name, svc in services.items():
        assert svc["image"] == "veripo:cpu", name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu", name
        assert Path(svc["build"]["context"]).resolve() == ROOT, name
        assert svc["runtime"] == "runc", name
        assert svc["shm_size"] == "8gb", name
        vols = targets(svc)
        assert Path(vols["/runs"]).resolve() == ROOT / "runs", name
        assert Path(vols["/data"]).resolve() == ROOT / "data", name
        assert vols["/cache/veripo"] == "veripo-cache" and vols["/cache/huggingface"] == "hf-cache", name
        env = svc["environment"]
        assert env["VERIPO_CACHE"] == "/cache/veripo" and env["HF_HOME"] == "/cache/huggingface", name
        assert env["RAY_AUTH_MODE"] == "disabled", name
    assert set(cfg["volumes"]) == {"veripo-cache", "hf-cache"}


def test_compose_overrides():
    cfg = render({
        "RAY_WORKERS": "3",
        "RECIPE": "qwen2_5_vl_7b_veripo",
        "EXTRA_ARGS": 'grpo.steps=2 "data.system_prompt=Be brief."',
        "VERIPO_IMAGE": "veripo:gpu",
        "DOCKERFILE": "Dockerfile",
        "DOCKER_RUNTIME": "nvidia",
        "HEAD_GPU_DEVICES": "0,1,2,3",
        "WORKER_GPU_DEVICES": "4,5,6,7",
        "RAY_HEAD_CPUS": "32",
        "RAY_HEAD_GPUS": "4",
        "RAY_WORKER_GPUS": "4",
        "SHM_SIZE": "64gb",
        "RUNS_DIR": "/srv/veripo-runs",
    })
    services = cfg["services"]
    head, worker, driver = services["ray-head"], services["ray-worker"], services["driver"]
    assert worker["deploy"]["replicas"] == 3
    assert driver["environment"]["VERIPO_RAY_WAIT_WORKERS"] == "3"
    assert shlex.split(driver["command"]) == [
        "python", "-m", "veripo.run", "recipe=qwen2_5_vl_7b_veripo", "ray.address=ray-head:6379", "output_dir=/runs",
        "grpo.steps=2", "data.system_prompt=Be brief."]
    assert "--num-cpus=32" in head["command"].split() and "--num-gpus=4" in head["command"].split()
    assert "--num-gpus=4" in worker["command"].split()
    assert head["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert driver["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert worker["environment"]["NVIDIA_VISIBLE_DEVICES"] == "4,5,6,7"
    for name, svc in services.items():
        assert svc["image"] == "veripo:gpu", name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        assert svc["runtime"] == "nvidia", name
        assert svc["shm_size"] == "64gb", name
        assert targets(svc)["/runs"] == "/srv/veripo-runs", name


def test_driver_command_is_accepted_by_veripo_run():
    """The driver's arguments pass veripo.run's own checks and Hydra's command-line parser."""
    from hydra._internal.utils import get_args_parser

    from veripo.run import _rewrite_argv, check_override_keys

    argv = shlex.split(render()["services"]["driver"]["command"])
    assert argv[:3] == ["python", "-m", "veripo.run"]
    rewritten = _rewrite_argv(argv[3:])
    check_override_keys("smollm2_cpu", rewritten)
    try:
        args = get_args_parser().parse_args(rewritten)
    except SystemExit:
        pytest.fail(f"Hydra rejects the driver's command line as veripo.run rewrites it: {rewritten}")
    assert args.config_name == "smollm2_cpu"
    assert {"ray.address=ray-head:6379", "output_dir=/runs"} <= set(args.overrides)


def test_compose_zero_workers_is_valid():
    cfg = render({"RAY_WORKERS": "0"})
    assert cfg["services"]["ray-worker"]["deploy"]["replicas"] == 0
    assert cfg["services"]["driver"]["environment"]["VERIPO_RAY_WAIT_WORKERS"] == "0"


def test_env_file_holds_the_compose_defaults(tmp_path):
    """docker/.env repeats the compose file's ${VAR:-default}s: rendering with it equals rendering without."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    assert render() == render(env_file=empty)

    text = "\n".join(line.split("#", 1)[0] for line in COMPOSE_FILE.read_text().splitlines())
    used = set(re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", text))
    assert used == set(env_file_values()), "docker/.env and docker-compose.yml name different variables"
    defaults = dict(re.findall(r"\$\{(\w+):-([^}]*)\}", text))
    assert set(defaults) == used, "every variable of the compose file has a default"
    assert defaults == env_file_values()


# ----------------------------------------------------------------------------------------- Dockerfiles


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def torch_pin() -> str:
    pins = [d for d in pyproject()["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, pins
    return pins[0].replace(" ", "")


def logical_lines(path: Path) -> list[str]:
    """Dockerfile instructions with their line continuations joined."""
    return [" ".join(line.split()) for line in path.read_text().replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def instruction(path: Path, name: str) -> list[str]:
    return [line[len(name) + 1:] for line in logical_lines(path) if line.startswith(name + " ")]


def readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(marker, 1)[1].split("```", 2)[1]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_common(name):
    path = DOCKER / name
    assert instruction(path, "WORKDIR") == ["/workspace/veripo"]
    assert instruction(path, "ENTRYPOINT") == ['["/bin/sh", "/workspace/veripo/docker/entrypoint.sh"]']
    assert instruction(path, "CMD") == ['["python", "-m", "veripo.run", "output_dir=/runs"]']
    volumes = " ".join(instruction(path, "VOLUME"))
    for target in ("/runs", "/cache/veripo", "/cache/huggingface"):
        assert f'"{target}"' in volumes
    env = " ".join(instruction(path, "ENV"))
    assert "VERIPO_CACHE=/cache/veripo" in env and "HF_HOME=/cache/huggingface" in env
    # every COPY source exists, so the build cannot fail on a missing path
    for copy in instruction(path, "COPY"):
        for src in copy.split()[:-1]:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path in the repository"
    # torch, wherever named, carries pyproject.toml's pin
    for spec in re.findall(r"\btorch==[\w.+]+", path.read_text()):
        assert spec == torch_pin() or spec.startswith(torch_pin() + "+"), spec


def test_dockerfile_cpu_installs_as_the_readme():
    path = DOCKER / "Dockerfile.cpu"
    assert instruction(path, "FROM") == ["python:3.11-slim"]
    install = [line for line in readme_block("<!-- ci:run -->") if line.startswith("pip install")]
    assert len(install) == 1, install
    assert f"RUN {install[0]}" in logical_lines(path), f"Dockerfile.cpu does not run the README's install: {install[0]}"
    assert "uninstall -y torchaudio torchcodec" in install[0]


def test_dockerfile_gpu():
    path = DOCKER / "Dockerfile"
    text = " ".join(logical_lines(path))
    assert instruction(path, "FROM") == ["${BASE_IMAGE}"]
    base = [a for a in instruction(path, "ARG") if a.startswith("BASE_IMAGE=")]
    assert base and base[0].startswith("BASE_IMAGE=nvidia/cuda:") and "devel" in base[0]
    assert f"pip install {torch_pin()}" in text
    assert "pip install --no-build-isolation -r /tmp/flash-attn.txt" in text
    assert 'pip install --no-build-isolation -e ".[gpu]"' in text
    assert "MAX_JOBS=${MAX_JOBS}" in text and any(a.startswith("MAX_JOBS=") for a in instruction(path, "ARG"))
    assert "python3.12" in text


def test_dockerfile_gpu_requirements_split(tmp_path):
    """Run the Dockerfile's pyproject reader: the gpu layer installs every dependency, flash-attn apart."""
    run = [line for line in instruction(DOCKER / "Dockerfile", "RUN") if line.startswith('python -c "import tomllib')]
    assert len(run) == 1
    script = run[0].split(" && ")[0].replace("/tmp/", f"{tmp_path}/")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` is this one
    subprocess.run(["sh", "-c", script], cwd=tmp_path, check=True, env={**os.environ, "PATH": path})
    reqs = (tmp_path / "requirements.txt").read_text().splitlines()
    flash = (tmp_path / "flash-attn.txt").read_text().splitlines()
    project = pyproject()
    wanted = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert sorted(reqs + flash) == sorted(wanted)
    assert flash == [d for d in wanted if d.startswith("flash-attn")] and len(flash) == 1
    assert torch_pin() in reqs


# ----------------------------------------------------------------------------------------- entrypoint


def run_entrypoint(tmp_path, *args: str, **env: str) -> str:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text('#!/bin/sh\nprintf "%s|" python "$@"\n')
    (stub / "python").chmod(0o755)
    proc = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], check=False, capture_output=True, text=True,
                          timeout=60, env={"PATH": f"{stub}:/usr/bin:/bin", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_entrypoint_syntax():
    subprocess.run(["sh", "-n", str(DOCKER / "entrypoint.sh")], check=True)


def test_entrypoint_routes_arguments(tmp_path):
    assert run_entrypoint(tmp_path, "python", "-m", "veripo.run", "output_dir=/runs") == \
        "python|-m|veripo.run|output_dir=/runs|"  # the image's CMD, as it is
    assert run_entrypoint(tmp_path, "grpo.steps=2", "recipe=smollm2_cpu") == \
        "python|-m|veripo.run|grpo.steps=2|recipe=smollm2_cpu|output_dir=/runs|"
    assert run_entrypoint(tmp_path, "output_dir=/elsewhere", "grpo.steps=2") == \
        "python|-m|veripo.run|output_dir=/elsewhere|grpo.steps=2|"
    assert run_entrypoint(tmp_path, "-m", "preference.loss=sigmoid,rrpo") == \
        "python|-m|veripo.run|-m|preference.loss=sigmoid,rrpo|output_dir=/runs|"
    assert run_entrypoint(tmp_path, "grpo.steps=2", VERIPO_OUTPUT_DIR="/out") == \
        "python|-m|veripo.run|grpo.steps=2|output_dir=/out|"
    assert run_entrypoint(tmp_path, "echo", "a=b") == "a=b\n"  # not an override: runs as given
