from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pdfnet_pipeline.config import ConfigError, apply_overrides, from_dict, load_stage_dict, to_dict


@dataclass
class Inner:
    size: int = 1024
    name: Literal["a", "b"] = "a"


@dataclass
class Outer:
    lr: float = 1e-5
    root: Path = Path("x")
    splits: list[str] = field(default_factory=lambda: ["DIS-VD"])
    inner: Inner = field(default_factory=Inner)
    device: str | None = None


def test_from_dict_builds_nested_typed_config():
    cfg = from_dict(Outer, {"lr": 1, "root": "/data", "inner": {"size": 256, "name": "b"}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.root == Path("/data") and cfg.inner == Inner(256, "b") and cfg.device is None
    assert to_dict(cfg)["root"] == "/data"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 1}, "unknown setting(s) lrr"),
        ({"inner": {"sise": 3}}, "unknown setting(s) inner.sise"),
        ({"inner": {"size": "big"}}, "inner.size: expected int"),
        ({"inner": {"name": "c"}}, "expected one of ['a', 'b']"),
        ({"splits": "DIS-VD"}, "splits: expected a list"),
    ],
)
def test_from_dict_refuses_bad_settings(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value)


def test_overrides_parse_toml_values():
    cfg = apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=3", "d=[1, 2]", "e=hello", 'f="x y"', "g=true"])
    assert cfg == {"a": {"b": 3, "c": 2}, "d": [1, 2], "e": "hello", "f": "x y", "g": True}


def test_stage_file_profiles(tmp_path):
    (tmp_path / "s.toml").write_text("lr = 1e-5\n[inner]\nsize = 1024\n[profiles.smoke.inner]\nsize = 64\n")
    assert load_stage_dict("s", stages_dir=tmp_path)["inner"]["size"] == 1024
    assert load_stage_dict("s", "smoke", ["lr=2e-4"], stages_dir=tmp_path) == {"lr": 2e-4, "inner": {"size": 64}}
    with pytest.raises(ConfigError, match="no profile 'fast'"):
        load_stage_dict("s", "fast", stages_dir=tmp_path)
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        load_stage_dict("nope", stages_dir=tmp_path)


def test_a_profile_extends_another(tmp_path):
    (tmp_path / "s.toml").write_text(
        "lr = 1e-5\nepochs = 100\n[inner]\nsize = 1024\nside = 3\n"
        "[profiles.smoke]\nepochs = 3\n[profiles.smoke.inner]\nsize = 64\n"
        '[profiles.demo]\nextends = "smoke"\nlr = 1e-3\n[profiles.demo.inner]\nside = 5\n'
        '[profiles.a]\nextends = "b"\n[profiles.b]\nextends = "a"\n[profiles.c]\nextends = "gone"\n'
    )
    assert load_stage_dict("s", "demo", stages_dir=tmp_path) == {
        "lr": 1e-3,
        "epochs": 3,
        "inner": {"size": 64, "side": 5},
    }
    with pytest.raises(ConfigError, match="in a cycle: a -> b -> a"):
        load_stage_dict("s", "a", stages_dir=tmp_path)
    with pytest.raises(ConfigError, match="no profile 'gone'"):
        load_stage_dict("s", "c", stages_dir=tmp_path)
