"""Stage configs: `stages/NAME.toml` + a named profile + `--set key=value` -> a typed dataclass.

A stage file holds the stage's default settings at the top level and named override sets under
`[profiles.NAME]` (same nesting). Each component owns its dataclass; this module only merges
dictionaries and builds dataclasses from them, refusing unknown keys and wrong types so a typo in
a config fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pdfnet_pipeline.errors import UserError
from pdfnet_pipeline.repo_data import repo_dir
from pdfnet_pipeline.runtime import OLD_PRECISION_SPELLINGS

T = TypeVar("T")

STAGES_DIR = repo_dir("stages", "stages")


class ConfigError(UserError, ValueError):
    """A stage file, profile or override that cannot be turned into the stage's config."""


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3). Values are TOML literals; anything else is a plain string."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg: dict, items: list[str] | tuple[str, ...]) -> dict:
    for item in items:
        path, value = parse_override(item)
        nested: dict = value
        for part in reversed(path):
            nested = {part: nested}
        cfg = deep_merge(cfg, nested)
    return cfg


def stage_file(name: str, stages_dir: Path | None = None) -> Path:
    path = (stages_dir or STAGES_DIR) / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in (stages_dir or STAGES_DIR).glob("*.toml"))
        raise ConfigError(f"no stage {name!r}: {path} does not exist (stages: {', '.join(known)})")
    return path


def load_stage_dict(
    name: str,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stages_dir: Path | None = None,
) -> dict:
    """The merged settings of one stage: file defaults <- profile <- --set overrides."""
    raw = tomllib.loads(stage_file(name, stages_dir).read_text())
    profiles = raw.pop("profiles", {})
    if profile:
        raw = deep_merge(raw, resolve_profile(name, profiles, profile))
    return apply_overrides(raw, list(overrides))


def resolve_profile(stage: str, profiles: dict, profile: str, chain: tuple[str, ...] = ()) -> dict:
    """A profile's settings; `extends = "other"` starts from another profile of the same stage (the
    demo recipe is the smoke profile's tiny models plus its own training settings)."""
    if profile not in profiles:
        raise ConfigError(f"stage {stage!r} has no profile {profile!r} (profiles: {', '.join(sorted(profiles))})")
    if profile in chain:
        raise ConfigError(f"stage {stage!r}: profiles extend each other in a cycle: {' -> '.join((*chain, profile))}")
    settings = dict(profiles[profile])
    base = settings.pop("extends", None)
    if base is None:
        return settings
    if not isinstance(base, str):
        raise ConfigError(f"stage {stage!r}, profile {profile!r}: extends must name a profile, got {base!r}")
    return deep_merge(resolve_profile(stage, profiles, base, (*chain, profile)), settings)


def _check_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            new = OLD_PRECISION_SPELLINGS.get(value) if isinstance(value, str) else None
            hint = f" ({value!r} is now spelled {new!r})" if new in args else ""
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    return _check_scalar(tp, value, where)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from `data`, converting nested tables and checking every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    renamed = getattr(cls, "RENAMED", {})  # old setting name -> new one, refused with the new name
    old = [u for u in unknown if u in renamed]
    if old:
        raise ConfigError(
            ", ".join(f"setting {prefix + u} is now {prefix + renamed[u]}" for u in old)
            + " (same values: auto, bf16, fp16, fp32)" * any(renamed[u] == "precision" for u in old)
        )
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A dataclass config as TOML/JSON-friendly data (paths as strings)."""

    def clean(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))
