"""Radiographs in the report: drawn as radiologists read them, and per-class empty-mask counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medres.evaluation.gallery import radiograph_view
from medres.report.seg_classes import class_empty_counts


def test_pa_film_shows_the_patients_right_on_the_viewers_left():
    # [X, Y] as loaded: X along a row (columns), Y down the columns; a marker at the patient's right
    image = np.zeros((4, 3))
    image[0, 0] = 1  # first column, first row
    # L\F: columns run to the patient's left, so column 0 is the patient's right: already on the left
    assert radiograph_view(image, "L\\F", "PA")[0, 0] == 1
    # R\F: columns run to the patient's right, so column 0 is the patient's left: mirrored to the right
    assert radiograph_view(image, "R\\F", "PA")[0, -1] == 1
    # rows running to the head: flipped so the head is up
    assert radiograph_view(image, "L\\H", "PA")[-1, 0] == 1
    # no orientation (a PNG export): as stored, rows on top
    assert radiograph_view(image, "", "").shape == (3, 4)


def test_class_empty_counts_per_foreground_class():
    seg = pd.DataFrame({
        "class": ["lung", "opacity", "lung", "opacity", "lung", "opacity"],
        "dice": [0.95, 1.0, 0.93, 0.7, 0.9, 0.0],
        "empty": ["", "both", "", "", "", "reference"],
    })
    t = class_empty_counts(seg).set_index("class")
    assert t.loc["lung", "reference holds the class"] == 3 and t.loc["lung", "reference empty"] == 0
    assert t.loc["opacity", "reference holds the class"] == 1
    assert t.loc["opacity", "both empty (Dice 1 by policy)"] == 1
    assert t.loc["opacity", "false-positive cases (reference empty, prediction not)"] == 1
    assert t.loc["opacity", "mean Dice, reference present"] == "0.700 (n=1)"
