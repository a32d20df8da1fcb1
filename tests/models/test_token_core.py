"""The shared token-reconstruction core: masks, neighbour attention, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecgstream.models.token_core import (  # noqa: E402
    QueryDecoder,
    TokenCore,
    complementary_masks,
    neighbour_mask,
    random_split,
)


def test_random_split_respects_exclusion_and_counts():
    gen = torch.Generator().manual_seed(1)
    exclude = torch.zeros(4, 12, dtype=torch.bool)
    exclude[:, 3:6] = True
    hide, keep = random_split(4, 12, 4, gen, exclude=exclude)
    assert hide.shape == (4, 4) and keep.shape == (4, 5)
    for h, k in zip(hide.tolist(), keep.tolist(), strict=True):
        assert not set(h) & set(k)
        assert not (set(h) | set(k)) & {3, 4, 5}
    with pytest.raises(ValueError):
        random_split(2, 5, 6)


def test_complementary_masks_cover_every_token_once():
    m = complementary_masks(11, 3)
    assert m.shape == (3, 11)
    assert m.sum(0).tolist() == [1] * 11
    assert not (m[:, :-1] & m[:, 1:]).any()  # neighbours never hidden together


def test_neighbour_mask_2d():
    m = neighbour_mask((3, 4), radius=1)
    assert m.shape == (12, 12) and m.diagonal().all()
    assert m[0, 5] and not m[0, 2] and not m[0, 8]


def test_core_and_query_decoder_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.core = TokenCore(16, depth=1, heads=2)
            self.dec = QueryDecoder(16, 8, depth=2, heads=2)
            self.pos = torch.nn.Parameter(torch.randn(1, 8, 16))
            self.register_buffer("keep", torch.arange(0, 8, 2)[None])
            self.register_buffer("hide", torch.arange(1, 8, 2)[None])
            self.register_buffer("near", neighbour_mask((8,), 1))

        def forward(self, x):
            a = self.core(x, self.pos, self.keep, self.hide)
            b = self.dec(self.core.encode(x + self.pos, self.near), self.near)
            return a.mean(-1), b.mean(-1)

    model = Head().eval()
    path = tmp_path / "core.onnx"
    torch.onnx.export(model, (torch.randn(2, 8, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["a", "b"], dynamic_axes={"x": {0: "b"}})  # fmt: skip
    x = torch.randn(5, 8, 16)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
