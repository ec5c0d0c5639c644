"""The ImageNet-style recipe survives a change of batch size: lr stated for a reference batch and scaled
linearly (logged, saved in the run's config), linear warm-up, cosine or step decay; and the shipped
config learns real images (scikit-learn's handwritten digits) without diverging. Its accuracy against
linear classifiers after the full 90 epochs is measured by ``benchmarks/digits_recipe.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from medres.config import load_config
from medres.training.optim import lr_factor, scaled_lr, with_scaled_lr

ROOT = Path(__file__).resolve().parents[1]


def test_lr_is_scaled_linearly_to_the_total_batch():
    cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml", ["train.batch_size=64"])
    assert scaled_lr(cfg.optim, batch_size=64) == pytest.approx(0.025)
    assert scaled_lr(cfg.optim, batch_size=64, accumulate=2, world_size=2) == pytest.approx(0.1)
    plain = load_config(ROOT / "configs" / "smoke.yaml")
    assert plain.optim.reference_batch_size is None
    assert scaled_lr(plain.optim, batch_size=64) == plain.optim.lr


def test_scaled_lr_is_logged_and_kept_in_the_config(caplog):
    cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml", ["train.batch_size=32"])
    with caplog.at_level(logging.INFO, logger="medres.training"):
        out = with_scaled_lr(cfg)
    assert out.optim.lr_scaled == pytest.approx(0.0125) and out.optim.lr == 0.1
    assert "0.0125" in caplog.text and "256" in caplog.text


def test_warm_up_then_step_or_cosine():
    cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml")
    s = cfg.schedule
    f = [lr_factor(k, s, epochs=90, steps_per_epoch=10) for k in range(900)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)  # 5 epochs x 10 steps
    assert np.all(np.diff(f[:50]) > 0) and f[299] == 1.0 and f[300] == pytest.approx(0.1)
    cos = s.model_copy(update={"name": "cosine"})
    g = [lr_factor(k, cos, epochs=90, steps_per_epoch=10) for k in range(900)]
    assert g[49] == pytest.approx(1.0) and np.all(np.diff(g[50:]) <= 0) and g[-1] < 1e-3


@pytest.mark.slow
def test_imagenet_recipe_at_batch_64_learns_stably_on_real_digits(tmp_path):
    """scikit-learn's 8x8 handwritten digits (every second of its 1,797 real images, 10 classes), written
    as 32x32 PNG class folders. The shipped ImageNet recipe with only the image folder, the number of
    classes, the patch size and the batch (64) overridden -- plus, to bound the test, 12 epochs and one
    fold. Before zero-gamma init and no bias decay this diverged within the warm-up (val loss 55,000 at
    epoch 6, accuracy 0.11). Now the 32 x 32 patches get the pad-and-crop of ``random_resized_crop:
    auto`` and the run learns: the training loss leaves chance (ln 10 = 2.30) and falls, the
    inner-validation AUROC rises. The eval-mode loss has a transient in the first epochs (to 16 at epoch
    7: batch-norm running statistics trailing weights that move fast over 9 steps an epoch), then falls;
    the full 90 epochs reach 0.950 held-out accuracy (BENCHMARKS.md, ``benchmarks/digits_recipe.py``)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from medres.train import run

    digits = load_digits()
    keep = np.arange(0, len(digits.target), 2)
    folder = tmp_path / "digits"
    for i, img, y in zip(keep, digits.images[keep], digits.target[keep]):
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(np.uint8(img * 255 / 16)).resize((32, 32), Image.BILINEAR)
        big.save(folder / str(y) / f"{i:04d}.png")
    cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml", [
        f"data.image_folder={folder}", "model.num_classes=10", "data.patch_size=[32,32]",
        "train.batch_size=64", "data.num_workers=0", "train.epochs=12", f"output.dir={tmp_path / 'runs'}"])
    result = run(cfg, folds=[0], quiet=True)
    saved = yaml.safe_load((tmp_path / "runs" / cfg.output.name / "config.yaml").read_text())
    assert saved["optim"]["lr_scaled"] == pytest.approx(0.025)  # 0.1 x 64 / 256
    m = result.metrics[0]
    assert np.isfinite(m["loss"]).all() and np.isfinite(m["val_loss"]).all()
    assert m["val_loss"].max() < 100, m["val_loss"].tolist()  # no divergence (it reached 55,000)
    # measured here: val loss 2.33 -> 16.2 (epoch 7) -> 3.6-6.9 in the last three; training loss at most
    # 2.69, 1.93 at the end; inner-validation AUROC 0.65 -> 0.89
    assert m["val_loss"].iloc[-3:].min() < m["val_loss"].max() / 3, m["val_loss"].tolist()  # transient over
    assert m["loss"].max() < 2 * np.log(10), m["loss"].tolist()  # never far above chance
    assert m["loss"].iloc[-3:].min() < np.log(10) - 0.15, m["loss"].tolist()  # and learning
    assert m["val_auroc"].iloc[-1] >= 0.75, m["val_auroc"].tolist()  # chance is 0.5
