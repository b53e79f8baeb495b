"""report.observations: the paper's three observations in words, checked by hand on small frames."""

import pandas as pd

from lazydrift.report import observations


def frame(means: dict) -> pd.DataFrame:
    return pd.DataFrame([{"width": w, "measure": m, "mean": v} for (w, m), v in means.items()])


def test_observations_by_hand():
    # l2 1 -> 2 (does not shrink), linf/l2 = 0.05 and 0.025 (below a tenth), ratio 20 -> 40 (grows)
    holds = [h for h, _ in observations(frame({(100, "l2"): 1.0, (100, "linf"): 0.05, (100, "ratio"): 20.0,
                                               (400, "l2"): 2.0, (400, "linf"): 0.05, (400, "ratio"): 40.0}))]
    assert holds == [True, True, True]
    text = " ".join(t for _, t in observations(frame({(100, "l2"): 1.0, (100, "linf"): 0.5, (100, "ratio"): 2.0,
                                                      (400, "l2"): 0.5, (400, "linf"): 0.5, (400, "ratio"): 1.0})))
    assert "shrinks" in text and "(x0.5)" in text and "not below a tenth" in text and "does not grow" in text


def test_nothing_moved_is_said_not_divided_by():
    # it was ZeroDivisionError (a width where mean l2 is 0, e.g. nothing trained)
    out = observations(frame({(100, "l2"): 0.0, (100, "linf"): 0.0, (100, "ratio"): float("nan"),
                              (400, "l2"): 1.0, (400, "linf"): 0.1, (400, "ratio"): 10.0}))
    assert out == [(None, "(nothing moved at width 100: mean l2 is 0; the width comparisons need movement)")]
