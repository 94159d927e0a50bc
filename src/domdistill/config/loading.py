"""Loading a run configuration: YAML (with limits), ``--set`` overrides, ``${VAR}`` expansion,
checks pydantic would not make, and error messages that name the dotted path.

``${VAR}`` in any string value expands from the environment and fails loudly when unset; the
reference, not its value, is what ``save_config`` writes. Unknown or mistyped keys are errors
that name their dotted path and the allowed keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from domdistill.config.sections import RunConfig
from domdistill.errors import ConfigError
from domdistill.redact import cut, looks_like_key, remember_expansion


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    """``("teacher", "recorded_paths", 0)`` -> ``teacher.recorded_paths[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def expand_env(value: Any, loc: Loc = (), templates: dict[Loc, str] | None = None) -> Any:
    """Replace ``${VAR}`` in every string of a nested structure; unset variables are errors.
    Secret-looking values are hidden in messages from then on; ``templates`` collects where
    each reference was written. A value that is one reference and holds a number becomes it."""
    if isinstance(value, dict):
        return {k: expand_env(v, (*loc, k), templates) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*loc, i), templates) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(f"environment variable ${{{name}}} is not set", field=dotted(loc))
        remember_expansion(name, os.environ[name])
        return os.environ[name]

    out = _ENV.sub(sub, value)
    if templates is not None and out != value:
        templates[loc] = value
    if _ENV.fullmatch(value) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", out.strip()):
        number = float(out)
        return int(number) if number.is_integer() and re.fullmatch(r"[-+]?\d+", out.strip()) else number
    return out


def _annotation_allows_bool(annotation: Any) -> bool:
    from typing import get_args

    return annotation is bool or any(_annotation_allows_bool(a) for a in get_args(annotation))


def _expected(annotation: Any) -> str:
    from typing import get_args

    kinds = {annotation, *get_args(annotation)}
    return "a number" if kinds & {int, float} else "a string" if str in kinds else "another type"


def check_raw(raw: Any, model: type[BaseModel] | None = RunConfig, loc: Loc = ()) -> None:
    """What pydantic would let through in silence: a key written in place of a reference, a
    ``${VAR}`` where a variable *name* belongs, a boolean where a number belongs."""
    if isinstance(raw, str) and looks_like_key(raw):
        raise ConfigError("this value looks like an API key; keep keys out of config files: put "
                          "it in an environment variable and name the variable in "
                          "teacher.api_key_env (or write ${VAR}); the value is not shown",
                          field=dotted(loc))
    if isinstance(raw, list):
        for i, v in enumerate(raw):
            check_raw(v, None, (*loc, i))
    if not isinstance(raw, dict):
        return
    for key, value in raw.items():
        info = model.model_fields.get(key) if model is not None and isinstance(key, str) else None
        sub = info.annotation if info is not None else None
        here = (*loc, key)
        if info is not None and isinstance(value, bool) and not _annotation_allows_bool(sub):
            raise ConfigError(f"expected {_expected(sub)}, got the boolean {str(value).lower()}",
                              field=dotted(here))
        if here == ("teacher", "api_key_env") and isinstance(value, str) and "${" in value:
            raise ConfigError("holds the *name* of the variable with the key, not a ${...} "
                              "reference to it: write api_key_env: OPENAI_API_KEY",
                              field=dotted(here))
        check_raw(value, sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None, here)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return current
        ann = current.model_fields[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return current


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str | None,
                            templates: dict[Loc, str] | None = None) -> ConfigError:
    """Turn pydantic's error into one message naming each dotted path and what is allowed.
    Values are cut short and redacted; one that came from ``${VAR}`` is shown as written."""
    lines = []
    first_field = None
    for e in err.errors():
        loc = tuple(e["loc"])
        name = dotted(loc) or "(top level)"
        first_field = first_field or name
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else "?"
            lines.append(f"unknown key '{cut(name, 60)}' (allowed keys here: {allowed})")
        elif e["type"] == "env_name":
            lines.append(f"'{name}': {e['msg']}")
        else:
            shown = (templates or {}).get(loc) or cut(repr(e.get("input")))
            lines.append(f"'{name}': {e['msg']} (got {shown})")
    return ConfigError("invalid configuration: " + "; ".join(lines), path=source,
                       field=first_field)


