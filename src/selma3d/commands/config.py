"""Run configs: ``--config run.yaml`` in, ``RUN/config.yaml`` out, in the spelling of the flags.

A config file is a YAML mapping from a command's option names (the long flag without ``--``;
``max-steps`` and ``max_steps`` both work) to values. It is validated (pydantic, strict types)
against the command's own options, so a typo or a wrong type is one ``error:`` line naming the
file and the key, and then handed to click as the command's defaults (``default_map``): every
flag typed on the command line still wins, and a value of ``null`` means "the default".
Paths in the file mean what they mean on the command line (relative to the working folder).

The other way round, :func:`write_run_config` turns the settings a run records (pretrain's
``config.json``, finetune's ``run.json``, study's ``plan.json``) into ``RUN/config.yaml`` with
the same keys, so ``selma3d finetune --config RUN/config.yaml --out RUN2`` repeats a run.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

import typer

from ..errors import InputError
from ..utils.atomic import atomic_write

CONFIG_FILE = "config.yaml"
#: flags that never belong in a config file
NOT_CONFIGURABLE = ("--config", "--help")
#: options a written config leaves out: it describes the run, not where it lives or how it was called
NOT_RECORDED = ("out", "resume")

_Scalar = Union[str, int, float]
#: Python type accepted in YAML for each kind of option (strict: ``true`` is no integer)
_YAML_TYPES = {
    "int": Optional[int],
    "float": Optional[float],
    "bool": Optional[bool],
    "path": Optional[str],
    # text options also take numbers and lists: ``patch_size: [16, 32, 32]`` → "16,32,32"
    "str": Optional[Union[_Scalar, list[_Scalar]]],
    # repeatable key=value options take a mapping: ``model_option: {features: [4, 8, 16]}``
    "pairs": Optional[Union[dict[str, Any], list[str], str]],
    "paths": Optional[Union[list[str], str]],
}
_KIND_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "path": "a path",
    "str": "a text, a number or a list of them", "pairs": "a mapping of key: value (or a list of key=value)",
    "paths": "a path or a list of paths",
}


def config_option(command: str):
    """The ``--config FILE`` option of ``command``: eager, so its values are in place as defaults
    before click reads the other options."""
    return typer.Option(None, "--config", is_eager=True, callback=_load_into_context, metavar="RUN.yaml",
                        help=f"YAML file of {command} options (keys are the option names, e.g. batch_size: "
                             "4); options given on the command line override it. A run folder's "
                             f"{CONFIG_FILE} repeats that run.")


def _load_into_context(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]):
    if value is None or ctx.resilient_parsing:
        return value
    ctx.default_map = {**(ctx.default_map or {}), **load_config(value, ctx.command)}
    return value


# ----------------------------------------------------------------------------- the options

def _kind(param) -> str:
    """int | float | bool | str | path | pairs | paths, from typer's annotation (typer >= 0.29)
    or click's parameter type (older typer)."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is not None:
        base = getattr(annotation, "__args__", (annotation,))[0] if param.multiple else annotation
        name = {int: "int", float: "float", bool: "bool", Path: "path"}.get(base, "str")
    else:
        type_name = getattr(getattr(param, "type", None), "name", "text")
        name = {"integer": "int", "float": "float", "boolean": "bool", "path": "path"}.get(type_name, "str")
    if getattr(param, "is_flag", False):
        name = "bool"
    if param.multiple:
        return "paths" if name == "path" else "pairs"
    return name


def configurable_options(command) -> dict[str, Any]:
    """Option name → click parameter, for every visible option of ``command`` a file may set."""
    return {p.name: p for p in command.params
            if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
            and not set(p.opts) & set(NOT_CONFIGURABLE)}


def _schema(command):
    from pydantic import ConfigDict, create_model

    fields = {name: (_YAML_TYPES[_kind(p)], None) for name, p in configurable_options(command).items()}
    return create_model(f"{command.name}_config", __config__=ConfigDict(extra="forbid", strict=True), **fields)


def _to_click(kind: str, value):
    """A validated YAML value as the command line would have given it."""
    if value is None:
        return None
    if kind == "str":
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "pairs":
        if isinstance(value, dict):
            return [f"{k}={_pair_value(v)}" for k, v in value.items()]
        return [value] if isinstance(value, str) else list(value)
    if kind == "paths":
        return [value] if isinstance(value, str) else list(value)
    return value


def _pair_value(value) -> str:
    """``value`` as the text after ``key=``: plain text where it reads back as itself (a path, a
    name), else JSON, which YAML (and so parse_options) reads back as it was."""
    import yaml

    if isinstance(value, str) and "," not in value:
        with contextlib.suppress(yaml.YAMLError):
            if yaml.safe_load(value) == value:
                return value
    return json.dumps(value)


