"""Metrics for cohort evaluation, with honest uncertainty. Importing this package never imports torch.

- classification: `auroc`, `average_precision` (+ `prevalence`), `metrics_at_threshold` (sensitivity,
  specificity, PPV, NPV, balanced accuracy, MCC, F1, LR+, LR-), one-vs-rest and macro forms;
- curves: `roc_curve`, `precision_recall_curve`, `roc_band` (pointwise patient-bootstrap band);
- operating points: `choose_threshold` on validation data, applied unchanged to held-out data;
- calibration: `brier`, `ece` (bin count stated), `reliability_curve`, `calibration_intercept_slope`;
- clinical utility: `decision_curve` (net benefit, treat-all, treat-none);
- segmentation: `binary_segmentation_metrics` / `segmentation_metrics` (Dice, IoU, HD, HD95, ASSD,
  NSD, volumes in mL; spacing-aware; one declared empty-mask policy), `summarise_segmentation` (n_valid);
- uncertainty, counting patients rather than scans: `clustered_proportion_interval` (Clopper-Pearson on
  n / design effect), `auroc_score_interval` (score-type, open at perfect separation),
  `patient_bootstrap_ci` (cluster bootstrap, percentile / BCa, vectorised), `paired_bootstrap_ci`,
  `delong_roc_ci` and `delong_roc_test` (Obuchowski's clustered form with ``groups``), `wilson_interval`;
- conformal prediction sets: `fit_conformal` (split or Mondrian, LAC or APS score), `prediction_sets`,
  `set_coverage` (held-out coverage with the clustered proportion interval, mean set size);
- recalibration: `choose_calibration` (a temperature / Platt map kept only when a likelihood-ratio test
  on patients finds it beats no recalibration);
- records: `to_records` / `MetricRecord` (the long-format rows of the report);
- regression targets (`regression`): MAE, RMSE, R^2, Pearson r and Lin's CCC (Fisher z and patient
  bootstrap), `bland_altman`, `binned_calibration`, `interval_coverage`, `regression_summary` /
  `regression_records`;
- multi-label findings (`multilabel`): per-label, macro and micro AUROC / AP on shared patient
  resamples, `cooccurrence`, `multilabel_metrics` / `multilabel_records`.

Undefined values are NaN with a reason (`UndefinedMetricWarning`), never a substitute such as 0.5.
"""

from medres.metrics.bootstrap import (
    VECTORISED_METRICS,
    BootstrapResult,
    paired_bootstrap_ci,
    patient_bootstrap,
    patient_bootstrap_ci,
)
from medres.metrics.calibration import (
    CalibrationFit,
    ReliabilityCurve,
    brier,
    calibration_intercept_slope,
    choose_calibration,
    ece,
    reliability_curve,
)
from medres.metrics.classification import (
    THRESHOLD_METRICS,
    ConfusionCounts,
    ThresholdMetrics,
    auroc,
    average_precision,
    class_balance_reason,
    confusion_counts,
    macro_average,
    metrics_at_threshold,
    metrics_from_counts,
    one_vs_rest,
    one_vs_rest_threshold_metrics,
    prevalence,
)
from medres.metrics.conformal import ConformalFit, SetCoverage, fit_conformal, prediction_sets, set_coverage
from medres.metrics.curves import RocBand, precision_recall_curve, roc_band, roc_curve
from medres.metrics.decision import DecisionCurve, decision_curve
from medres.metrics.delong import (
    AurocInterval,
    DeLongCI,
    DeLongTest,
    auroc_score_interval,
    delong_covariance,
    delong_roc_ci,
    delong_roc_test,
)
from medres.metrics.multilabel import (
    Cooccurrence,
    LabelMetrics,
    MultilabelSummary,
    cooccurrence,
    multilabel_metrics,
    multilabel_records,
)
from medres.metrics.operating_points import candidate_thresholds, choose_threshold
from medres.metrics.proportions import ProportionInterval, clustered_proportion_interval, wilson_interval
from medres.metrics.records import RECORD_COLUMNS, MetricRecord, to_records
from medres.metrics.regression import (
    BlandAltman,
    IntervalCoverage,
    RegressionCalibration,
    RegressionSummary,
    binned_calibration,
    bland_altman,
    ccc_interval,
    concordance_correlation,
    interval_coverage,
    pearson_interval,
    regression_bootstrap,
    regression_records,
    regression_summary,
)
from medres.metrics.segmentation import (
    SEGMENTATION_METRICS,
    SegmentationResult,
    SegmentationSummary,
    binary_segmentation_metrics,
    segmentation_metrics,
    summarise_segmentation,
    surface_distances,
)
from medres.metrics.undefined import UndefinedMetricWarning

__all__ = [
    "RECORD_COLUMNS",
    "SEGMENTATION_METRICS",
    "THRESHOLD_METRICS",
    "VECTORISED_METRICS",
    "AurocInterval",
    "BlandAltman",
    "BootstrapResult",
    "CalibrationFit",
    "ConfusionCounts",
    "ConformalFit",
    "Cooccurrence",
    "DecisionCurve",
    "DeLongCI",
    "DeLongTest",
    "IntervalCoverage",
    "LabelMetrics",
    "MetricRecord",
    "MultilabelSummary",
    "ProportionInterval",
    "RegressionCalibration",
    "RegressionSummary",
    "ReliabilityCurve",
    "RocBand",
    "SegmentationResult",
    "SegmentationSummary",
    "SetCoverage",
    "ThresholdMetrics",
    "UndefinedMetricWarning",
    "auroc",
    "auroc_score_interval",
    "average_precision",
    "binary_segmentation_metrics",
    "binned_calibration",
    "bland_altman",
    "brier",
    "calibration_intercept_slope",
    "candidate_thresholds",
    "ccc_interval",
    "choose_calibration",
    "choose_threshold",
    "class_balance_reason",
    "clustered_proportion_interval",
    "concordance_correlation",
    "confusion_counts",
    "cooccurrence",
    "decision_curve",
    "delong_covariance",
    "delong_roc_ci",
    "delong_roc_test",
    "ece",
    "fit_conformal",
    "interval_coverage",
    "macro_average",
    "metrics_at_threshold",
    "metrics_from_counts",
    "multilabel_metrics",
    "multilabel_records",
    "one_vs_rest",
    "one_vs_rest_threshold_metrics",
    "paired_bootstrap_ci",
    "patient_bootstrap",
    "patient_bootstrap_ci",
    "pearson_interval",
    "precision_recall_curve",
    "prediction_sets",
    "prevalence",
    "reliability_curve",
    "regression_bootstrap",
    "regression_records",
    "regression_summary",
    "roc_band",
    "roc_curve",
    "segmentation_metrics",
    "set_coverage",
    "summarise_segmentation",
    "surface_distances",
    "to_records",
    "wilson_interval",
]
