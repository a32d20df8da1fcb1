"""Rank metrics in numpy against scikit-learn, and beat / interval scores against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from ecgstream.evaluation.metrics import (
    MetricError,
    auroc,
    auroc_interval,
    average_precision,
    beat_scores,
    fixed_windows,
    interval_max,
    roc_curve,
)

labelled = st.integers(2, 300).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
        st.one_of(
            st.lists(st.integers(0, 4).map(float), min_size=n, max_size=n),  # many ties
            st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n),
        ),
    )
)


@settings(max_examples=150, deadline=None)
@given(labelled)
def test_auroc_and_ap_match_sklearn(data):
    y, s = np.array(data[0]), np.array(data[1])
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 10_000))
def test_auroc_interval_matches_resampling_whole_groups(n_groups, seed):
    rng = np.random.default_rng(seed)
    labels = [rng.random(int(rng.integers(1, 40))) < 0.3 for _ in range(n_groups)]
    labels[0][0], labels[-1][-1] = True, False  # both classes somewhere
    scores = [rng.integers(0, 5, g.size).astype(float) + g for g in labels]  # ties across groups
    # brute force with the same draws: pool each draw's groups and rank them again
    draws = np.random.default_rng(7).multinomial(n_groups, np.full(n_groups, 1 / n_groups), 50)
    values = []
    for counts in draws:
        pick = np.repeat(np.arange(n_groups), counts)
        y = np.concatenate([labels[i] for i in pick])
        if 0 < y.sum() < y.size:
            values.append(auroc(y, np.concatenate([scores[i] for i in pick])))
    low, high = auroc_interval(labels, scores, level=0.9, n_boot=50, seed=7)
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])), abs=1e-12)


def test_auroc_interval_of_identical_groups_is_the_pooled_auroc():
    y, s = np.array([0, 1, 0, 1, 1, 0]), np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.3])
    low, high = auroc_interval([y] * 5, [s] * 5)
    assert low == pytest.approx(auroc(y, s)) and high == pytest.approx(auroc(y, s))
    with pytest.raises(MetricError, match="groups"):
        auroc_interval([y], [s, s])


def test_perfect_inverted_and_tied():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, [0, 1, 2, 3]) == 1.0
    assert auroc(y, [3, 2, 1, 0]) == 0.0
    assert auroc(y, [1, 1, 1, 1]) == 0.5
    assert average_precision(y, [0, 1, 2, 3]) == 1.0


def test_metric_errors():
    with pytest.raises(MetricError, match="both classes"):
        auroc([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(MetricError, match="labels"):
        average_precision([0, 1, 1], [0.1, 0.2])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_interval_max_matches_brute_force(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.2] = np.nan
    starts = rng.integers(-5, n + 5, size=50)
    ends = starts + rng.integers(-2, 60, size=50)
    got = interval_max(x, starts, ends)
    for a, b, g in zip(starts, ends, got, strict=False):
        seg = x[max(a, 0) : min(max(b, 0), n)]
        if seg.size == 0 or np.isnan(seg).all():
            assert np.isnan(g)
        else:
            assert g == np.nanmax(seg)


def test_beat_scores_use_plus_minus_150ms():
    fs = 100.0
    x = np.zeros(1000)
    x[515] = 9.0  # 150 ms after a beat at 500: inside
    x[716] = 7.0  # 160 ms after a beat at 700: outside
    s = beat_scores(x, np.array([500, 700]), fs)
    assert s.tolist() == [9.0, 0.0]


def test_fixed_windows():
    starts, ends = fixed_windows(25 * 360 + 10, 360.0, 10.0)
    assert starts.tolist() == [0, 3600] and ends.tolist() == [3600, 7200]
    with pytest.raises(ValueError):
        fixed_windows(100, 100.0, 0.0)
