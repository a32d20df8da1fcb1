"""Population reference of the consensus detector: PCA, shrunk covariance, lead scale, spectrum."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, synthetic_ecg  # noqa: E402

from ecgstream.models.consensus import (  # noqa: E402
    ConsensusConfig,
    SegmentConsensus,
    spectrum_sizes,
)
from ecgstream.models.consensus.population import (  # noqa: E402
    GaussianReference,
    fit_gaussian,
    ledoit_wolf,
)
from ecgstream.runtime.scorer import Scorer  # noqa: E402
from ecgstream.training import TrainConfig  # noqa: E402
from ecgstream.training.config import load_train_config  # noqa: E402
from ecgstream.training.consensus import fit_consensus  # noqa: E402

FS = 100


def _normals(n: int = 12, n_leads: int = 2, seconds: float = 10.0) -> torch.Tensor:
    """``n`` synthetic ECG windows ``(n, n_leads, seconds * FS)`` at different heart rates."""
    x = [synthetic_ecg(seconds, FS, heart_rate=55 + 3 * i, seed=i, n_leads=n_leads).T
         for i in range(n)]  # fmt: skip
    return torch.tensor(np.stack(x), dtype=torch.float32)


def _fitted(windows: torch.Tensor, **cfg) -> SegmentConsensus:
    model = SegmentConsensus(
        ConsensusConfig(n_leads=windows.shape[1], window=windows.shape[2], **cfg)
    ).eval()
    model.fit_population(windows)
    return model


def _population(model: SegmentConsensus, windows: torch.Tensor) -> torch.Tensor:
    """The population term ``(B,)`` of ``windows`` (their consensus descriptors only)."""
    return model.population(model.level_consensus(model.descriptors(windows)[0]))


def test_defaults_keep_the_pca_reference_and_its_buffers():
    windows = _normals(10)
    model = _fitted(windows, population_components=3)
    keys = {f"population.level.{k}" for k in ("mean", "basis", "sd", "residual")}
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        cons = model.level_consensus(model.descriptors(windows)[0]).reshape(10, -1).double()
        cons = cons.numpy()
        score = _population(model, windows[:4])
    mean = cons.mean(0)
    _, sv, vt = np.linalg.svd(cons - mean, full_matrices=False)
    z = cons[:4] - mean
    proj = z @ vt[:3].T
    residual = ((cons - mean - (cons - mean) @ vt[:3].T @ vt[:3]) ** 2).sum(1)
    expected = ((z - proj @ vt[:3]) ** 2).sum(1) / np.median(residual) + (
        (proj / (sv[:3] / 3.0)) ** 2  # sd = singular value / sqrt(N - 1)
    ).mean(1)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-2)  # float32 graph


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 50)) * np.linspace(0.1, 3.0, 50)
    z = torch.tensor(x - x.mean(0))
    assert ledoit_wolf(z) == pytest.approx(covariance.ledoit_wolf_shrinkage(x), rel=1e-9)


def test_shrunk_distance_is_the_ledoit_wolf_mahalanobis_distance():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 40)) * np.linspace(0.2, 2.0, 40)
    y = rng.normal(size=(6, 40)) * 1.5
    reference = GaussianReference(40, 64, n_leads=1, shrunk=True, scaled=False).double()
    fitted = fit_gaussian(torch.tensor(x), 64, shrunk=True)
    for buf, value in zip((reference.mean, reference.basis, reference.sd, reference.residual),
                          fitted, strict=True):  # fmt: skip
        buf.copy_(value)
    ours = reference(torch.tensor(y)).numpy()
    lw = covariance.LedoitWolf().fit(x)
    theirs = lw.mahalanobis(y)
    ratio = ours / theirs
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    # scaled so a typical training row scores about 1
    train = reference(torch.tensor(x)).numpy()
    assert np.median(train) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("covariance", ["pca", "shrunk"])
def test_lead_scale_makes_the_score_independent_of_one_lead_gain(covariance):
    windows = _normals(10)
    test = windows[:3] * torch.tensor([1.0, 1.3])[None, :, None]
    louder = torch.tensor([1.0, 10.0])[None, :, None]
    kw = {"population_components": 3, "population_covariance": covariance}
    scaled = _fitted(windows, population_lead_scale=True, **kw)
    scaled_loud = _fitted(windows * louder, population_lead_scale=True, **kw)
    plain = _fitted(windows, **kw)
    plain_loud = _fitted(windows * louder, **kw)
    with torch.no_grad():
        a = _population(scaled, test)
        b = _population(scaled_loud, test * louder)
        c = _population(plain, test)
        d = _population(plain_loud, test * louder)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3)
    assert np.max(np.abs(c.numpy() / d.numpy() - 1)) > 0.05  # without it the loud lead dominates


def test_spectrum_is_a_welch_estimate_of_band_power():
    cfg = ConsensusConfig(n_leads=2, window=1000, population_components=2,
                          population_spectrum_frame=200, population_spectrum_bands=29,
                          population_spectrum_band_bins=2)  # fmt: skip
    model = SegmentConsensus(cfg)
    x = np.random.default_rng(2).normal(size=(3, 2, 1000)).astype(np.float32) * 0.2
    frames = np.stack([x[:, :, s : s + 200] for s in range(0, 801, 100)], 2) * np.hanning(200)
    power = (np.abs(np.fft.rfft(frames, axis=3)) ** 2).mean(2)[:, :, 1:59]
    expected = np.log(power.reshape(3, 2, 29, 2).mean(3) + 1e-4).reshape(3, -1)
    got = model.population.spectrum(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _beats(heart_rate: float, t_delay_s: float, seed: int) -> np.ndarray:
    """2-lead 10 s beat train ``(2, 1000)``: a narrow QRS and a T wave ``t_delay_s`` after it."""
    rng = np.random.default_rng(seed)
    t = np.arange(1000) / FS
    rr = 60.0 / heart_rate
    x = np.zeros(1000)
    for b in np.arange(rng.uniform(0, rr) - rr, 10.0, rr):
        x += np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.3 * np.exp(
            -0.5 * ((t - b - t_delay_s) / 0.05) ** 2
        )
    return np.stack([x, 0.5 * x]) + rng.normal(0, 0.01, (2, 1000))


def test_spectrum_term_sees_where_the_t_wave_falls():
    """A late T wave keeps each segment's amplitude distribution; the spectrum moves."""
    normals = [_beats(60 + 2 * i, 0.25 + 0.01 * (i % 3), i) for i in range(16)]
    train = torch.tensor(np.stack(normals), dtype=torch.float32)
    x = torch.tensor(np.stack([_beats(69, 0.26, 100), _beats(69, 0.42, 101)]), dtype=torch.float32)
    kw = {"population_components": 64, "population_covariance": "shrunk",
          "population_lead_scale": True}  # fmt: skip
    spectral = _fitted(train, population_spectrum_frame=200, population_spectrum_bands=29,
                       population_spectrum_band_bins=2, **kw)  # fmt: skip
    sorted_only = _fitted(train, **kw)
    with torch.no_grad():
        _, with_spectrum = spectral(x)
        _, without = sorted_only(x)
    assert without[1] < 1.5 * without[0]
    assert with_spectrum[1] > 1.8 * with_spectrum[0]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"population_components": 2, "population_covariance": "ledoit"}, "pca' or 'shrunk"),
        ({"population_spectrum_frame": 200, "population_spectrum_bands": 4}, "spectrum needs"),
        ({"population_components": 2, "population_spectrum_frame": 200,
          "population_spectrum_bands": 60, "population_spectrum_band_bins": 2}, "spectrum needs"),
    ],
)  # fmt: skip
def test_bad_population_settings_are_a_clear_error(cfg, message):
    with pytest.raises(ValueError, match=message):
        SegmentConsensus(ConsensusConfig(window=1000, **cfg))