def config_from_dict(raw: dict[str, Any], source: str | None = None) -> RunConfig:
    """Validate a plain dict into a RunConfig (``${VAR}`` expanded, the references kept)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}", path=source)
    templates: dict[Loc, str] = {}
    try:
        check_raw(raw)
        cfg = RunConfig.model_validate(expand_env(raw, templates=templates))
    except ConfigError as err:
        if source is None or err.path is not None:
            raise
        raise ConfigError(err.reason, path=source, field=err.field) from None
    except ValidationError as err:
        raise format_validation_error(err, RunConfig, source, templates) from None
    cfg._templates = templates
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs as ``{dotted key: value}`` (values parsed as YAML scalars)."""
    from domdistill.safe_yaml import YamlLimitError, load_yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or any(not p.strip() for p in key.split(".")):
            raise ConfigError(f"--set expects section.key=value (e.g. --set method.budget=800), "
                              f"got {cut(pair, 60)!r}")
        try:
            out[key.strip()] = load_yaml(value)
        except (yaml.YAMLError, YamlLimitError) as err:
            raise ConfigError(f"--set {cut(key, 60)}: the value is not valid YAML "
                              f"({str(err).splitlines()[0][:80]})") from None
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set each dotted key of ``overrides`` inside ``raw`` (sections created where missing)."""
    for key, value in overrides.items():
        node = raw
        *parents, leaf = [p.strip() for p in key.split(".")]
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {cut(key, 60)}: '{'.'.join(parents[:i + 1])}' is a value "
                                  f"({type(node).__name__}), not a section with keys",
                                  field=".".join(parents[:i + 1]))
        node[leaf] = value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML run config; ``overrides`` are dotted keys (``method.budget``) applied on top.

    Relative input paths (see ``resolve_input_paths``) written in the file resolve against the
    file's folder, those given as overrides against the current directory; both become absolute,
    so the run folder's saved config works from anywhere."""
    raw = read_config_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}", path=path)
    apply_overrides(raw, overrides or {})
    cfg = config_from_dict(raw, source=str(path))
    given = {key.strip() for key in overrides or {}}
    resolve_input_paths(cfg, Path(path).resolve().parent, Path.cwd(), given)
    return cfg


def resolve_input_paths(cfg: RunConfig, base: Path, cwd: Path, overridden: set[str] = frozenset()
                        ) -> None:
    """Make the config's relative input paths absolute: ``data.path``, ``data.test_path``,
    ``teacher.recorded_paths`` and a model that is a local path (``student.model``;
    ``teacher.model`` for ``kind: hf``). A dotted key in ``overridden`` resolves against ``cwd``,
    the others against ``base``. Hub ids, presets and reference names (unless a file of that name
    sits beside the config), ``builtin`` and absolute paths stay as given;
    ``output.dir`` stays relative to where the command runs."""
    # here, not at the top: the models package imports config (and torch)
    from domdistill.models.gguf import is_gguf, names_a_path

    def absolute(value: str, key: str) -> str:
        p = Path(value).expanduser()
        return value if p.is_absolute() else os.path.abspath((cwd if key in overridden else base) / p)

    def model(value: str, key: str) -> str:
        here = cwd if key in overridden else base
        local = names_a_path(value) or is_gguf(value) or (here / value).exists()
        return absolute(value, key) if local else value

    data, teacher = cfg.data, cfg.teacher
    if data.path != "builtin":
        data.path = absolute(data.path, "data.path")
    if data.test_path is not None:
        data.test_path = absolute(data.test_path, "data.test_path")
    teacher.recorded_paths = [absolute(p, "teacher.recorded_paths") for p in teacher.recorded_paths]
    cfg.student.model = model(cfg.student.model, "student.model")
    if teacher.kind == "hf":
        teacher.model = model(teacher.model, "teacher.model")


def read_config_yaml(path: str | Path) -> Any:
    """The YAML document at ``path`` as plain data (no ``${VAR}`` expanded), or a ConfigError
    naming the file and line: missing, not UTF-8, bad syntax, over the size/alias/depth limits."""
    from domdistill.safe_yaml import YamlLimitError, load_yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file does not exist" if not p.exists() else
                          "expected a config file, found a folder", path=p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=p) from None
    except OSError as err:
        raise ConfigError(f"cannot read the file ({err.strerror})", path=p) from None
    try:
        raw = load_yaml(text)
    except YamlLimitError as err:
        raise ConfigError(str(err), path=p, line=err.line) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(err, 'problem', None) or err}", path=p,
                          line=mark.line + 1 if mark else None) from None
    return {} if raw is None else raw


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the (secret-free) config as YAML."""
    from domdistill.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.redacted(), sort_keys=False, allow_unicode=True))
