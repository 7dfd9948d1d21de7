from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from common.config import ConfigError, from_dict, load, save_yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    k: int = 32
    mode: Literal["union", "teacher"] = "union"


@dataclass
class Outer:
    name: str
    lr: float = 1e-4
    inner: Inner = field(default_factory=Inner)
    sets: list[str] = field(default_factory=list)
    limit: Optional[int] = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@pytest.mark.unit
def test_load_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  k: 8\nsets: [a, b]\n")
    cfg = load(Outer, p, ["inner.mode=teacher", "lr=0.5", "limit=null"])
    assert cfg == Outer(name="run", lr=0.5, inner=Inner(k=8, mode="teacher"), sets=["a", "b"], limit=None)
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"name": "x", "bogus": 1}, "'bogus'"),
        ({"name": "x", "inner": {"kk": 1}}, "'inner.kk'"),
        ({"name": "x", "inner": {"k": "many"}}, "'inner.k'"),
        ({"name": "x", "inner": {"mode": "both"}}, "'inner.mode'"),
        ({"name": "x", "sets": "a"}, "'sets'"),
        ({"name": "x", "limit": 1.5}, "'limit'"),
        ({}, "'name'"),
        ({"name": "x", "lr": -1.0}, "lr must be > 0"),
    ],
)
@pytest.mark.unit
def test_errors_name_the_key_on_one_line(data, key):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.unit
def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load(Outer, None, ["name"])
    with pytest.raises(ConfigError, match="not found"):
        load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load(Outer, bad)


@pytest.mark.unit
def test_base_include_merges_and_names_missing_bases(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {k: 8, mode: teacher}\nsets: [a, b]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("_base_: ../base.yaml\ninner: {k: 16}\nsets: [c]\n")
    cfg = load(Outer, tmp_path / "sub" / "child.yaml", ["lr=0.1"])
    assert cfg == Outer(
        name="base", lr=0.1, inner=Inner(k=16, mode="teacher"), sets=["c"]
    )  # dicts merge, lists replace
    (tmp_path / "orphan.yaml").write_text("_base_: missing.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="missing.yaml.*_base_ of"):
        load(Outer, tmp_path / "orphan.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(Outer, tmp_path / "loop.yaml")


@pytest.mark.unit
def test_save_roundtrip(tmp_path):
    cfg = Outer(name="r", sets=["x"])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load(Outer, tmp_path / "c.yaml") == cfg


def schema_for(path: Path) -> type:
    """The schema a YAML under configs/ fills, by its top folder."""
    top = path.relative_to(REPO / "configs").parts[0]
    if top == "sweeps":
        from common.app.sweep import SweepConfig

        return SweepConfig
    if top in ("paper", "demo"):  # experiments name their method; the rest by file name
        from common.app.experiment import method_of

        try:
            top = method_of(path, [])
        except ValueError:
            top = {"synth.yaml": "base", "synth_ood.yaml": "base", "teacher_cache.yaml": "teachers"}.get(
                path.name, "eval"
            )
    if top == "eval":
        from common.evaluate import EvalConfig

        return EvalConfig
    if top == "base":
        from common.data.synth import SynthConfig

        return SynthConfig
    if top == "teachers":
        from common.teachers.cache import CacheConfig

        return CacheConfig
    if top == "askd_whisper":
        from askd_whisper.config import AskdConfig

        return AskdConfig
    if top == "ark_asr":
        from ark_asr.config import ArkConfig

        return ArkConfig
    raise AssertionError(f"no schema for {path}")


def test_every_config_file_loads():
    """Every YAML under configs/ loads into its schema (the schema is named by the file's folder)."""
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) == 55, [str(f.relative_to(REPO)) for f in files]  # update when adding a config
    for f in files:
        schema = schema_for(f)
        cfg = load(schema, f)
        assert isinstance(cfg, schema), f
