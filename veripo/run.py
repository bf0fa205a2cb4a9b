"""Entry point: ``python -m veripo.run [--recipe-dir DIR] [recipe=NAME] [key=value ...]`` (``-m`` for
Hydra multirun).

Composes ``NAME.yaml`` (default ``smollm2_cpu``) from the recipe folder with the overrides, validates it into
a typed `RunConfig` before any model loads, and runs `Loop.fit()`. An unknown key fails at once with
Hydra's message naming it; a bad value fails with the key and the allowed values.

The recipe folder is ``--recipe-dir DIR`` if given, else ``$VERIPO_RECIPES``, else the recipes that ship
inside the package (``veripo/recipes/``, package data of the wheel), so an installed veripo runs from any
folder.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from veripo import compat
from veripo.config import ConfigError, RunConfig
from veripo.entry import debug, user_errors

DEFAULT_RECIPE = "smollm2_cpu"
RECIPES_ENV = "VERIPO_RECIPES"
RECIPE_DIR_OPTION = "--recipe-dir"
PACKAGE_RECIPES = Path(__file__).resolve().parent / "recipes"

# The folder given by --recipe-dir on the command line _rewrite_argv last read (None: not given).
_cli_recipe_dir: str | None = None


def recipes_dir() -> Path:
    """The recipe folder, as an absolute path: ``--recipe-dir DIR``, else ``$VERIPO_RECIPES``, else the
    package's own ``veripo/recipes/``. A missing folder exits with one line naming it and the fix."""
    env = os.environ.get(RECIPES_ENV)
    if _cli_recipe_dir is not None:
        given, source = _cli_recipe_dir, f"{RECIPE_DIR_OPTION} {_cli_recipe_dir}"
    elif env:
        given, source = env, f"{RECIPES_ENV}={env}"
    else:
        given, source = str(PACKAGE_RECIPES), None
    # absolute: Hydra resolves a relative config_path against veripo/run.py, not the working folder
    path = Path(given).expanduser().resolve()
    if not path.is_dir():
        if source is None:
            raise SystemExit(f"veripo: recipe folder {path} not found (the recipes shipped with the package). "
                             f"Fix: reinstall veripo (its wheel ships veripo/recipes/), or pass "
                             f"{RECIPE_DIR_OPTION} DIR or set {RECIPES_ENV}=DIR to a folder of recipes")
        raise SystemExit(f"veripo: recipe folder {path} not found (from {source}). "
                         f"Fix: point {RECIPE_DIR_OPTION} / {RECIPES_ENV} at a folder of recipe .yaml files, "
                         f"or leave both unset for the recipes shipped with veripo")
    return path


def _take_recipe_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """Take ``--recipe-dir DIR`` / ``--recipe-dir=DIR`` out of argv (Hydra does not know it); the last wins."""
    out, folder, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == RECIPE_DIR_OPTION:
            if i + 1 >= len(argv) or not argv[i + 1] or argv[i + 1].startswith("-"):
                raise SystemExit(f"veripo: {RECIPE_DIR_OPTION} needs a folder. Fix: {RECIPE_DIR_OPTION} DIR")
            folder, i = argv[i + 1], i + 2
            continue
        if arg.startswith(RECIPE_DIR_OPTION + "="):
            folder = arg.split("=", 1)[1]
            if not folder:
                raise SystemExit(f"veripo: {RECIPE_DIR_OPTION}= needs a folder. Fix: {RECIPE_DIR_OPTION}=DIR")
        else:
            out.append(arg)
        i += 1
    return out, folder


def _rewrite_argv(argv: list[str]) -> list[str]:
    """``recipe=NAME`` selects the recipe file (Hydra's --config-name); ``--recipe-dir DIR`` the folder it is
    read from (before ``$VERIPO_RECIPES``); run folders are veripo's own."""
    global _cli_recipe_dir
    argv, _cli_recipe_dir = _take_recipe_dir(argv)
    out, recipe = [], None
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            out.append(arg)
    if recipe is not None:
        folder = recipes_dir()
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        if recipe not in known:
            raise SystemExit(f"veripo: recipe={recipe}: no such recipe in {folder}. "
                             f"Known recipes: {', '.join(known) or '(none)'}")
        out.insert(0, f"--config-name={recipe}")
    # Hydra's own output folder would duplicate veripo's run folder: keep Hydra quiet and in place.
    for default in ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none",
                    "hydra/hydra_logging=none"):
        if not any(a.split("=")[0] == default.split("=")[0] for a in out):
            out.append(default)
    # Hydra's parser takes options (--config-name, -m, --cfg job) only before the first override
    options, overrides, i = [], [], 0
    while i < len(out):
        arg = out[i]
        if arg in _VALUE_OPTIONS and i + 1 < len(out):
            options += out[i:i + 2]
            i += 2
            continue
        (options if arg.startswith("-") else overrides).append(arg)
        i += 1
    return options + overrides


_VALUE_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                  "--config-dir", "-cd", "--experimental-rerun", "--info", "-i", "--shell-completion", "-sc"}


