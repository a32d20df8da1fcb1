"""MMAE-ECG: sizes, inference-mask coverage (no leaks), ONNX parity, a check that rejects collapsed
models, and whether training explains the hidden signal."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgstream.models.mmae import (  # noqa: E402
    MMAE,
    MMAEConfig,
    count_parameters,
    estimate_macs,
    inference_passes,
    masked_r2,
)

TINY = MMAEConfig(n_leads=2, window=400, segment=20, local_region=5, dim=32, depth=1, heads=2)
#: TINY with the rhythm prompt (+-1 and +-2 beat periods) and one segment in four hidden
PROMPTED = MMAEConfig(n_leads=2, window=400, segment=20, local_region=5, dim=32, depth=1, heads=2,
                      mask_global=0.25, mask_local=0.25, infer_global_masks=4,
                      infer_local_masks=4, prompt_periods=2)  # fmt: skip
#: PROMPTED with the learned gate over the copies and the lag refined to a fraction of a sample
GATED = MMAEConfig(**{**PROMPTED.to_dict(), "prompt_refine_step": 1, "prompt_subsample": True,
                      "prompt_gate": "learned", "prompt_tau": 0.3})  # fmt: skip


def _randomise_gates(model):
    """Non-zero gates (they start at zero) so that tests exercise the learned combination."""
    with torch.no_grad():
        for gate in (model.gate_global, model.gate_local):
            gate.weight.normal_(0.0, 0.1)
            gate.bias.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("leads", [1, 12])
def test_default_model_is_small(leads):
    model = MMAE(MMAEConfig(n_leads=leads))
    assert 50_000 < count_parameters(model) < 1_000_000
    assert estimate_macs(model) < 1e9
    point, window = model.eval()(torch.randn(3, leads, 1000))
    assert point.shape == (3, 1000) and window.shape == (3,)
    assert torch.isfinite(point).all() and (point >= 0).all()


@pytest.mark.parametrize(
    "cfg",
    [TINY, MMAEConfig(window=1000, segment=20, local_region=7, infer_global_masks=3, infer_local_masks=2),
     MMAEConfig(window=600, segment=10, local_region=12, infer_global_masks=2, infer_local_masks=4)],
)  # fmt: skip
def test_every_segment_reconstructed_and_never_visible_when_hidden(cfg):
    passes = inference_passes(cfg)
    ng = cfg.n_global
    hidden_g = set(passes["hide_global"].flatten().tolist())
    hidden_l = set(passes["hide_local"].flatten().tolist())
    assert hidden_g == set(range(ng))
    assert hidden_l == set(range(cfg.n_local))
    f = cfg.local_factor
    for keep, hg, hl in zip(passes["keep"].tolist(), passes["hide_global"].tolist(),
                            passes["hide_local"].tolist(), strict=True):  # fmt: skip
        keep = set(keep)
        vis_g = {k for k in keep if k < ng}
        vis_l = {k - ng for k in keep if k >= ng}
        assert not vis_g & set(hg)
        assert not vis_l & set(hl)
        # a hidden span is visible at neither scale
        assert not {j // f for j in vis_l} & set(hg)
        assert not {j // f for j in hl} & vis_g
    assert (MMAE(cfg).weight > 0).all()


@functools.cache
def _synthetic_signal() -> np.ndarray:
    from conftest import synthetic_ecg

    return synthetic_ecg(150, 100, seed=3, n_leads=2)


def _synthetic_windows(n: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    """``n`` 4 s two-lead windows of neurokit2 ECG at 100 Hz starting in ``[lo, hi - 400)``."""
    sig = _synthetic_signal()
    starts = np.random.default_rng(seed).integers(lo, hi - 400, n)
    return torch.from_numpy(np.stack([sig[s : s + 400].T for s in starts]))


@pytest.fixture
def one_thread():
    """A tiny model trains faster on one thread than on two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: a model has learned when it explains this share of the hidden signal at both scales, against
#: predicting zero and against predicting the visible mean
LEARNED_R2 = 0.3


def _learned(r2: dict) -> bool:
    return min(r2.values()) > LEARNED_R2


class _VisibleMean(MMAE):
    """A collapsed model that predicts, for every hidden sample, the mean of the visible ones."""

    def reconstruct(self, windows):
        xn, pred_g, pred_l = super().reconstruct(windows)
        vis = ((self.mask_global + self.mask_local) == 0).to(xn.dtype)
        mean = (xn.unsqueeze(2) * vis).sum(-1, keepdim=True) / vis.sum(-1, keepdim=True)
        return xn, mean.expand_as(pred_g), mean.expand_as(pred_l)


