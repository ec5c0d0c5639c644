"""Gradient checkpointing: the same gradients, fewer activations kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

from medres.models import create_model


def _saved_bytes_and_grads(model, x, loss_fn):
    """Bytes of the tensors autograd keeps for backward (counted as they are saved), and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x))
    n_bytes = sum(saved)
    loss.backward()
    return n_bytes, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("resnet18", {"spatial_dims": 2, "in_channels": 3, "num_classes": 4}, (2, 3, 64, 64)),
        ("dual_resnet10", {"spatial_dims": 3, "in_channels": 1, "num_classes": 2}, (2, 1, 24, 40, 40)),
    ],
)
def test_checkpointing_gives_the_same_gradients_with_less_saved(name, kwargs, size):
    torch.manual_seed(0)
    plain = create_model(name, base_channels=16, **kwargs)
    ckpt = create_model(name, base_channels=16, grad_checkpointing=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(*size)
    if name.startswith("dual_"):

        def loss_fn(out):
            return out.cls_logits.sum() + out.seg_logits.square().mean()
    else:

        def loss_fn(out):
            return out.square().sum()

    bytes_plain, grads_plain = _saved_bytes_and_grads(plain, x, loss_fn)
    bytes_ckpt, grads_ckpt = _saved_bytes_and_grads(ckpt, x, loss_fn)
    assert grads_plain.keys() == grads_ckpt.keys()
    for k in grads_plain:
        torch.testing.assert_close(grads_ckpt[k], grads_plain[k], rtol=1e-4, atol=1e-5, msg=k)
    assert bytes_ckpt < 0.3 * bytes_plain, (bytes_ckpt, bytes_plain)


def test_checkpointing_is_off_without_grad_and_switchable():
    m = create_model("dual_resnet10", spatial_dims=2, in_channels=1, base_channels=8)
    m.set_grad_checkpointing(True)
    assert m.backbone.grad_checkpointing and m.seg_head.grad_checkpointing
    with torch.no_grad():
        out = m.eval()(torch.randn(1, 1, 33, 47))
    assert out.seg_logits.shape == (1, 2, 33, 47)
