"""Issue 8 items 4 and 8 (config part): an alias bomb is refused quickly with bounded memory, an alias
that contains itself and absurd nesting are ConfigErrors, and an empty config file says so."""

from __future__ import annotations

import resource

import pytest

from medres.config import load_config
from medres.errors import ConfigError


def _bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]")
    lines.append(f"data:\n  labels: *x{levels}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_expanding(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert path.stat().st_size < 1500
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    assert info.value.path == str(path)
    assert "aliases" in info.value.reason and "expand to more than" in info.value.reason


def test_a_few_aliases_are_still_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &w {center: -600, width: 1500}\n"
                    "data:\n  windows: [*w, {center: 40, width: 400}]\n")
    with pytest.raises(ConfigError) as info:  # 'base' is not a section: refused for that, not the alias
        load_config(path)
    assert "alias" not in info.value.reason
    path.write_text("data:\n  labels: &l [a, b]\n  positive_label: b\n")
    assert load_config(path).data.labels == ["a", "b"]


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("data:\n  labels: &a [x, *a]\n")
    with pytest.raises(ConfigError, match="contains itself"):
        load_config(path)


def test_deep_nesting_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("data:\n  labels: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_alias_bomb_in_a_set_value_is_refused():
    parts = ["a0: &a0 [z, z, z, z, z, z, z, z, z, z]"]
    parts += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.labels={" + ", ".join(parts) + "}"])
    assert "aliases" in info.value.reason and info.value.field == "data.labels"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_config_file_says_so(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "empty" in info.value.reason and info.value.path == str(path)


@pytest.mark.parametrize("setting", ["data.spacing=[1.0,0,1.0]", "data.spacing=[-1,1,1]",
                                     "data.patch_size=[-48,48,48]", "data.patch_size=[0,48,48]",
                                     "data.patch_size=[]"])
def test_schema_bounds_refuse_impossible_geometry(setting):
    with pytest.raises(ConfigError) as info:
        load_config(None, [setting])
    assert setting.split("=")[0] in str(info.value)