def test_masked_r2_rejects_zero_and_visible_mean_models():
    x = _synthetic_windows(32, 0, 15000, seed=1)
    zero = MMAE(TINY)
    with torch.no_grad():
        for head in (zero.head_global, zero.head_local):
            head.weight.zero_()
            head.bias.zero_()
    r2_zero = masked_r2(zero, x)
    assert abs(r2_zero["global_r2_zero"]) < 1e-6 and abs(r2_zero["local_r2_zero"]) < 1e-6
    assert not _learned(r2_zero)
    r2_mean = masked_r2(_VisibleMean(TINY), x)
    assert abs(r2_mean["global_r2_mean"]) < 1e-6 and abs(r2_mean["local_r2_mean"]) < 1e-6
    assert not _learned(r2_mean)


def _zero_heads(model: MMAE) -> MMAE:
    with torch.no_grad():
        for head in (model.head_global, model.head_local):
            head.weight.zero_()
            head.bias.zero_()
    return model


def _train(cfg: MMAEConfig, steps: int) -> MMAE:
    torch.manual_seed(0)
    train = _synthetic_windows(256, 0, 10000, seed=0)
    model = MMAE(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model.loss(train[torch.randint(0, len(train), (32,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.xfail(
    strict=True,
    reason="known (issue 22): without the rhythm prompt MMAE-ECG stays on the predict-zero "
    "plateau, masked R2 -0.01 to 0.09 after 300 steps on neurokit2 ECG; see docs/model-mmae.md",
)
def test_training_explains_the_hidden_signal_without_prompt(one_thread):
    val = _synthetic_windows(64, 10000, 15000, seed=1)
    assert _learned(masked_r2(_train(TINY, 300), val))


#: what training must add to the aligned copy's masked R² on held-out windows, at both scales
ADDS_TO_COPY = 0.02


@pytest.mark.parametrize("cfg", [PROMPTED, GATED], ids=["prompted", "gated"])
def test_training_adds_to_the_copy(one_thread, cfg):
    """With the rhythm prompt the trained model explains most of the hidden signal of held-out
    windows at both scales, and more of it than its aligned copy before training (the network
    starts from the copy: zero output heads and gates); a network whose training adds nothing
    to the copy fails. On this regular rhythm 150 steps add about 0.03-0.05."""
    val = _synthetic_windows(64, 10000, 15000, seed=1)
    torch.manual_seed(0)
    copy_only = masked_r2(MMAE(cfg), val)
    r2 = masked_r2(_train(cfg, 150), val)
    assert _learned(r2), r2
    for key, value in r2.items():
        assert value > copy_only[key] + ADDS_TO_COPY, (key, value, copy_only[key])


@pytest.mark.parametrize("cfg", [TINY, PROMPTED, GATED], ids=["plain", "prompted", "gated"])
def test_scores_use_only_what_the_model_sees(cfg):
    """Changing the samples hidden in a pass (keeping the window mean) leaves that pass's
    reconstruction, and with the rhythm prompt its prompt, unchanged: the model never reads a
    segment it is asked to reconstruct."""
    model = MMAE(cfg).eval()
    if cfg.prompt_gate == "learned":
        _randomise_gates(model)
    x = _synthetic_windows(2, 0, 15000, seed=2)
    p = 1
    hidden = (model.mask_global[p] + model.mask_local[p]) > 0
    noise = torch.randn(2, cfg.n_leads, cfg.window) * hidden
    noise = noise - noise.sum(-1, keepdim=True) / hidden.sum() * hidden  # zero-mean change
    with torch.no_grad():
        _, g0, l0 = model.reconstruct(x)
        _, g1, l1 = model.reconstruct(x + noise)
    assert torch.allclose(g0[:, :, p], g1[:, :, p], atol=1e-5)
    assert torch.allclose(l0[:, :, p], l1[:, :, p], atol=1e-5)
    assert not torch.allclose(g0[:, :, 0], g1[:, :, 0], atol=1e-5)  # other passes see them
    if cfg.prompt_periods:
        vis = model.visible[p : p + 1].expand(2, -1)
        with torch.no_grad():
            prompts = [model.prompt_tokens(model.normalise(v) * vis[:, None], vis)
                       for v in (x, x + noise)]  # fmt: skip
        flat = [[tok] + [t for scale in per_scale for t in scale] for tok, per_scale in prompts]
        for a, b in zip(*flat, strict=True):  # embeddings, copies, masks, costs, gains
            assert torch.allclose(a, b, atol=1e-5)


def test_prompt_aligns_the_beat_one_period_away():
    """On a regular rhythm the period is found from visible samples only, and the aligned copy
    explains most of the hidden signal before any training."""
    model = MMAE(PROMPTED).eval()
    x = _synthetic_windows(16, 0, 15000, seed=5)
    period = model.beat_period(model.normalise(x), torch.ones(16, PROMPTED.window))
    rr = 60.0 / 70 * 100  # conftest.synthetic_ecg: 70 beats per minute at 100 Hz
    assert ((period - rr).abs() <= 10).all(), period.ravel()
    r2 = masked_r2(_zero_heads(model), x)
    assert min(r2.values()) > 0.4, r2


def _largest_intermediate(model: MMAE, x: torch.Tensor) -> int:
    """Elements of the largest tensor any operator produces in one inference forward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        size = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    Largest.size = max(Largest.size, t.numel())
            return out

    with torch.no_grad(), Largest():
        model(x)
    return Largest.size


def test_prompt_memory_does_not_grow_with_the_lag_candidates():
    """The per-token lag search keeps one candidate per direction at a time: the largest
    intermediate tensor is the same with 3 and with 21 candidates per direction, and no larger
    than a few full-rate copies of every direction of every pass."""
    x = _synthetic_windows(4, 0, 15000, seed=6)
    sizes = []
    for refine in (2, 20):
        cfg = MMAEConfig(**{**PROMPTED.to_dict(), "prompt_refine": refine})
        model = MMAE(cfg).eval()
        sizes.append(_largest_intermediate(model, x))
    assert sizes[0] == sizes[1], sizes
    model = MMAE(PROMPTED)
    directions = 2 * PROMPTED.prompt_periods
    full_rate = len(x) * model.n_passes * directions * PROMPTED.window
    assert sizes[1] <= 2 * full_rate * PROMPTED.n_leads, (sizes[1], full_rate)


def test_every_sample_is_reconstructed_at_both_scales():
    model = MMAE(TINY)
    assert (model.mask_global.sum(0) >= 1).all() and (model.mask_local.sum(0) >= 1).all()
    assert not ((model.mask_global > 0) & (model.mask_local > 0)).any()


@pytest.mark.parametrize("cfg", [TINY, PROMPTED, GATED], ids=["plain", "prompted", "gated"])
def test_onnx_matches_torch(tmp_path, cfg):
    ort = pytest.importorskip("onnxruntime")
    model = MMAE(cfg).eval()
    if cfg.prompt_gate == "learned":
        _randomise_gates(model)
    path = tmp_path / "mmae.onnx"
    x = _synthetic_windows(3, 0, 15000, seed=4)
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["windows"], output_names=["point_score", "window_score"],
                      dynamic_axes={"windows": {0: "b"}, "point_score": {0: "b"},
                                    "window_score": {0: "b"}})  # fmt: skip
    with torch.no_grad():
        point, window = model(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_point, o_window = sess.run(None, {"windows": x.numpy()})
    np.testing.assert_allclose(o_point, point.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(o_window, window.numpy(), rtol=1e-4, atol=1e-6)


def test_inconsistent_config_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of segment"):
        MMAE(MMAEConfig(window=1001))
    with pytest.raises(ValueError, match="local_region"):
        MMAE(MMAEConfig(window=100, segment=20, local_region=5))


def test_shipped_model_explains_the_hidden_signal():
    """The shipped MMAE-ECG file is not collapsed: on regular neurokit2 ECG its point score (the
    squared reconstruction residual of the hidden samples, mV^2) averages well below the squared
    centred signal, which is what a model predicting zero scores (ratio 1.0) and what version 3
    scored (0.999); the shipped version 4 scores about 0.44."""
    ort = pytest.importorskip("onnxruntime")
    from conftest import MMAE_MODEL

    from ecgstream.runtime.model_file import INPUT_NAME

    sig = _synthetic_signal()[:, 0]
    x = np.stack([sig[i * 500 : i * 500 + 1000] for i in range(8)])[:, None]
    session = ort.InferenceSession(str(MMAE_MODEL), providers=["CPUExecutionProvider"])
    point, _ = session.run(None, {INPUT_NAME: x.astype(np.float32)})
    centred = x[:, 0] - x[:, 0].mean(1, keepdims=True)
    assert point.mean() / (centred**2).mean() < 0.7
