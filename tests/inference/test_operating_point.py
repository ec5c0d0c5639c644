"""The operating-point rule: the class called at a threshold, and an ensemble's threshold."""

from __future__ import annotations

import numpy as np

from medres.inference.operating_point import decide, ensemble_threshold


def test_decide_calls_the_positive_class_at_the_threshold_else_the_best_other():
    p = np.array([[0.5, 0.2, 0.3], [0.1, 0.3, 0.6], [0.2, 0.25, 0.55], [0.3, 0.6, 0.1]])
    assert decide(p, 2, 0.3).tolist() == [2, 2, 2, 1]  # p[:, 2] >= 0.3 wins even when not the largest
    assert decide(p, 2, 0.58).tolist() == [0, 2, 1, 1]  # below: the most probable of the others
    assert decide(p, 2, None).tolist() == np.argmax(p, axis=1).tolist()


def test_ensemble_threshold_is_the_mean_of_the_members_or_none():
    cals = [{"method": "none", "operating_point": {"threshold": t}} for t in (0.2, 0.4, 0.3)]
    assert ensemble_threshold(cals) == np.mean([0.2, 0.4, 0.3])
    assert ensemble_threshold(cals[:1]) == 0.2
    assert ensemble_threshold([*cals, {"method": "none"}]) is None  # an older map without one
    assert ensemble_threshold([*cals, None]) is None
    assert ensemble_threshold([{"operating_point": {"threshold": None}}]) is None
