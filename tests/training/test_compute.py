"""GPU switches on the CPU: auto leaves cuDNN autotuning and fused kernels off; asked for, a fused AdamW
is built and steps like the default one; the compile mode reaches torch.compile."""

from __future__ import annotations

import torch

from medres.config import OptimConfig, TrainConfig, load_config
from medres.training.compute import apply_backend_flags, compile_model, use_fused_optimizer
from medres.training.optim import build_optimizer


def test_auto_switches_are_off_on_the_cpu():
    cpu = torch.device("cpu")
    assert apply_backend_flags(TrainConfig(), cpu) == {"cudnn_benchmark": False}
    assert not use_fused_optimizer(TrainConfig(), cpu)
    assert use_fused_optimizer(TrainConfig(fused_optimizer=True), cpu)


def test_fused_adamw_steps_like_the_default():
    out = []
    for fused in (True, None):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 2)
        opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2), fused=fused)
        assert opt.defaults["fused"] == fused
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(4, 8)).square().sum().backward()
            opt.step()
        out.append(model.weight.detach().clone())
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_compile_mode_reaches_torch_compile(tmp_path):
    cfg = load_config_from_text(tmp_path, "train: {compile: true, compile_mode: reduce-overhead}\n")
    net = compile_model(torch.nn.Linear(2, 2), cfg.train)
    assert isinstance(net, torch._dynamo.eval_frame.OptimizedModule)  # lazy: nothing compiled yet


def load_config_from_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)
