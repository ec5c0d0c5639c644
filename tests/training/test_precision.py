"""``bf16_if_native`` on a CPU whose kernels the environment limits to an ISA without native bf16."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import medres.training.precision as precision
from medres.config.schema import TrainConfig
from medres.training.precision import isa_limit, resolve_compute_settings

_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@pytest.fixture
def clean_env(monkeypatch):
    for name in _LIMITS:
        monkeypatch.delenv(name, raising=False)
    precision.cpu_supports_bf16.cache_clear()
    yield monkeypatch
    precision.cpu_supports_bf16.cache_clear()


@pytest.mark.parametrize(("name", "value", "limited"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", True),
    ("ONEDNN_MAX_CPU_ISA", "avx512_core", True),        # AVX-512 without its bf16 extension
    ("DNNL_MAX_CPU_ISA", "AVX2_VNNI", True),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),
    ("ONEDNN_MAX_CPU_ISA", "avx512_core_amx", False),
    ("ONEDNN_MAX_CPU_ISA", "ALL", False),
    ("ATEN_CPU_CAPABILITY", "avx2", True),
    ("ATEN_CPU_CAPABILITY", "default", True),
    ("ATEN_CPU_CAPABILITY", "avx512", False),
])
def test_isa_limit_reads_the_environment(clean_env, name, value, limited):
    assert isa_limit() is None
    clean_env.setenv(name, value)
    assert (isa_limit() == f"{name}={value}") == limited
    assert (isa_limit() is None) == (not limited)


def test_onednn_limit_makes_bf16_if_native_fp32(clean_env, caplog):
    """Under ONEDNN_MAX_CPU_ISA=AVX2 oneDNN's convolutions would emulate bf16: fp32, and the log says why,
    whatever this machine's own CPU has."""
    clean_env.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert precision.cpu_supports_bf16() is False
    cfg = TrainConfig(precision="bf16_if_native", device="cpu")
    with caplog.at_level("INFO", logger="medres.training"):
        settings = resolve_compute_settings(cfg, spatial_dims=2)
    assert settings.dtype is None and settings.precision == "fp32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2: the CPU kernels have no native bf16" in caplog.text


def test_aten_avx2_process_sees_no_native_bf16():
    """A process started with ATEN_CPU_CAPABILITY=avx2 (how an AVX2-only CPU is emulated) picks fp32 for
    a 2D ``bf16_if_native`` run, even on a CPU with AVX-512 BF16 in /proc/cpuinfo."""
    code = ("import torch; from medres.config.schema import TrainConfig; "
            "from medres.training.precision import resolve_compute_settings as r; "
            "print(torch.backends.cpu.get_cpu_capability(), "
            "r(TrainConfig(precision='bf16_if_native', device='cpu'), spatial_dims=2).precision)")
    env = {k: v for k, v in os.environ.items() if k not in _LIMITS}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "fp32"]

