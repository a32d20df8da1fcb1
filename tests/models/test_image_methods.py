"""Image methods: front ends in the graph, and the contract every kind must meet.

Every image kind (UniAD-, PBAS-, OneNIP-style) on both front ends trains, exports to ONNX with the
ecgstream graph interface and metadata, and scores identically in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgstream.models.encoder import SelfReference  # noqa: E402
from ecgstream.models.frontends import ChannelTimeFrontend, SpectrogramFrontend, build_frontend  # noqa: E402
from ecgstream.runtime.model_file import ModelSpec, read_spec  # noqa: E402
from ecgstream.runtime.scorer import Scorer  # noqa: E402
from ecgstream.signals.preprocess import PreprocessConfig  # noqa: E402
from ecgstream.training.image import (  # noqa: E402
    IMAGE_KINDS,
    ImageConfig,
    build_detector,
    export_detector,
    fit_image_detector,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models train far faster on one thread (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _periodic_windows(n: int = 96, window: int = 128, leads: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n * 8 + window)
    base = np.sin(2 * np.pi * t / 32) + 0.5 * (np.sin(2 * np.pi * t / 32) > 0.95)
    x = np.stack([base * (1 + 0.3 * c) for c in range(leads)], 1) + 0.05 * rng.normal(
        size=(len(t), leads)
    )
    starts = np.arange(0, n * 8, 8)
    return np.stack([x[s : s + window].T for s in starts]).astype(np.float32)


def test_stft_frontend_matches_torch_stft():
    fe = SpectrogramFrontend(2, 256, n_fft=32, hop=4, scale="fixed")
    x = torch.randn(3, 2, 256)
    x = x - x.mean(-1, keepdim=True)  # the fixed scale removes each window's mean only
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (torch.arange(32) + 0.5) / 32)
    ref = torch.stft(
        x.reshape(6, 256), 32, 4, window=hann, center=True, pad_mode="reflect", return_complex=True
    )
    expected = 0.5 * torch.log(ref.abs() ** 2 + 1e-6)
    got = fe.log_magnitude(x).reshape(6, 17, -1)
    assert got.shape == expected.shape == (6, 17, 65)
    assert torch.allclose(got, expected, atol=1e-3)


def test_per_frequency_normalisation_is_fitted_and_restored():
    wins = _periodic_windows(64, 256)
    fe = SpectrogramFrontend(1, 256)
    fe.fit_norm(wins)
    img = fe(torch.from_numpy(wins))
    assert img.shape[1:] == fe.image_shape() and img.shape[1] == 1
    rows = img.permute(1, 2, 0, 3).reshape(img.shape[1] * fe.n_freq, -1)
    assert torch.allclose(rows.mean(1), torch.zeros(len(rows)), atol=1e-3)
    assert torch.allclose(rows.std(1), torch.ones(len(rows)), atol=1e-2)
    again = build_frontend(fe.params(), 1, 256)
    assert torch.equal(again(torch.from_numpy(wins[:4])), fe(torch.from_numpy(wins[:4])))


def test_fixed_scale_keeps_a_gain_change_and_old_files_keep_theirs():
    """The fixed log-energy scale shifts the image by log(gain); per-window standardisation (the
    scale of files written before ``scale`` existed) leaves it unchanged."""
    wins = torch.from_numpy(_periodic_windows(8, 256))
    fixed = SpectrogramFrontend(1, 256, scale="fixed")
    shift = fixed.log_magnitude(3 * wins) - fixed.log_magnitude(wins)
    # log(3) wherever the spectrum is above the floor (eps) of the log
    assert (shift - math.log(3)).abs().median() < 1e-3 and shift.mean() > 0.9 * math.log(3)
    old = build_frontend({"frontend": "spectrogram", "standardise": True}, 1, 256)
    assert old.scale == "window"
    assert torch.allclose(old(3 * wins), old(wins), atol=1e-2)  # up to the scale floor
    with pytest.raises(ValueError, match="unknown spectrogram scale 'loud'"):
        SpectrogramFrontend(1, 256, scale="loud")


def test_channel_time_frontend_planes():
    wins = _periodic_windows(16, 64, leads=3)
    fe = ChannelTimeFrontend(3, 64)
    fe.fit_norm(wins)
    img = fe(torch.from_numpy(wins))
    assert img.shape == (16, 2, 3, 64)
    # plane 0: each window standardised; plane 1 keeps level differences between windows
    assert torch.allclose(img[:, 0].mean(-1), torch.zeros(16, 3), atol=1e-4)
    shifted = fe(torch.from_numpy(wins[:1] + 5.0))
    assert (
        torch.allclose(shifted[:, 0], img[:1, 0], atol=1e-4)
        and (shifted[:, 1] - img[:1, 1]).mean() > 1
    )


@pytest.mark.parametrize("frontend", ["channel_time", "spectrogram"])
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_every_kind_trains_exports_and_scores_identically(tmp_path, kind, frontend):
    """ONNX Runtime parity for every head and front end."""
    wins = _periodic_windows(48, 128, leads=2)
    cfg = ImageConfig(
        kind=kind,
        frontend=frontend,
        encoder_steps=8,
        head_steps=8,
        batch_size=16,
        width=8,
        feat_dim=16,
        dim=16,
        n_centres=4,
        n_fft=16,
        stft_hop=4,
        # the records' default: the window's self-reference beside the head
        self_ref_patch=3 if frontend == "spectrogram" else 0,
        self_ref_exclude=6,
    )
    model = fit_image_detector(wins, cfg)
    assert (model.self_ref is not None) == (frontend == "spectrogram")
    spec = ModelSpec(
        name=f"t-{kind}",
        version="1",
        kind=kind,
        leads=["a", "b"],
        window=128,
        hop=32,
        preprocessing=PreprocessConfig(fs=1.0, highpass_hz=0, lowpass_hz=0).to_dict(),
        params={**cfg.to_dict(), **model.frontend.params()},
        frontend=frontend,
    )
    path = export_detector(model, spec, tmp_path / f"{kind}.onnx")
    back = read_spec(path)
    assert (back.kind, back.frontend, back.window) == (kind, frontend, 128)
    assert back.params["kind"] == kind and "frontend" in back.params
    test = wins[:5].copy()
    test[2, :, 40:70] = 0.0  # flat line
    scorer = Scorer(path)
    point, window = scorer.score_windows(test)
    with torch.no_grad():
        tp, tw = model(torch.from_numpy(test))
    assert point.shape == (5, 128) and window.shape == (5,)
    assert np.isfinite(point).all() and np.isfinite(window).all()
    np.testing.assert_allclose(point, tp.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(window, tw.numpy(), rtol=1e-3, atol=1e-4)
    # the same window scored in a batch of one gives the same number (no batch coupling)
    p1, _ = scorer.score_windows(test[2:3])
    np.testing.assert_allclose(p1[0], point[2], rtol=1e-4, atol=1e-5)
    # the settings in the metadata rebuild the same graph (checkpoint reloading)
    again = build_detector(back)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        ap, aw = again.eval()(torch.from_numpy(test))
    assert torch.allclose(ap, tp, atol=1e-5) and torch.allclose(aw, tw, atol=1e-5)
    # a file written with a removed study option is refused, not rebuilt without it
    removed_options = [{"point_relative": True}]
    if frontend == "spectrogram":
        removed_options.append({"relative": True})
    for removed in removed_options:
        old = ModelSpec.from_json(back.to_json())
        old.params = {**old.params, **removed}
        with pytest.raises(ValueError, match="since removed"):
            build_detector(old)


def test_uniad_localises_a_flat_line_after_training():
    wins = _periodic_windows(96, 128)
    cfg = ImageConfig(
        kind="uniad",
        frontend="channel_time",
        encoder_steps=60,
        head_steps=120,
        batch_size=16,
        width=8,
        feat_dim=16,
        dim=16,
    )
    model = fit_image_detector(wins, cfg)
    test = _periodic_windows(8, 128, seed=5)
    test[:4, :, 50:80] = test[:4, :, 50:51]  # flat line in the first four windows
    with torch.no_grad():
        point, window = model(torch.from_numpy(test))
    assert window[:4].min() > window[4:].max()
    inside = point[:4, 50:80].mean(1)
    outside = torch.cat([point[:4, 5:40], point[:4, 90:123]], 1).mean(1)
    assert (inside > outside).all()


def _self_reference_numpy(image: np.ndarray, patch: int, exclude: int) -> np.ndarray:
    """Brute-force reference of :class:`SelfReference` on one image ``(C, rows, cols)``."""
    c, r, t = image.shape
    padded = np.pad(image, ((0, 0), (0, 0), (patch // 2, (patch - 1) // 2)), mode="edge")
    vecs = np.stack([padded[:, :, j : j + patch].ravel() for j in range(t)])
    out = np.empty(t)
    for j in range(t):
        far = [k for k in range(t) if abs(k - j) > exclude]
        out[j] = min(((vecs[j] - vecs[k]) ** 2).sum() for k in far)
    return np.sqrt(out / (c * r * patch))


def test_self_reference_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 2, 5, 40)).astype(np.float32)
    for patch, exclude in [(3, 4), (4, 8), (1, 0)]:
        got = SelfReference(2, 5, 40, patch, exclude)(torch.from_numpy(image)).numpy()
        want = np.stack([_self_reference_numpy(im, patch, exclude) for im in image])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="do not fit an image of 40 columns"):
        SelfReference(2, 5, 40, 3, 39)


def _beats(n_beats: int, width: float, amp: float, odd: int | None = None, seed: int = 0):
    """ECG-like series at 100 Hz: a beat every 0.8 s (Gaussian QRS of ``width`` samples, a T
    wave), noise; beat ``odd`` wide (x3), large (x2) and without its T wave."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_beats * 80, dtype=float)
    x = 0.02 * rng.normal(size=len(t))
    for i in range(n_beats):
        c = 40 + 80 * i
        w, a, tw = (3 * width, 2 * amp, 0.0) if i == odd else (width, amp, 0.3 * amp)
        x += a * np.exp(-0.5 * ((t - c) / w) ** 2) + tw * np.exp(-0.5 * ((t - c - 25) / 6) ** 2)
    return x.astype(np.float32)


