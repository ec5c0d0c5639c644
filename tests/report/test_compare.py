"""``--compare`` with several runs: each pair as if compared alone, Holm across pairs, net benefit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from medres.errors import DataError
from medres.evaluate import main
from medres.metrics.decision import decision_curve
from medres.report import binary_task, load_run
from medres.report.compare import comparisons
from tests.report.synthetic_run import write_synthetic_run


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    return [write_synthetic_run(root / name, name=name, with_seg=False, seed=seed, separation=sep,
                                bootstrap_resamples=200)
            for name, seed, sep in (("a", 0, 2.0), ("b", 1, 1.0), ("c", 2, 0.3))]


def _holm(p: list[float]) -> np.ndarray:
    """Holm's step-down adjustment written out: sorted p times (m - rank), running maximum, at most 1."""
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate([min(1.0, (m - k) * p[i]) for k, i in enumerate(order)])
    out = np.empty(m)
    out[order] = adjusted
    return out


def test_each_pair_equals_its_two_run_comparison_and_holm(three_runs):
    runs = [load_run(r) for r in three_runs]
    task = binary_task(runs[0].config)
    recs, ctx = comparisons(runs, task, seed=0)
    df = pd.DataFrame(recs)
    cols = ["metric", "value", "ci_low", "ci_high", "ci_method", "n", "n_pos"]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        label = f"{'abc'[i]} - {'abc'[j]}"
        alone = pd.DataFrame(comparisons([runs[i], runs[j]], task, seed=0)[0])
        assert set(alone["subgroup"]) == {label}
        mine = df[(df["subgroup"] == label) & (df["metric"] != "delong_p_holm")]
        pd.testing.assert_frame_equal(mine[cols].reset_index(drop=True), alone[cols].reset_index(drop=True))
    p = df[df["metric"] == "delong_p_value"]["value"].tolist()
    holm = df[df["metric"] == "delong_p_holm"]["value"].to_numpy()
    assert len(p) == 3 and len(set(p)) == 3
    np.testing.assert_allclose(holm, multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(holm, _holm(p), rtol=0, atol=1e-15)
    assert "Holm-adjusted across the 3 pairs" in ctx["note"] and "p (Holm)" in str(ctx["table"])
    assert ctx["other_name"] == "b, c"


def test_net_benefit_difference_and_its_interval(three_runs):
    runs = [load_run(r) for r in three_runs[:2]]
    cfg = runs[0].config
    task = binary_task(cfg)
    df = pd.DataFrame(comparisons(runs, task, seed=0)[0])
    a = runs[0].predictions.set_index("case_id")
    b = runs[1].predictions.set_index("case_id").loc[a.index]
    y = (a["y_true"] == task.index).to_numpy().astype(int)
    assert cfg.evaluate.net_benefit_thresholds == [0.1, 0.2, 0.3]
    for t in cfg.evaluate.net_benefit_thresholds:
        rec = df[df["metric"] == f"net_benefit_at_{t:g}_difference"].iloc[0]
        nb_a, nb_b = (decision_curve(y, r[task.score_col], [t]).model[0] for r in (a, b))
        ref = nb_a - nb_b
        assert rec["value"] == pytest.approx(ref, abs=1e-12)
        assert rec["ci_low"] < rec["value"] < rec["ci_high"]
        assert rec["ci_method"].startswith("paired patient bootstrap")


def test_only_cases_all_runs_predicted(three_runs, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(three_runs[2], c)
    shutil.rmtree(c / "fold_1")  # c has not finished fold 1
    runs = [load_run(three_runs[0]), load_run(three_runs[1]), load_run(c)]
    recs, ctx = comparisons(runs, binary_task(runs[0].config), seed=0)
    n = len(runs[2].predictions)
    assert n < len(runs[0].predictions)
    assert {r["n"] for r in recs} == {n}  # the a - b pair too: only the cases all three predicted
    patients = runs[2].predictions["patient_id"].nunique()
    assert f"{n} cases of {patients} patients predicted by all 3 runs" in ctx["note"]
    assert "c: folds [1] have no predictions yet" in ctx["note"]


def test_no_shared_patient_is_refused(three_runs, tmp_path):
    c = tmp_path / "c"
    shutil.copytree(three_runs[2], c)
    for fold_dir in c.glob("fold_*"):
        p = pd.read_parquet(fold_dir / "predictions.parquet")
        p["case_id"] = "other_" + p["case_id"]
        p.to_parquet(fold_dir / "predictions.parquet")
    runs = [load_run(three_runs[0]), load_run(three_runs[1]), load_run(c)]
    with pytest.raises(DataError, match="the 3 runs to compare share 0 cases of 0 patients") as err:
        comparisons(runs, binary_task(runs[0].config), seed=0)
    assert "c: 36 cases of 30 patients" in str(err.value)


def test_cli_compares_three_runs(three_runs, tmp_path):
    out = tmp_path / "out"
    a, b, c = map(str, three_runs)
    argv = ["--run", a, "--output", str(out), "--compare", b, c, "--gallery", "0", "--net-benefit-at", "0.15"]
    assert main(argv) == 0
    recs = pd.DataFrame(json.loads((out / "summary.json").read_text())["records"])
    comp = recs[recs["scope"] == "comparison"]
    assert set(comp["subgroup"]) == {"a - b", "a - c", "b - c"}
    assert (comp["metric"] == "delong_p_holm").sum() == 3
    nb = comp[comp["metric"].str.startswith("net_benefit")]
    assert set(nb["metric"]) == {"net_benefit_at_0.15_difference"} and len(nb) == 3
    html = (out / "report.html").read_text()
    assert "Comparison with b, c" in html and "SECRETPAT" not in html


def test_cli_refuses_a_threshold_outside_0_1(three_runs, capsys):
    with pytest.raises(SystemExit):
        main(["--run", str(three_runs[0]), "--compare", str(three_runs[1]), "--net-benefit-at", "1.5"])
    assert "strictly between 0 and 1" in capsys.readouterr().err
