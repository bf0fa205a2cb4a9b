"""Checks of what a run needs that exists before it starts, run by ``python -m veripo.run`` once the recipe
is valid and before any worker starts or model loads (so a bad input fails in seconds, not after SFT).

    from veripo.preflight import preflight
    preflight(run_cfg)        # PreflightError (a UserError) naming the key, the file or URL, and the fix

- the stage list: ``preference`` needs pairs, from ``preference.pairs`` or a ``verify`` stage before it;
- input files (``data.train``, ``data.test``, ``preference.pairs``): exist, are files, readable, not empty,
  and parse with the public loaders (`veripo.data.load_records`, `veripo.data.pairs.load_pair_file`) into
  at least one record;
- an OpenAI-compatible judge (``verify.judge=openai``, used by ``verify`` and by ``eval`` with
  ``eval.judge``): ``GET {base_url}/models`` answers within `ENDPOINT_TIMEOUT_S` with JSON, accepts the key
  (read from ``$verify.api_key_env``) and serves ``verify.judge_model`` when it lists models. Messages name
  the URL and the fix; they never hold the key or the response body.

Each check is a function of `RunConfig`; `preflight` runs them in that order and raises the first error.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from veripo.config import RunConfig
from veripo.errors import UserError

ENDPOINT_TIMEOUT_S = 5.0


class PreflightError(UserError, ValueError):
    """An input of the run is missing, unreadable, empty or unreachable; the message names it and the fix."""


def preflight(cfg: RunConfig) -> None:
    """Run every check; the first failure raises `PreflightError` (or the loader's own `UserError`)."""
    check_stage_inputs(cfg)
    check_input_files(cfg)
    check_judge_endpoint(cfg)


def check_stage_inputs(cfg: RunConfig) -> None:
    """``preference`` with no pair source: neither ``preference.pairs`` nor a ``verify`` stage before it."""
    if "preference" in cfg.stages and not cfg.preference.pairs and "verify" not in cfg.stages:
        raise PreflightError(
            f"preference.pairs: stages={list(cfg.stages)} has a preference stage but nothing gives it pairs "
            "(preference.pairs is null and no verify stage comes before it). Fix: set preference.pairs=PATH "
            "(a verifier or LLaVA-Hound-style pair JSONL), or add grpo and verify before preference in stages")


def _readable_file(path_str: str, key: str) -> Path:
    path = Path(path_str).expanduser()
    if not path.exists():
        raise PreflightError(f"{key}={path_str}: no such file (looked in {path.resolve().parent}). Fix: correct "
                             f"{key}; a relative path is read from the folder veripo runs in")
    if not path.is_file():
        raise PreflightError(f"{key}={path_str}: not a file. Fix: point {key} at a JSONL file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            while head and not head.strip():
                more = f.read(1 << 16)
                if not more:
                    break
                head = more
    except OSError as e:
        raise PreflightError(f"{key}={path_str}: cannot read it ({e.strerror or e}). Fix: check the file's "
                             "permissions") from None
    if not head.strip():
        raise PreflightError(f"{key}={path_str}: the file is empty. Fix: point {key} at a file with records")
    return path


def check_input_files(cfg: RunConfig) -> None:
    """Each input file the run reads exists, is readable, holds records and parses."""
    from veripo.data import LoadReport, load_records

    skip = cfg.data.skip_bad  # as the run will read them: bad lines skipped (and counted) under data.skip_bad
    for key, value in (("data.train", cfg.data.train), ("data.test", cfg.data.test)):
        if not value:
            continue
        path = _readable_file(value, key)
        report = LoadReport()
        records = _load(key, path, lambda p: load_records(p, skip_bad=skip, report=report))
        if not records:
            raise PreflightError(f"{key}={value}: no usable records ({report.summary(1) or 'no records'}). "
                                 f"Fix: check {key}")
    if "preference" in cfg.stages and cfg.preference.pairs:
        path = _readable_file(cfg.preference.pairs, "preference.pairs")
        from veripo.data.pairs import load_pair_file  # imports torch: only when a pair file is given

        report = LoadReport()
        pairs = _load("preference.pairs", path, lambda p: load_pair_file(p, skip_bad=skip, report=report))
        if not pairs:
            raise PreflightError(f"preference.pairs={cfg.preference.pairs}: no usable pairs in the file "
                                 f"({report.summary(1) or 'no pairs'}). Fix: point preference.pairs at a file of pairs")


def _load(key: str, path: Path, loader):
    try:
        return loader(path)
    except UserError:
        raise  # the loader's message names file:line and the fix
    except UnicodeDecodeError as e:
        raise PreflightError(f"{key}={path}: not UTF-8 text (byte {e.start}: {e.reason}). Fix: save the file as "
                             "UTF-8") from None
    except (OSError, ValueError) as e:
        raise PreflightError(f"{key}={path}: cannot be read as records ({e}). Fix: check {key}") from None


def _judge_used(cfg: RunConfig) -> bool:
    return cfg.verify.judge == "openai" and ("verify" in cfg.stages or ("eval" in cfg.stages and cfg.eval.judge))


def _shown(url: str) -> str:
    """`url` without any user:password part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def check_judge_endpoint(cfg: RunConfig, timeout: float = ENDPOINT_TIMEOUT_S) -> None:
    """``GET {verify.base_url}/models``: the judge endpoint answers, takes the key, and serves the model."""
    if not _judge_used(cfg):
        return
    v = cfg.verify
    url = v.base_url.rstrip("/") + "/models"
    shown = _shown(url)
    key_env = v.api_key_env
    headers = {"Accept": "application/json"}
    if os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    where = f"verify.base_url={_shown(v.base_url)}: the judge endpoint"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in (401, 403):
            have = "is set" if os.environ.get(key_env) else "is not set"
            raise PreflightError(f"{where} refused the API key (HTTP {e.code} from GET {shown}; ${key_env} {have}). "
                                 f"Fix: export {key_env}=<the server's key>, or set verify.api_key_env to the "
                                 "variable that holds it") from None
        if e.code == 404:
            raise PreflightError(f"{where} has no models list (HTTP 404 from GET {shown}). Fix: base_url must end "
                                 "where the OpenAI API starts, usually with /v1 (e.g. http://127.0.0.1:8000/v1)"
                                 ) from None
        raise PreflightError(f"{where} answered HTTP {e.code} to GET {shown}. Fix: check that the server is an "
                             "OpenAI-compatible endpoint and healthy, and verify.base_url") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise PreflightError(f"{where} did not answer GET {shown} ({reason}). Fix: start the server (e.g. `vllm "
                             "serve MODEL --port 8000`) or correct verify.base_url; this is checked before any "
                             "model loads") from None
    try:
        listing = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        kind = "HTML" if b"<html" in body[:2048].lower() or "html" in ctype else f"{ctype or 'non-JSON'} text"
        raise PreflightError(f"{where} answered {kind}, not JSON, to GET {shown} (the body is not shown). Fix: "
                             "verify.base_url must be the OpenAI-compatible API root, usually ending in /v1") from None
    served = []
    if isinstance(listing, dict) and isinstance(listing.get("data"), list):
        served = [m.get("id") for m in listing["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if served and v.judge_model not in served:
        raise PreflightError(f"verify.judge_model={v.judge_model}: not served at {_shown(v.base_url)} (it serves "
                             f"{', '.join(served[:10])}). Fix: set verify.judge_model to one of them")
