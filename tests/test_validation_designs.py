"""Validation designs end to end: conformal sets on the test split (calibrated on the out-of-fold
predictions), temporal validation trained and resumed, leave-site-out on three tiny CXR sites."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from medres.config import load_config
from medres.cv import TRAIN_ONLY
from medres.data.demo.cxr import generate_cxr_demo
from medres.report import load_run
from medres.report.conformal import TEST_ENSEMBLE, conformal_test_split_section
from tests.report.synthetic_run import LABELS, write_synthetic_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=4", "data.spacing=[12,12]", "data.patch_size=[32,32]",
        "model.name=dual_resnet10", "model.options.base_channels=4", "data.cache=memory",
        "evaluate.bootstrap_resamples=100", "output.tracking=[]", "cv.val_fraction=0.34"]


def _lac_sets(calibration: pd.DataFrame, probs: np.ndarray, alpha: float) -> np.ndarray:
    """Split-conformal LAC sets by hand: numpy's inverted-CDF quantile at ceil((n + 1)(1 - alpha)) / n."""
    cols = [f"p_{c}" for c in LABELS]
    s = 1 - calibration[cols].to_numpy()[np.arange(len(calibration)), calibration["y_true"].to_numpy()]
    level = math.ceil((s.size + 1) * (1 - alpha)) / s.size
    q = math.inf if level > 1 else np.quantile(s, level, method="inverted_cdf")
    return 1 - probs <= q


# --- 1. conformal sets on the test split ---------------------------------------------------------------

@pytest.fixture(scope="module")
def run_with_test(tmp_path_factory):
    # test patients have one scan each, so the clustered interval is Clopper-Pearson on the scans
    return write_synthetic_run(tmp_path_factory.mktemp("conf"), n_patients=36, n_test_patients=30,
                               with_seg=False, separation=1.0)


def test_test_split_sets_are_calibrated_on_the_out_of_fold_predictions(run_with_test):
    run = load_run(run_with_test)
    cfg = run.config
    alpha = cfg.evaluate.conformal_alpha
    cols = [f"p_{c}" for c in LABELS]
    recs, ctx = conformal_test_split_section(run.predictions, run.test, cfg, seed=0)
    df = pd.DataFrame(recs)
    assert set(df["scope"]) == {"test_conformal"}
    by = df.set_index(["subgroup", "fold", "metric"])
    for f in sorted(run.test["fold"].unique()):
        part = run.test[run.test["fold"] == f]
        member = _lac_sets(run.predictions[run.predictions["fold"] == f], part[cols].to_numpy(), alpha)
        covered = member[np.arange(len(part)), part["y_true"].to_numpy()]
        ref = binomtest(int(covered.sum()), covered.size).proportion_ci(0.95, method="exact")
        row = by.loc[("all", str(f), "conformal_coverage")]
        assert row["value"] == pytest.approx(covered.mean(), abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-9)
        size = by.loc[("all", str(f), "conformal_mean_set_size"), "value"]
        assert size == pytest.approx(member.sum(1).mean())
    # the mean of the fold models: one rule on every out-of-fold prediction
    ens = run.test.groupby("case_id", sort=False).agg({"y_true": "first", "site": "first",
                                                       **{c: "mean" for c in cols}})
    member = _lac_sets(run.predictions, ens[cols].to_numpy(), alpha)
    covered = member[np.arange(len(ens)), ens["y_true"].to_numpy()]
    row = by.loc[("all", TEST_ENSEMBLE, "conformal_coverage")]
    assert (row["value"], row["n"]) == (pytest.approx(covered.mean()), len(ens))
    ref = binomtest(int(covered.sum()), covered.size).proportion_ci(0.95, method="exact")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-9)
    for site in sorted(ens["site"].unique()):
        rows = (ens["site"] == site).to_numpy()
        assert by.loc[(f"site={site}", TEST_ENSEMBLE, "conformal_coverage"), "value"] == pytest.approx(
            covered[rows].mean())
    assert "out-of-fold" in ctx["note"] and "mean of the fold models" in ctx["table"]
    # off, or no test split: nothing
    off = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"conformal_alpha": None})})
    assert conformal_test_split_section(run.predictions, run.test, off) == ([], None)
    assert conformal_test_split_section(run.predictions, None, cfg) == ([], None)


def test_test_split_sets_in_the_report(run_with_test, tmp_path):
    from medres.evaluation import evaluate_run

    report = evaluate_run(run_with_test, tmp_path / "report")
    recs = pd.DataFrame(json.loads((report.parent / "summary.json").read_text())["records"])
    conf = recs[recs["scope"] == "test_conformal"]
    assert {"conformal_coverage", "conformal_mean_set_size"} <= set(conf["metric"])
    html = report.read_text()
    section = html[html.index("Held-out test set (manifest split = test)"):]
    assert "Held-out test set: conformal prediction sets" in section.split("<h2")[0]
    assert "SECRETPAT" not in html


# --- 2. temporal validation, trained and resumed -------------------------------------------------------

@pytest.fixture(scope="module")
def cxr15(tmp_path_factory) -> Path:
    """The CXR demo at 15 patients (18 scans, 3 sites, 5 with an opacity)."""
    out = tmp_path_factory.mktemp("cxr") / "demo"
    generate_cxr_demo(out, n_patients=15, seed=0)
    return out


