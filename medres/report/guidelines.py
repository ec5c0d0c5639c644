"""Which CLAIM 2024 and TRIPOD+AI checklist topics a medres report covers, and which it cannot.

Topics, not item numbers: the two checklists number their items differently across versions, so the
report names the topic and the researcher matches it to the published checklist (CLAIM 2024 update,
Tejani et al., Radiology: Artificial Intelligence 2024; TRIPOD+AI, Collins et al., BMJ 2024).
"""

from __future__ import annotations

import pandas as pd

__all__ = ["GUIDELINE_ITEMS", "guideline_table"]

COVERED, PARTLY, SUPPLY = "covered", "partly covered", "researcher supplies"

# (guidelines, topic, status, where / what is missing)
GUIDELINE_ITEMS: tuple[tuple[str, str, str, str], ...] = (
    (
        "CLAIM, TRIPOD+AI",
        "Title, abstract, background, objectives, hypotheses",
        SUPPLY,
        "not knowable from a run",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Study design (retrospective/prospective), setting, dates of data collection",
        SUPPLY,
        "the report deliberately holds no dates",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Data sources, eligibility criteria, flow of participants",
        PARTLY,
        "Cohort: patients and scans per fold; inclusion/exclusion and the flow diagram are yours",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Demographic and clinical characteristics",
        PARTLY,
        "Cohort table: age, sex, site, scanner, spacing per fold; clinical variables are yours",
    ),
    (
        "CLAIM",
        "De-identification",
        PARTLY,
        "the report shows case ids and counts, never patient ids, names or dates; describe your "
        "de-identification of the source data",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Data preprocessing (resampling, intensity windows, normalisation)",
        PARTLY,
        "Provenance: the resolved configuration (hash) holds every setting; describe it in prose",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Missing data and how it was handled",
        PARTLY,
        "Cohort: missing age/sex/site counts; missing masks follow loss.seg.missing_mask",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Reference standard / outcome definition and annotation process",
        SUPPLY,
        "who labelled, how, inter-rater agreement",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Data partitions and the level at which they are disjoint",
        COVERED,
        "Cohort: folds by patient and the split audit (no patient in two folds; thresholds chosen on "
        "inner validation only)",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Sample size",
        PARTLY,
        "n and n_pos for every estimate; a sample-size rationale is yours",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Model description, software libraries and versions",
        COVERED,
        "Provenance: model name, library versions, medres version and git commit",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Training details: initialisation, augmentation, hyperparameters, model selection",
        PARTLY,
        "Provenance: configuration hash and seeds; the configuration file ships with the run",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Performance metrics and their uncertainty",
        COVERED,
        "Classification and Segmentation: per fold, pooled, mean ± SD; "
        "intervals that count patients (Clopper-Pearson on n/deff, score-type AUROC, patient bootstrap) "
        "and DeLong's, clustered by patient",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Operating point / classification threshold and how it was chosen",
        COVERED,
        "Operating points: method and threshold per fold, chosen on inner validation",
    ),
    ("TRIPOD+AI", "Calibration", COVERED, "reliability diagram, ECE (bin count), Brier, intercept and slope"),
    ("TRIPOD+AI", "Clinical utility", COVERED, "decision curve with treat-all and treat-none"),
    (
        "CLAIM, TRIPOD+AI",
        "Fairness / performance in subgroups",
        COVERED,
        "Subgroups: n, n_pos, metric and interval per level; not estimable below the minimum",
    ),
    ("CLAIM", "Failure analysis", PARTLY, "Worst cases gallery; the clinical interpretation is yours"),
    (
        "CLAIM",
        "Explainability",
        PARTLY,
        "Grad-CAM of the classification head beside the worst cases "
        "(when checkpoints are present); its limits are yours to discuss",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Comparison with another model / statistical test",
        PARTLY,
        "with --compare: paired DeLong test and paired patient-bootstrap differences",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "External validation",
        SUPPLY,
        "cross-validation is internal validation; evaluate an external cohort with medres.predict",
    ),
    ("CLAIM, TRIPOD+AI", "Limitations, implications, intended use", SUPPLY, ""),
    (
        "CLAIM, TRIPOD+AI",
        "Registration, protocol, ethics approval, funding, conflicts of interest",
        SUPPLY,
        "",
    ),
    (
        "CLAIM, TRIPOD+AI",
        "Data and code availability",
        PARTLY,
        "the run folder and this bundle (summary.json, predictions.csv) are shareable; say where",
    ),
    ("TRIPOD+AI", "Patient and public involvement", SUPPLY, ""),
)


def guideline_table() -> pd.DataFrame:
    """The mapping as a table: guideline, topic, status, where in this report / what to add."""
    return pd.DataFrame(GUIDELINE_ITEMS, columns=["guideline", "topic", "status", "where / what to add"])