def test_spectrum_bands_from_seconds_and_hertz():
    sizes = spectrum_sizes(2.0, 30.0, 100.0)
    assert (sizes["population_spectrum_frame"], sizes["population_spectrum_bands"]) == (200, 29)
    assert sizes["population_spectrum_band_bins"] == 2  # 1 Hz bands of 0.5 Hz bins: 0.5-29.5 Hz
    assert spectrum_sizes(0.0, 30.0, 100.0) == {}
    # the shipped PTB-XL model's [model] table holds the 2 s, 30 Hz spectrum its comment names
    c = load_train_config(REPO / "models" / "consensus-ptbxl.toml", environ={}).model_config()
    assert {k: getattr(c, k) for k in sizes} == sizes


def test_shrunk_spectral_reference_exports_with_onnx_parity(ecg_folder, tmp_path):
    from ecgstream.training.export import export_checkpoint

    cfg = TrainConfig(
        model="consensus", name="c-pop-spec", leads=["MLII", "V1"], window_s=4.0, hop_s=1.0,
        val_records=["syn2"], checkpoint_dir=tmp_path / "ck", model_out=tmp_path / "a.onnx",
        model_settings={"population_components": 64, "population_covariance": "shrunk",
                        "population_lead_scale": True, **spectrum_sizes(1.0, 30.0, 100.0)},
    )  # fmt: skip
    result = fit_consensus(cfg, [ecg_folder], progress=False)
    model = result.model
    assert model.cfg.population_spectrum_frame == 100
    population = model.population
    assert float(population.band.basis.abs().sum()) > 0
    assert float(population.level.scale.std()) > 0
    rng = np.random.default_rng(3)
    windows = synthetic_ecg(4.0, 100, seed=7, n_leads=2).T[None].repeat(4, 0)
    windows = (windows + rng.normal(size=windows.shape) * 0.05).astype(np.float32)
    onnx_point, onnx_window = Scorer(result.model_path).score_windows(windows)
    with torch.no_grad():
        point, window = model(torch.from_numpy(windows))
    np.testing.assert_allclose(onnx_window, window.numpy(), rtol=1e-4)
    np.testing.assert_allclose(onnx_point, point.numpy(), rtol=1e-4)
    again = Scorer(export_checkpoint(tmp_path / "ck", tmp_path / "b.onnx")).score_windows(windows)
    np.testing.assert_allclose(again[1], onnx_window, rtol=1e-6)