# ----------------------------------------------------------------------------- reading

def load_config(path: str | os.PathLike, command) -> dict[str, Any]:
    """The options of ``path`` for the click ``command``, validated and ready as click defaults;
    raises :class:`InputError` naming the file and the bad key or value."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (the --config file)")
    if not path.is_file():
        raise InputError(f"{path}: the --config file is a folder, expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; --config expects a YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(f"{path}: not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option names to values (e.g. batch_size: 4), "
                         f"got {_yaml_kind(data)}")
    options = configurable_options(command)
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).strip().lstrip("-").replace("-", "_")
        if name not in options or not isinstance(key, str):
            close = difflib.get_close_matches(name, list(options), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"{path}: unknown key {key!r}{hint}; valid keys: {', '.join(options)}")
        if name in values:
            raise InputError(f"{path}: {name} is given twice (as {key!r} and another spelling)")
        values[name] = value
    try:
        _schema(command).model_validate(values)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        raise InputError(f"{path}: {name}: expected {_KIND_WORDS[_kind(options[name])]}, "
                         f"got {_yaml_kind(values[name])} {values[name]!r}") from None
    return {name: _to_click(_kind(options[name]), value) for name, value in values.items()}


def _yaml_kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a text", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- writing

def given_options(ctx: typer.Context) -> set[str]:
    """The options this call set, on the command line or in its --config file."""
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "DEFAULT_MAP")}


def run_options(command, record: dict, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """The options of ``command`` found in a run's ``record`` (its saved settings), by option name;
    ``rename`` maps an option name to the record's field where they differ. Paths become absolute."""
    rename = rename or {}
    options = {}
    for name, param in configurable_options(command).items():
        field = rename.get(name, name)
        if name in NOT_RECORDED or field not in record:
            continue
        value = record[field]
        if isinstance(value, tuple):
            value = list(value)
        if _kind(param) == "path" and value is not None:
            value = str(Path(value).expanduser().resolve())
        options[name] = value
    return options


def write_run_config(run_dir: str | os.PathLike, command_name: str, options: dict[str, Any]) -> Path:
    """``RUN/config.yaml``: ``options`` as a ``--config`` file of ``selma3d COMMAND`` (atomically)."""
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    header = (f"# selma3d {command_name}: the resolved options of this run (null: the default).\n"
              f"# Repeat it with: selma3d {command_name} --config {path} --out NEW_FOLDER\n")
    text = header + yaml.safe_dump(json.loads(json.dumps(options, default=str)), sort_keys=False,
                                   default_flow_style=None)
    return atomic_write(path, text)


#: how often :func:`recording` looks whether the run has (re)written its record, in seconds
RECORD_POLL_SECONDS = 0.5


@contextlib.contextmanager
def recording(run_dir: str | os.PathLike, command_name: str, record: str | os.PathLike,
              options: Callable[[], dict | None]):
    """Write ``RUN/config.yaml`` (from ``options()``) as soon as the wrapped run (re)writes its own
    ``record`` of settings, and again when it ends, however it ends. A watcher thread does the
    first write, so a run killed with SIGKILL mid-training already holds its config.yaml. A run
    refused at its checks (a refused resume included) writes no record and so leaves nothing new.
    Only the main process of a DDP run writes it."""
    before = _stamp(record)
    stop = threading.Event()

    def watch():
        seen = before
        while not stop.wait(RECORD_POLL_SECONDS):
            now = _stamp(record)
            if now is not None and now != seen:
                with contextlib.suppress(Exception):  # the final write below reports nothing either
                    _record(run_dir, command_name, record, seen, options)
                seen = now

    watcher = threading.Thread(target=watch, name="selma3d-config-recorder", daemon=True)
    watcher.start()
    try:
        yield
    except BaseException:
        stop.set()
        watcher.join()
        with contextlib.suppress(Exception):  # never hide the run's own error
            _record(run_dir, command_name, record, before, options)
        raise
    stop.set()
    watcher.join()
    _record(run_dir, command_name, record, before, options)


def _stamp(path) -> tuple | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _record(run_dir, command_name, record, before, options) -> None:
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) != 0:
        return
    after = _stamp(record)
    if after is None or after == before:
        return
    resolved = options()
    if resolved is not None:
        write_run_config(run_dir, command_name, resolved)


def read_json(path: str | os.PathLike) -> dict | None:
    """A run's JSON record, or None while it has none (or an unreadable one)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
