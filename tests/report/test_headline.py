"""The headline printed at the end of training and evaluation: the report's numbers, checked
independently from the bundle's tables."""

from __future__ import annotations

import json

import pandas as pd
from sklearn.metrics import roc_auc_score

from medres.evaluate import main
from medres.report.headline import headline
from tests.report.synthetic_run import write_synthetic_run


def test_headline_numbers_match_the_bundle(bundle_dir):
    text = headline(bundle_dir)
    lines = text.splitlines()
    preds = pd.read_csv(bundle_dir / "predictions.csv")
    auroc = roc_auc_score(preds.y_true == 1, preds.p_nodule)
    n_pos = int((preds.y_true == 1).sum())
    auroc_line = next(line for line in lines if line.strip().startswith("AUROC (nodule vs rest)"))
    assert f"{auroc:.3f} [" in auroc_line and f"({n_pos} of {len(preds)} scans nodule; " in auroc_line
    seg = pd.read_csv(bundle_dir / "seg_cases.csv")
    present = seg[~seg["empty"].isin(["both", "reference"])]
    dice_line = next(line for line in lines if line.strip().startswith("Dice nodule"))
    assert f"{present.dice.mean():.3f} [" in dice_line
    expected = f"on the {len(present)} scans whose reference holds it; {seg.dice.mean():.3f} over all "
    expected += str(len(seg))
    assert expected in dice_line
    thr = preds.groupby("fold")["threshold"].first()
    assert f"inner validation: p_nodule >= {thr.min():.3f}-{thr.max():.3f} by fold" in text
    y = preds.y_true == 1
    sens = (preds.y_pred_op[y] == 1).mean()
    assert f"sensitivity {sens:.3f} [" in text
    assert "split audit               passed" in text
    assert lines[-1].split()[-1] == str((bundle_dir / "report.html").resolve())
    assert lines[0].startswith("synth: out-of-fold results (")
    cohort = pd.read_csv(bundle_dir / "cohort.csv", index_col=0)
    assert f"({cohort.loc['scans', 'all']} scans of {cohort.loc['patients', 'all']} patients, 3 folds)" \
        in lines[0]


def test_evaluate_prints_the_headline_and_a_failed_audit(tmp_path, capsys):
    run = write_synthetic_run(tmp_path, n_patients=12, extra_scans=2, with_seg=False)
    folds = pd.read_csv(run / "folds.csv")
    folds.loc[0, "fold"] = (folds.loc[0, "fold"] + 1) % 3  # one patient in another fold than predicted
    folds.to_csv(run / "folds.csv", index=False)
    assert main(["--run", str(run), "--output", str(tmp_path / "out"), "--gallery", "0"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    pooled = [r for r in summary["records"] if r["scope"] == "pooled" and r["metric"] == "auroc"][0]
    value, lo, hi = pooled["value"], pooled["ci_low"], pooled["ci_high"]
    assert f"AUROC (nodule vs rest)    {value:.3f} [{lo:.3f}, {hi:.3f}]" in out
    assert "split audit               FAILED: folds.csv agrees with the predictions (" in out
    assert "Dice" not in out  # no segmentation in this run
    assert out.rstrip().endswith(str((tmp_path / "out" / "report.html").resolve()))
