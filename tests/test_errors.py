"""User errors end as one line and exit 2 at every entry point; veripo's own bugs keep their traceback;
``VERIPO_DEBUG=1`` shows the traceback of user errors too (issue 16, item 10)."""

import os
import subprocess
import sys

import pytest

from veripo.config import ConfigError
from veripo.data.records import RecordError
from veripo.entry import user_error_of, user_errors
from veripo.errors import DEBUG_ENV


def test_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exc, user_errors("prog"):
        raise ConfigError("grpo.lr must be a finite number > 0, got -1.0", "grpo.lr")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "prog: grpo.lr must be a finite number > 0, got -1.0\n"


def test_debug_shows_the_traceback_too(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit), user_errors("prog"):
        raise RecordError("data.jsonl:3", "problem_type", "unknown type 'x'", "use one of ...")
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.splitlines()[-1].startswith("prog: data.jsonl:3")


def test_other_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError), user_errors("prog"):
        1 / 0  # noqa: B018 - a bug in veripo, not a user error


def test_a_user_error_from_a_ray_task_prints_its_cause(capsys, monkeypatch):
    from ray.exceptions import RayTaskError

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    cause = RecordError("pairs.jsonl:2", "chosen", "empty", "write the chosen response")
    wrapped = RayTaskError("PolicyWorker.train", "Traceback (most recent call last):\n  remote frames",
                           cause).as_instanceof_cause()
    assert user_error_of(wrapped) is cause
    with pytest.raises(SystemExit), user_errors("veripo"):
        raise wrapped
    err = capsys.readouterr().err
    assert err == f"veripo: {cause}\n" and "remote frames" not in err


def _cli(args, cwd, **env):
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=full)


def test_broken_recipe_yaml_is_one_message_with_file_line_col(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\ngrpo:\n  steps: 3\n   lr: 1e-5\n")
    proc = _cli(["-m", "veripo.run", "--recipe-dir", str(tmp_path), "recipe=broken"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"veripo: recipe {tmp_path / 'broken.yaml'}:4:") and "Fix:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_debug_env_shows_a_user_errors_traceback_on_the_command_line(tmp_path):
    plain = _cli(["-m", "veripo.run", "stages=[preference]", f"output_dir={tmp_path}"], tmp_path, VERIPO_DEBUG="")
    debug = _cli(["-m", "veripo.run", "stages=[preference]", f"output_dir={tmp_path}"], tmp_path, VERIPO_DEBUG="1")
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


@pytest.mark.parametrize("override, names", [
    ("grpo.lr=[1,", ["grpo.lr=[1,: not a valid override"]),
    ("grpo.lr=${oc.env:VERIPO_NO_SUCH_VAR}", ["grpo.lr:", "VERIPO_NO_SUCH_VAR"]),
])
def test_override_syntax_and_interpolation_errors_are_one_line(tmp_path, override, names):
    proc = _cli(["-m", "veripo.run", override, f"output_dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert all(n in proc.stderr for n in names), proc.stderr
