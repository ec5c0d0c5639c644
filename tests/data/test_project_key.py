"""The project key: one rule for $MEDRES_PROJECT_KEY and the key file; signed link-roots files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medres.data.index.__main__ import main as index_main
from medres.data.project_key import existing_project_key, project_key, read_link_roots, write_link_roots
from medres.errors import ConfigError

GOOD = "a-good-project-key-0123456789"


@pytest.mark.parametrize("key", ["x", "short-key-12345", "a" * 40, "ab" * 20, " " + "z" * 15])
@pytest.mark.parametrize("route", ["env", "file"])
def test_weak_keys_are_refused_on_both_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str,
                                              route: str) -> None:
    key_file = tmp_path / "project.key"
    if route == "env":
        monkeypatch.setenv("MEDRES_PROJECT_KEY", key)
    else:
        monkeypatch.delenv("MEDRES_PROJECT_KEY", raising=False)
        key_file.write_text(key + "\n")
    with pytest.raises(ConfigError) as info:
        project_key(key_file)
    assert "secrets.token_hex(32)" in info.value.hint
    assert ("MEDRES_PROJECT_KEY" if route == "env" else str(key_file)) in info.value.reason


def test_a_good_key_is_the_same_on_both_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", GOOD)
    from_env = project_key(tmp_path / "unused.key")
    assert from_env == GOOD.encode() and not (tmp_path / "unused.key").exists()
    monkeypatch.delenv("MEDRES_PROJECT_KEY")
    (tmp_path / "k").write_text(GOOD + "\n")
    assert project_key(tmp_path / "k") == from_env


def test_reading_a_key_never_creates_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDRES_PROJECT_KEY", raising=False)
    key_file = tmp_path / "keys" / "project.key"
    assert existing_project_key(key_file) is None and not key_file.exists()
    made = project_key(key_file)
    assert len(made) == 64 and existing_project_key(key_file) == made


def test_the_index_refuses_a_weak_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "export").mkdir()
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "x")
    assert index_main([str(tmp_path / "export"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fewer than the 16 required" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_link_roots_verify_only_under_the_key_that_signed_them(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    export.mkdir()
    listing = tmp_path / "private" / "link_roots.txt"
    write_link_roots(listing, [str(export)], GOOD.encode())
    monkeypatch.setenv("MEDRES_PROJECT_KEY", GOOD)
    assert read_link_roots(listing) == ([str(export.resolve())], "")
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "another-project-key-987654321")
    roots, why = read_link_roots(listing)
    assert roots == [] and "does not verify" in why
    monkeypatch.delenv("MEDRES_PROJECT_KEY")
    roots, why = read_link_roots(listing, tmp_path / "no.key")
    assert roots == [] and "no project key" in why and not (tmp_path / "no.key").exists()
    assert read_link_roots(tmp_path / "absent.txt") == ([], "")


def test_creating_the_key_file_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import logging

    monkeypatch.delenv("MEDRES_PROJECT_KEY", raising=False)
    monkeypatch.setattr(logging.getLogger("medres"), "propagate", True)  # a CLI run before may have closed it
    key_file = tmp_path / "cfg" / "project.key"
    with caplog.at_level("INFO", logger="medres"):
        first = project_key(key_file)
        assert project_key(key_file) == first and existing_project_key(key_file) == first
    notices = [r.getMessage() for r in caplog.records if "created the project key" in r.getMessage()]
    assert len(notices) == 1 and caplog.records[0].levelname == "WARNING"
    assert str(key_file) in notices[0] and "Back it up" in notices[0]
    assert "MEDRES_PROJECT_KEY" in notices[0] and "data.index.key_file" in notices[0]
    assert first.decode() not in notices[0]  # the key itself is never printed
    assert key_file.stat().st_mode & 0o777 == 0o600
    caplog.clear()
    monkeypatch.setenv("MEDRES_PROJECT_KEY", GOOD)  # a key from the environment: no file, no notice
    assert project_key(tmp_path / "other.key") == GOOD.encode()
    assert not caplog.records and not (tmp_path / "other.key").exists()