def test_self_reference_finds_the_odd_beat_on_the_spectrogram():
    """On the ECG spectrogram, the self-reference scores a window's beats alike whatever their
    morphology, and its one odd beat far higher; a collapsed (constant) image scores nothing."""
    fe = SpectrogramFrontend(1, 400, 32, 4, "fixed", rows=7)
    fe.fit_norm(np.stack([_beats(5, 2, 1.0, seed=s)[None] for s in range(8)]))
    sr = SelfReference(1, 7, 101, patch=3, exclude=8)
    for width, amp in [(2, 1.0), (4, 0.5)]:  # the training morphology, then another patient's
        x = torch.from_numpy(_beats(5, width, amp, odd=2, seed=9)[None, None])
        cols = sr(fe(x))[0]
        peak = int(cols.argmax()) * 4  # sample of the top column
        assert abs(peak - (40 + 80 * 2)) <= 20, (width, peak)
        # the other beats, away from the window's ends (less context; the detector tapers them)
        others = torch.cat([cols[10 : (120 - 20) // 4], cols[(200 + 20) // 4 : -10]])
        assert cols.max() > 2.5 * others.median(), (width, cols.max(), others.median())
        plain = sr(fe(torch.from_numpy(_beats(5, width, amp, seed=9)[None, None])))[0]
        assert cols.max() > 1.5 * plain[10:-10].max()  # the same window without its odd beat
    flat = sr(torch.zeros(1, 1, 7, 101))
    assert flat.abs().max() == 0


def _beat_windows(n: int, width: float, amp: float, odd: int | None = None, seed: int = 0):
    """``n`` 4 s windows (400 samples at 100 Hz) of :func:`_beats`, ``(n, 1, 400)``."""
    return np.stack([_beats(5, width, amp, odd, seed + i)[None] for i in range(n)])


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_the_self_reference_finds_an_odd_beat_of_an_unseen_morphology(kind):
    """Trained on one morphology, every head with the records' self-reference puts the top of
    another patient's window (wider, smaller beats) on its one odd beat, and scores that
    patient's plain windows below the window with the odd beat."""
    cfg = ImageConfig(kind=kind, frontend="spectrogram", encoder_steps=30, head_steps=30,
                      batch_size=16, width=8, feat_dim=16, dim=16, n_centres=64, spec_rows=7,
                      self_ref_patch=3, self_ref_exclude=8)  # fmt: skip
    model = fit_image_detector(_beat_windows(48, 2, 1.0), cfg)
    assert (model.term_scale > 0).all() and not torch.equal(model.term_scale, torch.ones(2))
    odd = torch.from_numpy(_beat_windows(6, 4, 0.5, odd=2, seed=100))
    plain = torch.from_numpy(_beat_windows(6, 4, 0.5, seed=100))
    with torch.no_grad():
        point, window = model(odd)
        _, plain_window = model(plain)
    peaks = point.argmax(1)
    assert ((peaks - 200).abs() <= 30).all(), peaks
    assert window.min() > plain_window.max(), (window, plain_window)


def _gain_task(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal training windows, test windows and labels: an anomaly is a whole window whose
    energy changes (gain x3 or x1/3, half each) with its shape unchanged; normal gains vary
    0.85-1.15. The window's energy itself is a trivial score with AUROC about 0.5 here."""
    rng = np.random.default_rng(seed)
    train = _periodic_windows(96, 128, seed=seed)
    train *= rng.uniform(0.85, 1.15, (len(train), 1, 1)).astype(np.float32)
    test = _periodic_windows(40, 128, seed=seed + 1)
    gains = rng.uniform(0.85, 1.15, len(test))
    labels = np.arange(len(test)) % 2
    gains[1::4], gains[3::4] = 3.0, 1.0 / 3.0
    return train, (test * gains[:, None, None]).astype(np.float32), labels


def _energy_change_auroc(kind: str, scale: str) -> tuple[float, float]:
    from ecgstream.evaluation.metrics import auroc

    train, test, labels = _gain_task()
    cfg = ImageConfig(kind=kind, frontend="spectrogram", spec_scale=scale, encoder_steps=40,
                      head_steps=60, batch_size=16, width=8, feat_dim=16, dim=16, n_centres=64,
                      n_fft=16, stft_hop=4)  # fmt: skip
    model = fit_image_detector(train, cfg)
    with torch.no_grad():
        _, window = model(torch.from_numpy(test))
    energy = (test - test.mean(-1, keepdims=True)).std((1, 2))
    return auroc(labels, window.numpy()), auroc(labels, energy)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_each_head_sees_an_energy_change_on_spectrograms(kind):
    """A gain change is an anomaly the fixed log-energy scale keeps and per-window
    standardisation (``spec_scale="window"``) removes: every head must beat the trivial
    window-energy score by a wide margin."""
    head, trivial = _energy_change_auroc(kind, "fixed")
    assert 0.3 < trivial < 0.7  # the task is built so that energy alone does not rank it
    assert head >= 0.9 and head > trivial + 0.25, f"{kind}: AUROC {head:.3f}, energy {trivial:.3f}"


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown image model kind 'vae'"):
        fit_image_detector(_periodic_windows(16, 64), ImageConfig(kind="vae"))
