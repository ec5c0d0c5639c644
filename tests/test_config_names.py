"""Configurations by name: a file in the working directory wins, else the shipped one (the repository's
configs/, installed as medres/configs/); and the installed wheel runs the smoke configuration by name from
an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from medres.config import list_shipped_configs, load_config, resolve_config_path
from medres.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs"


def test_a_shipped_config_by_name_resolves_its_paths_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke.yaml")
    assert Path(cfg.source) == SHIPPED / "smoke.yaml"
    assert cfg.data.demo.out == str(tmp_path / "demo_data" / "smoke")  # not inside the package
    assert load_config("smoke").source == cfg.source  # the suffix may be left out
    # configs/<name> (the repository's layout) works from a folder that has no configs/
    assert load_config("configs/smoke.yaml").source == cfg.source
    # a shipped file addressed by its full path is still shipped: its paths follow the working directory
    assert load_config(SHIPPED / "ct_chest.yaml").data.demo.out == str(tmp_path / "demo_data" / "ct_chest")


def test_a_file_of_that_name_in_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke.yaml").write_text("data:\n  demo: {out: mine}\ntrain:\n  epochs: 7\n")
    cfg = load_config("smoke.yaml")
    assert cfg.train.epochs == 7 and cfg.source == "smoke.yaml"
    assert resolve_config_path("smoke.yaml") == (Path("smoke.yaml"), False)
    # an existing configs/ folder without the file is the user's: no silent fallback to the shipped one
    (tmp_path / "configs").mkdir()
    with pytest.raises(ConfigError, match="not found") as e:
        load_config("configs/smoke.yaml")
    assert "ct_chest.yaml" in e.value.hint and "--list-configs" in e.value.hint


def test_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found") as e:
        load_config("ct_chets.yaml")
    assert all(name in e.value.hint for name in list_shipped_configs())
    with pytest.raises(ConfigError):  # a directory part that is not configs/ never falls back
        load_config("elsewhere/smoke.yaml")


def test_list_configs(tmp_path):
    shipped = list_shipped_configs()
    assert set(shipped) == {p.name for p in SHIPPED.glob("*.yaml")} >= {"ct_chest.yaml", "smoke.yaml"}
    assert shipped["smoke.yaml"].startswith("Tiny configuration")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "medres.train", "--list-configs"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # one entry per shipped file; a long description wraps onto indented lines
    assert [ln.split()[0] for ln in out.stdout.splitlines() if not ln.startswith(" ")] == sorted(shipped)


def test_a_checkout_that_is_not_installed_finds_the_repositorys_configs(tmp_path):
    """With the checkout on PYTHONPATH and no installed ``medres.configs`` (an editable install's finder
    taken away), the shipped configurations are the repository's configs/ folder."""
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import importlib.util; assert importlib.util.find_spec('medres.configs') is None; "
            "from medres.config import list_shipped_configs, load_config; "
            "print(load_config('smoke.yaml').source); print(len(list_shipped_configs()))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    source, count = out.stdout.split()
    assert Path(source) == SHIPPED / "smoke.yaml" and int(count) == len(list(SHIPPED.glob("*.yaml")))


@pytest.mark.slow
def test_installed_wheel_runs_the_smoke_config_by_name_from_an_empty_folder(tmp_path):
    """Build the wheel, install it into a fresh virtual environment outside the checkout, run
    ``python -m medres.train --config smoke.yaml`` from an empty folder.

    The new environment is created without pip; its site-packages holds only the wheel's files and a
    ``.pth`` line naming the shared environment's site-packages (torch, MONAI, ...: a plain path line, so
    that environment's own ``.pth`` hooks - an editable medres - are not run). ``import medres`` must
    then come from the new environment: the wheel, not the checkout.
    """
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("medres-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "shared_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "2"
    where = subprocess.run([str(py), "-c", "import medres; print(medres.__file__)"], cwd=empty, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed wheel, not the checkout
    assert (site / "medres" / "configs" / "smoke.yaml").is_file()
    run = subprocess.run([str(py), "-m", "medres.train", "--config", "smoke.yaml", "--quiet",
                          "--set", "train.epochs=1", "--set", "evaluate.bootstrap_resamples=100"],
                         cwd=empty, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    # outputs and the demo cohort land in the working directory, nothing inside site-packages
    assert (empty / "demo_data" / "smoke" / "manifest.csv").is_file()
    assert (empty / "runs" / "smoke" / "config.yaml").is_file()
    assert (empty / "runs" / "smoke" / "report" / "report.html").is_file()
    assert "AUROC (nodule vs rest)" in run.stdout and "Dice nodule" in run.stdout  # the headline at the end
    assert run.stdout.rstrip().endswith(str((empty / "runs" / "smoke" / "report" / "report.html").resolve()))
    assert not (site / "medres" / "configs" / "demo_data").exists() and not (site / "demo_data").exists()
