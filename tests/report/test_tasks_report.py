"""The report per task: a synthetic run with multilabel findings and a regression target (known truth).

Every number is checked against scikit-learn / scipy / numpy, or against the metrics functions the
report is meant to use on the same rows; the HTML is opened in Chromium as the other report tests do.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import pearsonr
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from medres.errors import DataError
from medres.metrics.multilabel import multilabel_metrics
from medres.metrics.regression import regression_summary
from medres.report import build_bundle, load_run
from medres.report.tasks import label_thresholds
from tests.report.synthetic_run import FINDINGS, FOLD0_THRESHOLDS, patient_id, write_synthetic_run
from tests.report.test_browser import browser  # noqa: F401 - the Chromium fixture

RESAMPLES = 200


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("tasks"), with_seg=False, tasks=True,
                               bootstrap_resamples=RESAMPLES)


@pytest.fixture(scope="module")
def bundle(task_run):
    return build_bundle(load_run(task_run), task_run.parent / "tasks_report")


@pytest.fixture(scope="module")
def summary(bundle):
    return json.loads((bundle.output / "summary.json").read_text())


@pytest.fixture(scope="module")
def records(summary):
    return pd.DataFrame(summary["records"])


@pytest.fixture(scope="module")
def preds(task_run):
    return load_run(task_run).predictions


def one(records: pd.DataFrame, **where) -> pd.Series:
    m = np.ones(len(records), bool)
    for k, v in where.items():
        col = records[k]
        m &= col.str.contains(v[1:], regex=False).to_numpy() if isinstance(v, str) and v[:1] == "~" else (
            col == v).to_numpy()
    part = records[m]
    assert len(part) == 1, (where, part[["scope", "class", "metric", "ci_method"]])
    return part.iloc[0]


def known(preds: pd.DataFrame, c: str) -> pd.DataFrame:
    return preds[preds[f"y_{c}"].notna()]


def test_multilabel_per_label_and_averages_against_sklearn(preds, records):
    for c in FINDINGS:
        k = known(preds, c)
        y, p = k[f"y_{c}"].to_numpy(int), k[f"p_{c}"].to_numpy()
        boot = one(records, scope="pooled", head="findings", **{"class": c}, metric="auroc",
                   ci_method="~bootstrap")
        delong = one(records, scope="pooled", head="findings", **{"class": c}, metric="auroc",
                     ci_method="~DeLong")
        assert boot["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert delong["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert delong["ci_low"] < delong["value"] < delong["ci_high"]
        ap = one(records, scope="pooled", head="findings", **{"class": c}, metric="average_precision")
        assert ap["value"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        prev = one(records, scope="pooled", head="findings", **{"class": c}, metric="prevalence")
        assert prev["value"] == pytest.approx(y.mean()) and prev["n"] == len(k) and prev["n_pos"] == y.sum()
    assert preds["y_effusion"].isna().sum() > 0  # unknown cells are left out and said so
    assert "unknown left out" in one(records, scope="pooled", head="findings", **{"class": "effusion"},
                                     metric="prevalence")["note"]
    macro = one(records, scope="pooled", head="findings", **{"class": "macro"}, metric="auroc")
    per = [roc_auc_score(known(preds, c)[f"y_{c}"], known(preds, c)[f"p_{c}"]) for c in FINDINGS]
    assert macro["value"] == pytest.approx(np.mean(per), abs=1e-12)
    y = preds[[f"y_{c}" for c in FINDINGS]].to_numpy()
    s = preds[[f"p_{c}" for c in FINDINGS]].to_numpy()
    cells = ~np.isnan(y)
    micro = one(records, scope="pooled", head="findings", **{"class": "micro"}, metric="auroc")
    assert micro["value"] == pytest.approx(roc_auc_score(y[cells], s[cells]), abs=1e-12)
    micro_ap = one(records, scope="pooled", head="findings", **{"class": "micro"}, metric="average_precision")
    assert micro_ap["value"] == pytest.approx(average_precision_score(y[cells], s[cells]), abs=1e-12)
    # the intervals are those of the metrics function on the same rows and seed
    ref = multilabel_metrics(y, s, preds["patient_id"], labels=FINDINGS, n_resamples=RESAMPLES, seed=0)
    assert macro["ci_low"] == pytest.approx(ref.macro_auroc.ci_low)
    assert macro["ci_high"] == pytest.approx(ref.macro_auroc.ci_high)
    # one record set per fold, on that fold's cases
    for f in sorted(preds["fold"].unique()):
        part = preds[preds["fold"] == f]
        kp = part[part["y_opacity"].notna()]
        r = one(records, scope="fold", fold=str(f), head="findings", **{"class": "opacity"}, metric="auroc",
                ci_method="~bootstrap")
        assert r["value"] == pytest.approx(roc_auc_score(kp["y_opacity"], kp["p_opacity"]), abs=1e-12)


def test_operating_points_from_calibration_json_else_half(task_run, preds, records, summary):
    ops = pd.DataFrame(summary["tasks"]["findings"]["operating_points"])
    for c in FINDINGS:
        got = ops[ops["label"] == c].set_index("fold")["threshold"]
        assert got[0] == FOLD0_THRESHOLDS[c]
        assert (got.drop(index=0) == 0.5).all()
        assert ops[ops["label"] == c].set_index("fold").loc[1, "source"].startswith("default 0.5")
        k = known(preds, c)
        thr = np.where(k["fold"] == 0, FOLD0_THRESHOLDS[c], 0.5)
        y = k[f"y_{c}"].to_numpy(int)
        called = (k[f"p_{c}"].to_numpy() >= thr).astype(int)
        sens = one(records, scope="pooled", head="findings", **{"class": c}, metric="sensitivity")
        spec = one(records, scope="pooled", head="findings", **{"class": c}, metric="specificity")
        ppv = one(records, scope="pooled", head="findings", **{"class": c}, metric="ppv")
        assert sens["value"] == pytest.approx(called[y == 1].mean())
        assert spec["value"] == pytest.approx(1 - called[y == 0].mean())
        assert ppv["value"] == pytest.approx(y[called == 1].mean())
        assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]
        assert "else 0.5" in sens["note"]  # the report says where the thresholds came from
    # without calibration.json anywhere: 0.5 for every fold
    from medres.config.tasks import MultilabelTask

    task = MultilabelTask(type="multilabel", name="findings", columns=FINDINGS)
    bare = label_thresholds(task_run.parent / "no_such_run", task, [0, 1])
    assert (bare["threshold"] == 0.5).all() and len(bare) == 2 * len(FINDINGS)


def test_calibration_per_label(preds, records):
    for c in FINDINGS:
        k = known(preds, c)
        y = k[f"y_{c}"].to_numpy(int)
        used = one(records, scope="calibration", head="findings", **{"class": c}, metric="brier",
                   subgroup="~calibrated (used")
        assert used["value"] == pytest.approx(brier_score_loss(y, k[f"p_{c}"]), abs=1e-12)
        raw = one(records, scope="calibration", head="findings", **{"class": c}, metric="brier",
                  subgroup="~uncalibrated")
        p_raw = 1 / (1 + np.exp(-k[f"logit_{c}"].to_numpy()))
        assert raw["value"] == pytest.approx(brier_score_loss(y, p_raw), abs=1e-12)
        assert used["ci_low"] <= used["value"] <= used["ci_high"]


def test_cooccurrence_table(preds, summary):
    rows = pd.DataFrame(summary["tasks"]["findings"]["cooccurrence"]).set_index(["given", "label"])
    for a in FINDINGS:
        for b in FINDINGS:
            both = preds[preds[f"y_{a}"].notna() & preds[f"y_{b}"].notna()]
            r = rows.loc[(a, b)]
            assert r["n_both_known"] == len(both)
            assert r["n_both_positive"] == int(((both[f"y_{a}"] == 1) & (both[f"y_{b}"] == 1)).sum())
            assert r["p_given"] == pytest.approx((both.loc[both[f"y_{a}"] == 1, f"y_{b}"]).mean())


def test_regression_against_sklearn_scipy_and_numpy(preds, records):
    y, p = preds["y_heart"].to_numpy(), preds["pred_heart"].to_numpy()
    g = preds["patient_id"].to_numpy()

    def value(metric: str, how: str = "~") -> pd.Series:
        return one(records, scope="pooled", head="heart", **{"class": "ctr"}, metric=metric, ci_method=how)

    assert value("mae")["value"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)
    assert value("rmse")["value"] == pytest.approx(math.sqrt(mean_squared_error(y, p)), abs=1e-12)
    assert value("r2")["value"] == pytest.approx(r2_score(y, p), abs=1e-10)
    assert value("pearson_r", "~Fisher")["value"] == pytest.approx(pearsonr(y, p)[0], abs=1e-10)
    ccc = 2 * np.cov(y, p, bias=True)[0, 1] / (y.var() + p.var() + (y.mean() - p.mean()) ** 2)
    assert value("ccc", "~Fisher")["value"] == pytest.approx(ccc, abs=1e-10)
    d = p - y
    assert value("bias", "~t on")["value"] == pytest.approx(d.mean(), abs=1e-12)
    assert value("loa_upper", "~Carkeet")["value"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    slope, intercept = np.polyfit(p, y, 1)
    assert value("calibration_slope")["value"] == pytest.approx(slope, abs=1e-8)
    assert value("calibration_intercept")["value"] == pytest.approx(intercept, abs=1e-8)
    cover = value("interval_coverage")
    inside = (preds["pred_heart_lo"] <= preds["y_heart"]) & (preds["y_heart"] <= preds["pred_heart_hi"])
    assert cover["value"] == pytest.approx(inside.mean()) and "nominal 0.9" in cover["note"]
    assert cover["ci_low"] <= cover["value"] <= cover["ci_high"]
    # the intervals are the regression module's on the same rows and seed
    ref = regression_summary(y, p, g, lo=preds["pred_heart_lo"], hi=preds["pred_heart_hi"], nominal=0.9,
                             n_resamples=RESAMPLES, seed=0)
    mae = value("mae", "~bootstrap")
    assert (mae["ci_low"], mae["ci_high"]) == pytest.approx((ref.bootstrap["mae"].ci_low,
                                                              ref.bootstrap["mae"].ci_high))
    ba = value("loa_lower", "~Carkeet")
    assert (ba["ci_low"], ba["ci_high"]) == pytest.approx((ref.bland_altman.lower.ci_low,
                                                            ref.bland_altman.lower.ci_high))


def test_subgroups_per_label_and_per_target(preds, records):
    sub = records[(records["scope"] == "subgroup") & (records["head"] == "findings")]
    assert set(sub["class"]) == set(FINDINGS)
    for c in FINDINGS:
        for level in ("F", "M"):
            part = known(preds[preds["sex"] == level], c)
            y = part[f"y_{c}"].to_numpy(int)
            r = one(sub, subgroup=f"sex={level}", **{"class": c}, metric="auroc", ci_method="~bootstrap")
            assert r["value"] == pytest.approx(roc_auc_score(y, part[f"p_{c}"]), abs=1e-12)
    # a level below min_positives is not estimable, with its counts
    small = sub[sub["note"].str.startswith("not estimable")]
    assert len(small) and small["value"].isna().all()
    reg = records[(records["scope"] == "subgroup") & (records["head"] == "heart")]
    part = preds[preds["site"] == "north"]
    r = one(reg, subgroup="site=north", metric="mae")
    assert r["value"] == pytest.approx(mean_absolute_error(part["y_heart"], part["pred_heart"]), abs=1e-12)
    assert r["n"] == len(part)


def test_html_has_a_section_per_task_and_no_identifier(bundle, task_run):
    html = (bundle.output / "report.html").read_text()
    for anchor in ("task-findings", "task-heart"):
        assert f'<section id="{anchor}">' in html and f'href="#{anchor}"' in html
    assert "Co-occurrence" in html and "Bland-Altman" in html and "prediction-interval coverage" in html
    assert "patient-" not in html or "SECRETPAT" not in html
    exported = pd.read_csv(bundle.output / "predictions.csv")
    assert {"y_opacity", "p_opacity", "pred_heart", "y_heart", "pred_heart_lo"} <= set(exported.columns)
    for path in bundle.output.rglob("*"):
        if path.is_file() and "private" not in path.parts:
            assert patient_id(0) not in path.read_text(errors="ignore"), path


def test_single_label_part_is_the_same_with_and_without_tasks(tmp_path, records, summary):
    """The tasks add records and a section; the single-label records stay those of a run without them."""
    plain = write_synthetic_run(tmp_path, with_seg=False, bootstrap_resamples=RESAMPLES)
    out = build_bundle(load_run(plain), tmp_path / "report")
    alone = json.loads((out.output / "summary.json").read_text())
    assert "tasks" not in alone and set(summary["tasks"]) == {"findings", "heart"}
    cls = records[records["head"] == "classification"].drop(columns="note").reset_index(drop=True)
    ref = pd.DataFrame(alone["records"]).drop(columns="note")
    pd.testing.assert_frame_equal(cls, ref[ref["head"] == "classification"].reset_index(drop=True))
    assert "task-findings" not in (out.output / "report.html").read_text()


def test_a_target_without_known_values_is_not_estimable(task_run, tmp_path):
    run = load_run(task_run)
    run.predictions = run.predictions.assign(y_heart=np.nan)
    out = build_bundle(run, tmp_path / "report")
    r = one(out.records, head="heart", metric="mae")
    assert math.isnan(r["value"]) and r["note"].startswith("not estimable") and r["n"] == 0
    assert "not estimable: 0 cases" in (out.output / "report.html").read_text()
    macro = one(out.records, scope="pooled", head="findings", **{"class": "macro"}, metric="auroc")
    assert macro["value"] > 0.5


def test_tables_without_the_task_columns_are_a_data_error(task_run):
    run = load_run(task_run)
    run.predictions = run.predictions.drop(columns=["pred_heart"])
    with pytest.raises(DataError, match="task 'heart'.*pred_heart"):
        build_bundle(run, task_run.parent / "broken_report")


def test_task_figures_draw_text_from_data_as_written():
    """A unit or label like ``$\\frac{a}$`` (broken mathtext) is drawn as text, never parsed."""
    import medres.report.figures as figures

    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    p = y + rng.normal(0, 0.3, 40)
    unit = "$\\frac{a}$ ^_"
    ba = figures.bland_altman_figure((y + p) / 2, p - y, {"bias $x$": (0.0, -0.1, 0.1)}, unit=unit)
    cal = figures.regression_calibration_figure(y, p, np.array([-1.0, 1.0]), np.array([-1.1, 0.9]),
                                                np.array([20, 20]), intercept=0.0, slope=1.0, unit=unit)
    assert ba.startswith("data:image/png;base64,") and cal.startswith("data:image/png;base64,")


@pytest.mark.browser
def test_task_report_renders_in_chromium(bundle, browser):  # noqa: F811 - the imported fixture
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1,
                 mobile=False)
    browser.send("Page.navigate", url=(bundle.output / "report.html").resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    state = json.loads(browser.send("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
        images: Array.from(document.querySelectorAll('section[id^=task-] img'))
                     .map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
        sections: Array.from(document.querySelectorAll('section[id^=task-]')).map(s => s.id),
        wide: Array.from(document.querySelectorAll('section[id^=task-] .tablewrap'))
                   .filter(w => w.scrollWidth > w.clientWidth).length})""")["result"]["value"])
    assert state["sections"] == ["task-findings", "task-heart"]
    assert len(state["images"]) == len(FINDINGS) + 2  # reliability per label; Bland-Altman, calibration
    assert [i["alt"] for i in state["images"] if not i["ok"]] == []
    assert state["wide"] == 0
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    fetched = [e["params"]["request"]["url"] for e in browser.events
               if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:")) for u in fetched), fetched


# -- the held-out test split (manifest split = test) of a run with no single-label task


def _tasks_only(run: Path) -> None:
    """Drop the single-label task from the run's config.yaml: findings and heart only."""
    path = run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["tasks"] = [t for t in cfg["tasks"] if t["type"] in ("multilabel", "regression")]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _add_test_masks(run: Path) -> None:
    """Each fold's test masks: the reference shifted by the fold number along x; the fold ensemble's
    (``ensemble/``) the reference as it is."""
    for k, fd in enumerate(sorted(run.glob("fold_*"))):
        table = pd.read_parquet(fd / "test_predictions.parquet")
        for case, mask in zip(table["case_id"], table["mask"]):
            ref = nib.load(mask)
            nib.save(nib.Nifti1Image(np.roll(np.asarray(ref.dataobj), k, axis=0), ref.affine),
                     fd / "seg" / f"test_{case}.nii.gz")
        table["seg_path"] = [f"{fd.name}/seg/test_{c}.nii.gz" for c in table["case_id"]]
        table.to_parquet(fd / "test_predictions.parquet", index=False)
    (run / "ensemble" / "seg").mkdir(parents=True)
    for case, mask in zip(table["case_id"], table["mask"]):
        shutil.copy(mask, run / "ensemble" / "seg" / f"{case}.nii.gz")
    table.assign(fold=-1, seg_path=[f"ensemble/seg/{c}.nii.gz" for c in table["case_id"]]).to_parquet(
        run / "ensemble" / "test_predictions.parquet", index=False)


@pytest.fixture(scope="module")
def test_split_bundle(tmp_path_factory):
    from medres.evaluation import segmentation_cases, test_segmentation_cases

    run_dir = write_synthetic_run(tmp_path_factory.mktemp("tasks_test"), tasks=True, n_test_patients=12,
                                  bootstrap_resamples=RESAMPLES)
    _tasks_only(run_dir)
    _add_test_masks(run_dir)
    run = load_run(run_dir)
    out = build_bundle(run, run_dir.parent / "report", seg_cases=segmentation_cases(run),
                       test_seg_cases=test_segmentation_cases(run))
    return run, out


def test_a_tasks_only_report_scores_each_task_on_the_test_split(test_split_bundle):
    run, out = test_split_bundle
    test = run.test
    records = pd.DataFrame(json.loads((out.output / "summary.json").read_text())["records"])
    folds = sorted(test["fold"].unique())
    assert len(folds) == 3
    thr = {k: FOLD0_THRESHOLDS if k == 0 else dict.fromkeys(FINDINGS, 0.5) for k in folds}
    mean = test.groupby("case_id", sort=False).agg(
        {"patient_id": "first", **{f"y_{c}": "first" for c in FINDINGS}, "y_heart": "first",
         **{f"p_{c}": "mean" for c in FINDINGS}, "pred_heart": "mean", "pred_heart_lo": "mean",
         "pred_heart_hi": "mean"})
    models = [("test", str(k), test[test["fold"] == k], thr[k]) for k in folds]
    models.append(("test_ensemble", "mean of folds", mean,
                   {c: np.mean([thr[k][c] for k in folds]) for c in FINDINGS}))
    for scope, fold, df, cut in models:
        for c in FINDINGS:
            kn = known(df, c)
            y, p = kn[f"y_{c}"].to_numpy(int), kn[f"p_{c}"].to_numpy()
            assert 0 < y.sum() < len(y)
            auroc = one(records, scope=scope, fold=fold, head="findings", metric="auroc",
                        ci_method="~bootstrap", **{"class": c})
            assert auroc["value"] == pytest.approx(roc_auc_score(y, p)) and auroc["n"] == len(y)
            sens = one(records, scope=scope, fold=fold, head="findings", metric="sensitivity", **{"class": c})
            assert sens["value"] == pytest.approx(((p >= cut[c]) & (y == 1)).sum() / y.sum())
            assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]
        y, p = df["y_heart"].to_numpy(), df["pred_heart"].to_numpy()
        mae = one(records, scope=scope, fold=fold, head="heart", metric="mae")
        assert mae["value"] == pytest.approx(mean_absolute_error(y, p)) and mae["ci_low"] < mae["value"]
        cover = one(records, scope=scope, fold=fold, head="heart", metric="interval_coverage")
        inside = (df["pred_heart_lo"] <= df["y_heart"]) & (df["y_heart"] <= df["pred_heart_hi"])
        assert cover["value"] == pytest.approx(inside.mean())
    # the ensemble's AUROC is not any fold's: the mean of their probabilities per case
    ens = one(records, scope="test_ensemble", head="findings", metric="auroc", ci_method="~bootstrap",
              **{"class": "opacity"})
    assert ens["value"] not in {one(records, scope="test", fold=str(k), head="findings", metric="auroc",
                                    ci_method="~bootstrap", **{"class": "opacity"})["value"] for k in folds}
    summary = json.loads((out.output / "summary.json").read_text())["tasks"]
    assert {r["metric"] for r in summary["heart"]["test"]} >= {"mae", "rmse", "interval_coverage"}
    held_out = records["scope"].isin(["test", "test_ensemble"])
    assert len(summary["findings"]["test"]) == len(records[(records["head"] == "findings") & held_out])


def test_a_tasks_only_report_shows_the_test_split_tables(test_split_bundle):
    run, out = test_split_bundle
    html = (out.output / "report.html").read_text()
    assert 'id="classification"' not in html  # no single-label task
    for anchor in ("task-findings", "task-heart"):
        section = html.split(f'<section id="{anchor}">')[1].split("</section>")[0]
        assert "Held-out test set (manifest split = test)" in section
        assert "fold 2 model" in section and "mean of the fold models" in section
    seg = html.split('<section id="test-segmentation">')[1].split("</section>")[0]
    assert "fold ensemble (mean softmax)" in seg and "fold 1 model" in seg
    assert 'href="#test-segmentation"' in html
    records = out.records
    ens = records[(records["scope"] == "test_ensemble") & (records["head"] == "segmentation")
                  & (records["metric"] == "dice")]
    assert len(ens) and (ens["value"] == 1.0).all()  # the ensemble's masks are the references
    assert (records.loc[(records["scope"] == "test") & (records["head"] == "segmentation")
                        & (records["metric"] == "dice") & (records["fold"] == "1"), "value"] < 1).all()
    assert patient_id(len(FINDINGS)) not in html
