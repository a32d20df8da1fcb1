"""MMAE-ECG: sizes, inference-mask coverage (no leaks), training lowers the loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgstream.models.mmae import (  # noqa: E402
    MMAE,
    MMAEConfig,
    count_parameters,
    estimate_macs,
    inference_passes,
)

TINY = MMAEConfig(n_leads=2, window=400, segment=20, local_region=5, dim=32, depth=1, heads=2)


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


def test_training_steps_lower_the_loss():
    from conftest import synthetic_ecg

    torch.manual_seed(0)
    sig = synthetic_ecg(60, 100, seed=3, n_leads=2)
    x = torch.from_numpy(np.stack([sig[i : i + 400].T for i in range(0, 5000, 200)]))
    model = MMAE(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = float(model.loss(x, torch.Generator().manual_seed(9)))
    for _ in range(30):
        loss = model.loss(x, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(x, torch.Generator().manual_seed(9)))
    assert after < 0.8 * before


def test_inconsistent_config_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of segment"):
        MMAE(MMAEConfig(window=1001))
    with pytest.raises(ValueError, match="local_region"):
        MMAE(MMAEConfig(window=100, segment=20, local_region=5))