def test_a_checkpoint_written_before_the_terms_were_modules_still_loads():
    """Checkpoints hold the population buffers as ``pop_*`` / ``spec_*`` (and every model the
    empty ``pop_*`` ones); they load into the reference's modules."""
    from ecgstream.models.consensus.model import LEGACY_KEYS

    kw = {"population_components": 3, "population_covariance": "shrunk",
          "population_lead_scale": True, "population_spectrum_frame": 200,
          "population_spectrum_bands": 29, "population_spectrum_band_bins": 2}  # fmt: skip
    fitted = _fitted(_normals(6), **kw)
    old_names = {new: old for old, new in LEGACY_KEYS.items()}
    state = {old_names[k]: v for k, v in fitted.state_dict().items()}
    assert "pop_basis" in state and "spec_scale" in state
    again = SegmentConsensus(fitted.cfg).eval()
    again.load_state_dict(state)
    x = _normals(2, seconds=10.0)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[1], fitted(x)[1], rtol=0, atol=0)
    # a model without a population reference drops the empty buffers such files hold
    plain = SegmentConsensus(ConsensusConfig(n_leads=2))
    plain.load_state_dict({"pop_mean": torch.zeros(160), "pop_basis": torch.zeros(0, 160),
                           "pop_sd": torch.ones(0), "pop_residual": torch.ones(())})  # fmt: skip
