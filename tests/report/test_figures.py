"""Text from data in the report's figures is drawn as written: never parsed as mathtext or TeX."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from medres.report.figures import forest_figure, gallery_figure, to_data_uri

HOSTILE = ["$x$", "$\\frac{$", "$", "a $\\badcmd$ b", "site $1$ and $2$"]


def _pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"))


@pytest.mark.parametrize("text", HOSTILE)
def test_forest_and_gallery_take_any_subgroup_or_case_name(text):
    recs = pd.DataFrame({"metric": ["auroc", "auroc"], "subgroup": [f"site={text}", "site=B"], "n": [9, 8],
                         "n_pos": [3, 2], "value": [0.7, 0.6], "ci_low": [0.5, 0.4], "ci_high": [0.9, 0.8]})
    assert _pixels(forest_figure(recs, pooled=0.65)).size
    image = np.random.default_rng(0).normal(size=(12, 10))
    assert _pixels(gallery_figure(image, image > 0, image > 0.5, title=f"case {text}")).size


def _drawn(text: str, parse_math: bool | None) -> np.ndarray:
    fig = Figure(figsize=(2, 1))
    kwargs = {} if parse_math is None else {"parse_math": parse_math}
    fig.text(0.1, 0.5, text, fontsize=14, **kwargs)
    ax = fig.add_axes((0.6, 0.2, 0.3, 0.6))
    ax.plot([0, 1], [0, 1], label=text)
    ax.legend(fontsize=8)
    return _pixels(to_data_uri(fig))


def test_valid_tex_is_drawn_as_its_characters_not_as_a_formula():
    """The reference is matplotlib's own ``parse_math=False``; a formula (mathtext) would look different."""
    literal = _drawn("$x^2$", parse_math=False)
    assert np.array_equal(_drawn("$x^2$", parse_math=None), literal)
    fig = Figure(figsize=(2, 1))
    fig.text(0.1, 0.5, "$x^2$", fontsize=14)
    ax = fig.add_axes((0.6, 0.2, 0.3, 0.6))
    ax.plot([0, 1], [0, 1], label="$x^2$")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # as matplotlib draws it by default
    formula = np.asarray(Image.open(buf).convert("L"))
    assert formula.shape != literal.shape or not np.array_equal(formula, literal)
