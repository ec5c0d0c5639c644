"""The report's conformal sets and coverage, recomputed from the run folder's own tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from medres.metrics.proportions import clustered_proportion_interval
from medres.report import load_run
from medres.report.conformal import conformal_section
from tests.report.synthetic_run import LABELS


def _by_hand(run, alpha: float, mondrian: bool) -> dict[str, str]:
    """Each held-out case's LAC set from its fold's inner validation, with numpy's quantile."""
    cols = [f"p_{c}" for c in LABELS]
    out = {}
    for f, held in run.predictions.groupby("fold"):
        val = run.inner_val[run.inner_val["fold"] == f]
        s = 1 - val[cols].to_numpy()[np.arange(len(val)), val["y_true"].to_numpy()]
        y = val["y_true"].to_numpy()
        q = []
        for c in range(len(LABELS)):
            part = s[y == c] if mondrian else s
            n = part.size
            level = math.ceil((n + 1) * (1 - alpha)) / n
            q.append(math.inf if level > 1 else np.quantile(part, level, method="inverted_cdf"))
        member = 1 - held[cols].to_numpy() <= np.array(q)
        out.update({case: "|".join(c for c, m in zip(LABELS, row) if m)
                    for case, row in zip(held["case_id"], member)})
    return out


def test_sets_and_coverage_in_the_bundle(synthetic_run, bundle_dir):
    run = load_run(synthetic_run)
    expected = _by_hand(run, 0.1, mondrian=False)
    table = pd.read_csv(bundle_dir / "predictions.csv", keep_default_na=False)
    assert dict(zip(table["case_id"], table["conformal_set"])) == expected

    y = run.predictions["y_true"].map(dict(enumerate(LABELS)))
    covered = np.array([lab in expected[c].split("|") for c, lab in zip(run.predictions["case_id"], y)])
    ref = clustered_proportion_interval(covered, run.predictions["patient_id"], 0.95)
    recs = pd.DataFrame(json.loads((bundle_dir / "summary.json").read_text())["records"])
    conf = recs[recs["scope"] == "conformal"].set_index(["subgroup", "fold", "metric"])
    row = conf.loc[("all", "pooled", "conformal_coverage")]
    assert (row["value"], row["ci_low"], row["ci_high"]) == (ref.estimate, ref.ci_low, ref.ci_high)
    sizes = np.array([len(expected[c].split("|")) if expected[c] else 0 for c in run.predictions["case_id"]])
    assert conf.loc[("all", "pooled", "conformal_mean_set_size"), "value"] == sizes.mean()
    # per subgroup level: the same recomputation on that level's cases
    north = (run.predictions["site"] == "north").to_numpy()
    assert conf.loc[("site=north", "pooled", "conformal_coverage"), "value"] == covered[north].mean()
    html = (bundle_dir / "report.html").read_text()
    assert "Conformal prediction sets" in html and "SECRETPAT" not in html


def test_mondrian_sets_and_a_subgroup_below_target(synthetic_run):
    run = load_run(synthetic_run)
    cfg = run.config.model_copy(deep=True)
    cfg.evaluate.conformal_mondrian = True
    cfg.evaluate.conformal_alpha = 0.2
    cfg.evaluate.bootstrap_resamples = 100
    expected = _by_hand(run, 0.2, mondrian=True)
    y = run.predictions["y_true"].map(dict(enumerate(LABELS)))
    covered = [lab in expected[c].split("|") for c, lab in zip(run.predictions["case_id"], y)]
    # a manifest column that singles out the uncovered cases: coverage holds overall, fails there
    preds = run.predictions.assign(grp=np.where(covered, "easy", "hard"))
    cfg.evaluate.subgroups = ["grp"]
    recs, sets, ctx = conformal_section(preds, run.inner_val, cfg, seed=0)
    assert dict(zip(preds["case_id"], sets)) == expected
    recs = pd.DataFrame(recs)
    cov = recs.query("metric == 'conformal_coverage' and fold == 'pooled'").set_index("subgroup")
    assert {"true class=normal", "true class=nodule"} <= set(cov.index)
    assert cov.loc["all", "ci_high"] >= 0.8 and "below the target" not in cov.loc["all", "note"]
    assert cov.loc["grp=hard", "value"] == 0 and cov.loc["grp=hard", "ci_high"] < 0.8
    assert "below the target" in cov.loc["grp=hard", "note"]
    assert "below the target" not in cov.loc["grp=easy", "note"]
    assert "Mondrian" in ctx["note"] and "<td>yes</td>" in str(ctx["table"])


def test_turned_off(synthetic_run):
    run = load_run(synthetic_run)
    cfg = run.config.model_copy(deep=True)
    cfg.evaluate.conformal_alpha = None
    assert conformal_section(run.predictions, run.inner_val, cfg) == ([], None, None)
