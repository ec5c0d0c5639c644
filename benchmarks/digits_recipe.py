"""The shipped ImageNet recipe at a small batch against a classical baseline, on real images.

Issue 13 section 7: ``configs/imagenet_resnet50.yaml`` with only the image folder, the number of
classes, the patch size and the batch overridden must train a small set of real images to the accuracy
a classical baseline reaches on the same split. The images are scikit-learn's handwritten digits
(1,797 real 8x8 scans of handwriting, 10 classes; UCI, Alpaydin & Kaynak 1998), written as 32x32 PNG
class folders. medres trains the held-out fold's complement with everything else as the recipe has it
(90 epochs, SGD, 5 warm-up epochs, random-resized crop and flips); the baseline is scikit-learn's
logistic regression and a linear SVM on the 64 raw pixels of exactly the same training cases, scored
on the same held-out cases. Prints each accuracy (Wilson interval), the ratios, and the exact McNemar
test on the paired held-out cases (only the cases one model gets right and the other wrong count).

    PYTHONPATH=. python benchmarks/digits_recipe.py [--fold 0] [--batch 64] [--epochs 90] [--every 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_digits(folder: Path, every: int) -> dict[str, int]:
    """Write every ``every``-th digit as a 32x32 8-bit PNG under ``folder/<class>/``; return name -> index."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = {}
    for i in range(0, len(digits.target), every):
        y = int(digits.target[i])
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(np.uint8(digits.images[i] * 255 / 16)).resize((32, 32), Image.BILINEAR)
        big.save(folder / str(y) / f"{i:04d}.png")
        names[f"{i:04d}"] = i
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's own (90)")
    ap.add_argument("--every", type=int, default=1, help="use every k-th of the 1,797 digits")
    ap.add_argument("--set", nargs="*", default=[], help="further overrides (beyond the issue's four)")
    args = ap.parse_args()

    import pandas as pd
    from scipy.stats import binomtest
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from medres.config import load_config
    from medres.train import run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index = write_digits(tmp / "digits", args.every)
        overrides = [f"data.image_folder={tmp / 'digits'}", "model.num_classes=10", "data.patch_size=[32,32]",
                     f"train.batch_size={args.batch}", f"output.dir={tmp / 'runs'}", *args.set]
        if args.epochs is not None:
            overrides.append(f"train.epochs={args.epochs}")
        cfg = load_config(ROOT / "configs" / "imagenet_resnet50.yaml", overrides)
        t0 = time.perf_counter()
        result = run(cfg, folds=[args.fold], quiet=True, evaluate=False)
        seconds = time.perf_counter() - t0
        run_dir = tmp / "runs" / cfg.output.name
        pred = pd.read_parquet(run_dir / f"fold_{args.fold}" / "predictions.parquet")
        folds = pd.read_csv(run_dir / "folds.csv")
        metrics = result.metrics[args.fold]

    prob_cols = [c for c in pred.columns if c.startswith("p_")]
    classes = np.array([int(c[2:]) for c in prob_cols])
    medres_pred = classes[pred[prob_cols].to_numpy().argmax(axis=1)]

    digits = load_digits()
    key = folds["patient_id"].astype(str).str[-4:].map(index)
    held = pred["case_id"].astype(str).str[-4:].map(index).to_numpy()  # digit index of each held-out row
    train_idx = np.array(sorted(set(key) - set(held)))
    scaler = StandardScaler().fit(digits.data[train_idx])
    xtr, xte = scaler.transform(digits.data[train_idx]), scaler.transform(digits.data[held])
    ytr, yte = digits.target[train_idx], digits.target[held]
    if not np.array_equal(classes[pred["y_true"].to_numpy().astype(int)], yte):
        raise SystemExit("the held-out rows and the digits do not line up")
    right = {"medres ResNet-50 recipe": medres_pred == yte,
             "logistic regression": LogisticRegression(max_iter=5000).fit(xtr, ytr).predict(xte) == yte,
             "linear SVM": LinearSVC(max_iter=20000).fit(xtr, ytr).predict(xte) == yte}

    print(f"digits: {len(index)} images, fold {args.fold}: {len(train_idx)} training (incl. inner "
          f"validation), {len(held)} held out; batch {args.batch}, lr scaled to "
          f"{cfg.optim.lr * args.batch / (cfg.optim.reference_batch_size or args.batch):.4g}, "
          f"{len(metrics)} epochs run ({seconds / 60:.1f} min)")
    vl = metrics["val_loss"]
    print(f"val loss first/last/max: {vl.iloc[0]:.3f} / {vl.iloc[-1]:.3f} / {vl.max():.3f}")
    for name, ok in right.items():
        lo, hi = binomtest(int(ok.sum()), len(ok)).proportion_ci(method="wilson")
        print(f"held-out accuracy  {name}: {ok.mean():.3f} ({int(ok.sum())}/{len(ok)}; "
              f"Wilson 95% {lo:.3f}-{hi:.3f})")
    ours = right["medres ResNet-50 recipe"]
    for name in ("logistic regression", "linear SVM"):
        # exact McNemar: only the cases one model gets right and the other wrong say which is better
        b, c = int(np.sum(ours & ~right[name])), int(np.sum(~ours & right[name]))
        p = binomtest(b, b + c).pvalue if b + c else 1.0
        print(f"medres vs {name}: ratio {ours.mean() / right[name].mean():.3f}; only medres right {b}, only "
              f"{name} right {c}; exact McNemar p = {p:.3g}")


if __name__ == "__main__":
    main()
