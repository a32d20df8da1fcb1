"""Perlin anomaly synthesis: exact masks, reproducibility, every kind changes what it claims."""

from __future__ import annotations

import numpy as np
import pytest

from ecgstream.signals.synth import (
    KINDS_1D,
    components,
    inject_1d,
    inject_2d,
    perlin_1d,
    perlin_2d,
    region_1d,
)


def _ecg_like(n: int = 5000, leads: int = 2) -> np.ndarray:
    rng = np.random.default_rng(42)
    t = np.arange(n) / 250.0
    base = np.sin(2 * np.pi * 1.2 * t) ** 15 + 0.1 * np.sin(2 * np.pi * 0.3 * t)
    return (base[:, None] * np.linspace(1, 0.5, leads) + 0.02 * rng.normal(size=(n, leads))).astype(
        np.float32
    )


def test_perlin_is_smooth_bounded_and_seeded():
    a = perlin_1d(4000, np.random.default_rng(3), octaves=1, base_period=200)
    b = perlin_1d(4000, np.random.default_rng(3), octaves=1, base_period=200)
    c = perlin_1d(4000, np.random.default_rng(4), octaves=1, base_period=200)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0
    # one octave with a 200-sample lattice: neighbouring samples differ by far less than the range
    assert np.abs(np.diff(a)).max() < 0.05 * (a.max() - a.min()) + 1e-9
    # more octaves add high-frequency detail
    rough = perlin_1d(4000, np.random.default_rng(3), octaves=5, base_period=200)
    assert np.abs(np.diff(rough)).mean() > np.abs(np.diff(a)).mean()


def test_perlin_2d_shape_and_spatial_correlation():
    p = perlin_2d((40, 120), np.random.default_rng(0), octaves=1, base_period=(10, 30))
    assert p.shape == (40, 120)
    # neighbours are strongly correlated (not white noise)
    corr = np.corrcoef(p[:, :-1].ravel(), p[:, 1:].ravel())[0, 1]
    assert corr > 0.9


@pytest.mark.parametrize("kind", KINDS_1D)
def test_each_kind_changes_only_the_mask(kind):
    x = _ecg_like()
    y, mask, info = inject_1d(
        x, 250.0, np.random.default_rng(11), kinds=[kind], min_len_s=0.5, max_len_s=1.5
    )
    assert info["kind"] == kind
    assert y.dtype == np.float32 and y.shape == x.shape
    assert mask.shape == (len(x),) and mask.dtype == bool
    assert np.array_equal(y[~mask], x[~mask]), "samples outside the mask must be untouched"
    changed = (y != x).any(axis=1)
    assert changed[mask].mean() > 0.95, f"{kind}: most masked samples must change"
    span = info["end"] - info["start"]
    assert 125 <= span <= 375
    assert mask[: info["start"]].sum() == 0 and mask[info["end"] :].sum() == 0


def test_same_seed_same_anomaly_and_1d_input():
    x = _ecg_like(3000, 1)[:, 0]
    y1, m1, i1 = inject_1d(x, 250.0, np.random.default_rng(5))
    y2, m2, i2 = inject_1d(x, 250.0, np.random.default_rng(5))
    assert y1.ndim == 1 and np.array_equal(y1, y2) and np.array_equal(m1, m2) and i1 == i2


def test_roughness_zero_gives_the_whole_span_and_high_roughness_fragments():
    rng = np.random.default_rng(0)
    mask, start, end = region_1d(1000, rng, 200, 200, roughness=0.0)
    assert components(mask) == [(start, end)]
    counts = [
        len(components(region_1d(5000, np.random.default_rng(s), 400, 400, roughness=3.0)[0]))
        for s in range(30)
    ]
    assert max(counts) > 1


def test_inject_2d_exact_mask_and_sign():
    img = np.random.default_rng(0).normal(size=(33, 80)).astype(np.float32)
    for seed in range(5):
        out, mask, info = inject_2d(img, np.random.default_rng(seed), min_frac=0.05, max_frac=0.1)
        assert np.array_equal(out[~mask], img[~mask])
        diff = out[mask] - img[mask]
        assert (np.sign(diff) == (1 if info["kind"] == "raise" else -1)).all()
        assert 0.045 <= mask.mean() <= 0.105


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        inject_1d(np.zeros((1000, 1)), 100.0, np.random.default_rng(0), kinds=["explode"])
    with pytest.raises(ValueError, match="too short"):
        inject_1d(np.zeros((10, 1)), 100.0, np.random.default_rng(0), min_len_s=1.0)


def test_synth_cli_writes_records_series_and_masks(tmp_path):
    from ecgstream.cli import main
    from ecgstream.signals.records import read_record
    from ecgstream.signals.series import read_series, write_series
    from tests.conftest import synthetic_ecg, write_record

    src = write_record(
        tmp_path / "in", "rec", synthetic_ecg(40, 250, seed=1, n_leads=2), 250, ["MLII", "V1"]
    )
    series = write_series(tmp_path / "in" / "s.txt", np.sin(np.arange(3000) / 7.0))
    out = tmp_path / "out"
    argv = ["synth", "--out", str(out), "--count", "2", "--after", "10", "--seed", "3", str(src)]
    assert main(argv) == 0
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--count",
                "2",
                "--min-len",
                "30",
                "--max-len",
                "80",
                str(series),
            ]
        )
        == 0
    )
    before, after = read_record(src), read_record(out / "rec")
    m = np.load(out / "rec.mask.npz")
    mask = m["mask"]
    assert mask.shape == (before.n_samples,) and mask.any() and not mask[: 10 * 250].any()
    assert list(m["start"]) == sorted(m["start"]) and (m["end"] > m["start"]).all()
    err = np.abs(after.signal - before.signal).max(axis=1)
    assert err[~mask].max() < 1e-2  # only WFDB re-quantisation outside the mask
    assert err[mask].mean() > 10 * err[~mask].mean()
    assert (out / "RECORDS").read_text().split() == ["rec"]
    s_out = read_series(out / "s.txt").signal[:, 0]
    s_mask = np.load(out / "s.mask.npz")["mask"]
    s_in = read_series(series).signal[:, 0]
    assert (
        np.array_equal(s_out[~s_mask], s_in[~s_mask])
        and (s_out[s_mask] != s_in[s_mask]).mean() > 0.9
    )
    # same seed, same output
    assert main(argv[:2] + [str(tmp_path / "again")] + argv[3:]) == 0
    assert np.array_equal(np.load(tmp_path / "again" / "rec.mask.npz")["mask"], mask)


def test_synth_cli_rejects_unknown_kinds(tmp_path, capsys):
    from ecgstream.cli import main

    assert main(["synth", "--out", str(tmp_path), "--kinds", "boom", str(tmp_path / "x.txt")]) == 2
    assert "unknown ['boom']" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--kinds", " , ", str(tmp_path / "x.txt")]) == 2
    assert "no anomaly kind named in ' , '" in capsys.readouterr().err