def check_override_keys(recipe: str, overrides: list[str]) -> None:
    """Fail fast, before Hydra and any import of torch, on an override key the recipe does not have,
    naming it, the closest known keys and the section's keys."""
    from omegaconf import OmegaConf

    folder = recipes_dir()
    path = folder / f"{recipe}.yaml"
    if not path.is_file():  # e.g. the default recipe, with --recipe-dir / VERIPO_RECIPES naming another folder
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SystemExit(f"veripo: recipe {recipe}: no {recipe}.yaml in {folder}. "
                         f"Fix: pick one with recipe=NAME (known: {', '.join(known) or 'none'})")
    try:
        raw = OmegaConf.load(path)
        if not OmegaConf.is_dict(raw):
            raise SystemExit(f"veripo: recipe {path}: the file holds a {type(raw).__name__}, not a mapping of "
                             "sections. Fix: write it as `section:` blocks of `key: value` lines")
        if "defaults" in raw:  # composed from other files: let Hydra compose it (still no torch import)
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(config_dir=str(folder), version_base=None):
                raw = compose(config_name=recipe)
        conf = OmegaConf.to_container(raw)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - a broken recipe file: one message naming file:line:col
        message = recipe_error(e, path)
        if message is None:
            raise
        if debug():
            import traceback

            traceback.print_exc()
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in overrides:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):  # options and their values
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else "a syntax error"
            print(f"veripo: {arg}: not a valid override ({detail}). Fix: write key=value; quote a value holding "
                  "brackets, commas or spaces (key='[a, b]' in the shell: \"key=[a,b]\")", file=sys.stderr)
            raise SystemExit(2) from None
    for arg in overrides:
        if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        node, path = conf, []
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                section = ".".join(path) or "the recipe"
                known = sorted(node) if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, known, n=3)
                hint = f" Did you mean {', '.join('.'.join([*path, c]) for c in close)}?" if close else ""
                raise SystemExit(f"veripo: {key}: unknown key in recipe {recipe}.{hint} "
                                 f"Keys of {section}: {', '.join(known)}")
            node, path = node[part], [*path, part]


def recipe_error(exc: BaseException, path: Path) -> str | None:
    """One message for a recipe file YAML cannot read, ``FILE:LINE:COL: problem``, or None when `exc`
    (and its causes) is not a YAML error."""
    import yaml

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, yaml.YAMLError):
            break
        seen = seen.__cause__ or seen.__context__
    if not isinstance(seen, yaml.YAMLError):
        return None
    mark = getattr(seen, "problem_mark", None) or getattr(seen, "context_mark", None)
    where = str(path)
    if mark is not None:
        name = getattr(mark, "name", "") or ""
        where = f"{name if name and not name.startswith('<') else path}:{mark.line + 1}:{mark.column + 1}"
    problem = " ".join(str(p) for p in (getattr(seen, "context", None), getattr(seen, "problem", None)) if p)
    start = getattr(seen, "context_mark", None)
    opened = (f"; it started at line {start.line + 1}, column {start.column + 1}"
              if start is not None and mark is not None and start.line != mark.line else "")
    return (f"veripo: recipe {where}: not valid YAML ({problem or type(seen).__name__}{opened}). "
            "Fix: correct the YAML there (indent with spaces, `key: value`, close brackets and quotes)")


def task(cfg) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        print(f"veripo: {e.full_key}: the recipe leaves this value to you (???). Fix: add {e.full_key}=VALUE",
              file=sys.stderr)
        raise SystemExit(2) from None
    except OmegaConfBaseException as e:  # an interpolation that does not resolve (${oops}, ${oc.env:UNSET})
        key = getattr(e, "full_key", None) or "recipe"
        detail = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
        print(f"veripo: {key}: {detail}. Fix: correct the ${{...}} reference in {key} (or set the variable it "
              "reads)", file=sys.stderr)
        raise SystemExit(2) from None
    data.pop("hydra", None)
    try:
        run_cfg = RunConfig.from_dict(data)
    except ConfigError as e:
        print(f"veripo: bad recipe value: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with user_errors("veripo"):
        # inputs that exist before the run (stage list, files, the judge endpoint), before any model loads
        from veripo.preflight import preflight

        preflight(run_cfg)
        # the run folder (writable, manifest readable, no config drift on resume): torch-free too, so these
        # errors also come in well under 2 s; the loop opens it again (unchanged by then)
        from veripo.run_dir import open_run

        open_run(run_cfg)
        # veripo.loop imports torch and transformers (about 5 s): only once the recipe and inputs are valid,
        # and only after main() installed the torchvision shim transformers needs on a CPU machine.
        from veripo.loop import Loop

        Loop(run_cfg).fit()


def main() -> None:
    compat.install()  # first: the torchvision shim here, in vLLM's child processes and (runtime env) Ray workers
    import hydra

    argv = _rewrite_argv(sys.argv[1:])
    names = [a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")]
    check_override_keys(names[-1] if names else DEFAULT_RECIPE, argv)
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(recipes_dir()), config_name=DEFAULT_RECIPE, version_base=None)(task)()


if __name__ == "__main__":
    main()