YEARS = {**{i: 2018 + i % 2 for i in range(1, 8)}, **{i: 2020 for i in range(8, 12)},
         **{i: 2021 for i in range(12, 16)}}  # patient number -> year: 7 before 2020, 4 in 2020, 4 in 2021


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:inner validation")  # 7 patients before the first cutoff
def test_temporal_validation_end_to_end_and_resumed(cxr15, tmp_path):
    df = pd.read_csv(cxr15 / "manifest.csv", dtype=str, keep_default_na=False)
    df["year"] = [str(YEARS[int(p[1:])]) for p in df["patient_id"]]
    for period in ((2018, 2019), (2020,), (2021,)):  # each period has both classes
        labels = set(df.loc[df["year"].astype(int).isin(period), "label"])
        assert labels == {"normal", "opacity"}, period
    manifest = cxr15 / "manifest_years.csv"
    df.to_csv(manifest, index=False)
    year_of = dict(zip(df["case_id"], df["year"].astype(int)))
    cfg = load_config(ROOT / "configs" / "cxr.yaml", [
        f"data.manifest={manifest}", "cv.strategy=temporal", "cv.time_column=year",
        "cv.temporal_cutoffs=[2020,2021]", f"output.dir={tmp_path / 'runs'}", "output.name=temporal", *TINY])
    from medres.train import run

    first = run(cfg, folds=[0], quiet=True)  # stopped after the first period ...
    d = first.run_dir
    folds_before = (d / "folds.csv").read_bytes()
    fold0 = (d / "fold_0" / "metrics.csv").read_bytes()
    result = run(cfg, resume=True, quiet=True)  # ... and resumed: the same periods
    assert (d / "folds.csv").read_bytes() == folds_before
    assert (d / "fold_0" / "metrics.csv").read_bytes() == fold0  # fold 0 not trained again
    assert load_config(d / "config.yaml").cv.folds == 2

    folds = pd.read_csv(d / "folds.csv", dtype={"patient_id": str})
    fold_of = dict(zip(folds["patient_id"], folds["fold"]))
    assert {p: fold_of[f"P{p:04d}"] for p in YEARS} == {
        p: TRAIN_ONLY if y < 2020 else y - 2020 for p, y in YEARS.items()}
    for k in range(2):
        held = pd.read_parquet(d / f"fold_{k}" / "predictions.parquet")
        inner = pd.read_parquet(d / f"fold_{k}" / "inner_val_predictions.parquet")
        held_years = {year_of[c] for c in held["case_id"]}
        assert held_years == {2020 + k}
        training = {p for p, f in fold_of.items() if f < k}  # earlier periods (TRAIN_ONLY included)
        assert set(inner["patient_id"]) <= training
        train_years = df.loc[df["patient_id"].isin(training), "year"].astype(int)
        assert train_years.max() < min(held_years)  # no training case later than a test case
    # the report: each period an external validation, its AUROC recomputed from the run's own table
    records = pd.DataFrame(json.loads((Path(result.report).parent / "summary.json").read_text())["records"])
    groups = records[(records["scope"] == "external_group") & (records["metric"] == "auroc")]
    assert list(groups["subgroup"]) == ["year from 2020 to before 2021", "year from 2021"]
    preds = load_run(d).predictions
    for k, (_, row) in enumerate(groups.iterrows()):
        part = preds[preds["fold"] == k]
        y = (part["y_true"] == 1).to_numpy()
        assert row["value"] == pytest.approx(roc_auc_score(y, part["p_opacity"]), abs=1e-9)
    assert not (records["scope"] == "external_pooled").any()  # periods are not pooled
    html = Path(result.report).read_text()
    assert "External validation: each held-out period" in html and "Temporal validation" in html


# --- 3. leave-site-out on three tiny CXR sites (the benchmark script at smoke size) ----------------------

def _benchmark():
    """benchmarks/leave_site_out.py as a module (registered: its dataclass looks its module up by name)."""
    name = "benchmarks_leave_site_out"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "leave_site_out.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_one_site_per_patient_manifest(tmp_path):
    bench = _benchmark()
    pd.DataFrame({"case_id": ["a1", "a2", "b1", "c1", "c2"], "patient_id": ["A", "A", "B", "C", "C"],
                  "site": ["s1", "s2", "s1", "s3", "s3"]}).to_csv(tmp_path / "manifest.csv", index=False)
    out, dropped = bench.one_site_per_patient(tmp_path / "manifest.csv")
    assert dropped == 1 and list(pd.read_csv(out)["case_id"]) == ["a1", "b1", "c1", "c2"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:inner validation")  # 5 patients per site
def test_leave_site_out_end_to_end_on_three_tiny_sites(tmp_path):
    bench = _benchmark()
    res = bench.leave_site_out(tmp_path, patients=15, overrides=TINY)
    d = res.run_dir
    assert load_config(d / "config.yaml").cv.folds == 3
    sites = ["site_a", "site_b", "site_c"]
    preds = load_run(d).predictions
    for k, site in enumerate(sites):
        held = preds[preds["fold"] == k]
        inner = pd.read_parquet(d / f"fold_{k}" / "inner_val_predictions.parquet")
        assert set(held["site"]) == {site} and site not in set(inner["site"])
        assert not set(inner["patient_id"]) & set(held["patient_id"])
    assert list(res.sites["held out"]) == [f"site = {s}" for s in sites]
    for k, (_, row) in enumerate(res.sites.iterrows()):
        part = preds[preds["fold"] == k]
        y = (part["y_true"] == 1).to_numpy()
        assert row["scans"] == len(part) and row["positives"] == int(y.sum())
        assert row["auroc"][0] == pytest.approx(roc_auc_score(y, part["p_opacity"]), abs=1e-9)
    pooled = res.pooled.set_index("metric")
    assert "auroc" in pooled.index and "groups pooled" in pooled.loc["auroc", "note"]
    text = bench.render(res)
    assert "site = site_c" in text and "pooled AUROC" in text
