"""Reference models scored side by side with the learned ones: PCA reconstruction and the
segment energy (the trivial predictor).

It sees exactly what the main model sees (the same preprocessed windows at the model rate) and is
exported to the same self-describing ONNX interface (input ``windows``, outputs ``point_score``
and ``window_score``), so ``ecgstream score`` and ``ecgstream evaluate`` treat both alike, and
no torch is needed to build it.

Per window and lead the mean is removed (the band-pass leaves little, but windows are short);
the flattened window is projected on the top principal components of normal training windows;
the point score is the squared reconstruction residual summed over leads, the window score its
mean over the window.

The segment-energy score is what a reconstruction model that predicts zero (the window's mean)
scores: the squared, mean-removed signal summed over leads and averaged over a short segment
around each sample (0.4 s, MMAE-ECG's token). A learned model that does not beat it has learned
nothing about the shape of the ECG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgstream.runtime.model_file import INPUT_NAME, OUTPUT_NAMES, ModelSpec, write_spec

__all__ = [
    "PCABaseline",
    "fit_pca",
    "export_pca",
    "robust_norm",
    "record_windows",
    "fit_pca_on_records",
    "ENERGY_SEGMENT_S",
    "energy_scores",
    "export_energy",
    "fit_energy_on_records",
]

#: Length (seconds) of the segment the energy score averages the squared signal over.
ENERGY_SEGMENT_S = 0.4


@dataclass
class PCABaseline:
    """A fitted PCA model: ``mean_`` ``(leads * window,)``, ``components_`` ``(k, leads * window)``."""

    n_leads: int
    window: int
    mean_: np.ndarray
    components_: np.ndarray
    explained_variance_ratio_: np.ndarray

    def _residual(self, windows: np.ndarray) -> np.ndarray:
        x = np.asarray(windows, dtype=np.float64)
        x = x - x.mean(axis=2, keepdims=True)
        d = x.reshape(len(x), -1) - self.mean_
        r = d - (d @ self.components_.T) @ self.components_
        return r.reshape(x.shape)

    def score_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw point scores ``(n, window)`` and window scores ``(n,)`` of windows ``(n, leads, window)``."""
        point = (self._residual(windows) ** 2).sum(axis=1)
        return point.astype(np.float32), point.mean(axis=1).astype(np.float32)


def fit_pca(
    windows: np.ndarray, n_components: int = 8, max_windows: int = 20000, seed: int = 0
) -> PCABaseline:
    """Fit PCA on normal windows ``(n, leads, window)`` (preprocessed, model rate).

    At most ``max_windows`` windows (a seeded random subset) are used.
    """
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 3:
        raise ValueError(f"windows must be (n, leads, window), got shape {windows.shape}")
    n, n_leads, window = windows.shape
    if n < 2:
        raise ValueError(f"need at least 2 training windows, got {n}")
    if n > max_windows:
        windows = windows[np.random.default_rng(seed).choice(n, max_windows, replace=False)]
    x = windows - windows.mean(axis=2, keepdims=True)
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=0)
    d = flat - mean
    k = int(min(n_components, d.shape[0] - 1, d.shape[1]))
    if d.shape[1] <= d.shape[0]:
        cov = d.T @ d / (len(d) - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = evals[order], evecs[:, order]
        comps = evecs[:, :k].T
    else:
        _, svals, vt = np.linalg.svd(d, full_matrices=False)
        evals = svals**2 / (len(d) - 1)
        comps = vt[:k]
    total = float(evals.clip(min=0).sum()) or 1.0
    return PCABaseline(n_leads, window, mean, comps, evals[:k] / total)


def robust_norm(raw_window_scores: np.ndarray) -> dict:
    """``score_norm`` from normal window scores: center = median, scale = 1.4826 x MAD (or std)."""
    raw = np.asarray(raw_window_scores, dtype=np.float64)
    center = float(np.median(raw))
    scale = float(1.4826 * np.median(np.abs(raw - center)))
    if not scale > 0:
        scale = float(raw.std()) or 1.0
    return {"center": center, "scale": scale}


def export_pca(model: PCABaseline, path: str | Path, spec: ModelSpec, opset: int = 17) -> Path:
    """Write ``model`` as an ONNX file with the ecgstream graph interface and ``spec`` metadata.

    ``spec.window`` and ``len(spec.leads)`` must match the fitted model; ``spec.kind`` is set to
    ``"pca"``.
    """
    from onnx import helper, numpy_helper

    if spec.window != model.window or len(spec.leads) != model.n_leads:
        raise ValueError(
            f"spec has window {spec.window} and {len(spec.leads)} leads, "
            f"the PCA model {model.window} and {model.n_leads}"
        )
    d = model.n_leads * model.window
    comps = model.components_.astype(np.float32)
    inits = [
        numpy_helper.from_array(model.mean_.astype(np.float32), "pca_mean"),
        numpy_helper.from_array(np.ascontiguousarray(comps.T), "pca_components_t"),
        numpy_helper.from_array(comps, "pca_components"),
        numpy_helper.from_array(np.array([-1, d], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1, model.n_leads, model.window], np.int64), "win_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "lead_axis"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["dc"], axes=[2], keepdims=1),
        helper.make_node("Sub", [INPUT_NAME, "dc"], ["centred"]),
        helper.make_node("Reshape", ["centred", "flat_shape"], ["flat"]),
        helper.make_node("Sub", ["flat", "pca_mean"], ["dev"]),
        helper.make_node("MatMul", ["dev", "pca_components_t"], ["codes"]),
        helper.make_node("MatMul", ["codes", "pca_components"], ["recon"]),
        helper.make_node("Sub", ["dev", "recon"], ["resid_flat"]),
        helper.make_node("Reshape", ["resid_flat", "win_shape"], ["resid"]),
        helper.make_node("Mul", ["resid", "resid"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "lead_axis"], [OUTPUT_NAMES[0]], keepdims=0),
        helper.make_node("ReduceMean", [OUTPUT_NAMES[0]], [OUTPUT_NAMES[1]], axes=[1], keepdims=0),
    ]
    spec.kind = "pca"
    spec.params = {**spec.params, "n_components": int(comps.shape[0])}
    return _save_graph(nodes, inits, "pca_reconstruction", path, spec, opset)


def _save_graph(
    nodes: list, inits: list, name: str, path: str | Path, spec: ModelSpec, opset: int
) -> Path:
    """Check and save a graph from ``windows`` ``(batch, leads, window)`` to ``point_score``
    ``(batch, window)`` and ``window_score`` ``(batch,)``, with ``spec`` as its metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", len(spec.leads), spec.window]
            )
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAMES[0], TensorProto.FLOAT, ["batch", spec.window]
            ),
            helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, ["batch"]),
        ],
        initializer=inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx_model.ir_version = min(onnx_model.ir_version, 9)
    onnx.checker.check_model(onnx_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(path))
    write_spec(path, spec)
    return path


def record_windows(path: str | Path, spec: ModelSpec, normal_only: bool = True) -> np.ndarray:
    """Preprocessed windows ``(n, leads, window)`` of one record, cut as ``spec`` cuts them.

    With ``normal_only`` and a ``.atr`` beat annotation file beside the record, only windows whose
    beats are all AAMI normal are kept (windows without beats are dropped too).
    """
    from ecgstream.signals.labels import read_beats, window_labels
    from ecgstream.signals.preprocess import preprocess
    from ecgstream.signals.records import read_record
    from ecgstream.signals.windows import frame, window_starts

    record = read_record(path, spec.leads)
    x, delay_s = preprocess(record.signal, record.fs, spec.preprocess_config)
    starts = window_starts(len(x), spec.window, spec.hop)
    if len(starts) == 0:
        return np.zeros((0, len(spec.leads), spec.window), np.float32)
    if normal_only and Path(path).with_suffix(".atr").exists():
        beats = read_beats(path)
        rs = np.rint((starts / spec.fs - delay_s) * record.fs).astype(np.int64)
        re = np.rint(((starts + spec.window) / spec.fs - delay_s) * record.fs).astype(np.int64)
        starts = starts[window_labels(beats, rs, re) == 0]
    return frame(x, starts, spec.window)


def _baseline_spec(
    spec: ModelSpec, name: str, kind: str, raw: np.ndarray, paths: list, n_windows: int
) -> ModelSpec:
    """``spec``'s leads, window, hop and preprocessing, with a ``score_norm`` from the raw
    window scores ``raw`` of normal training windows (median / MAD)."""
    return ModelSpec(
        name=name,
        version=spec.version,
        kind=kind,
        leads=list(spec.leads),
        window=spec.window,
        hop=spec.hop,
        preprocessing=dict(spec.preprocessing),
        score_norm=robust_norm(raw),
        training={"records": [Path(p).name for p in paths], "n_windows": int(n_windows)},
    )


def _normal_windows(paths: list[str | Path], spec: ModelSpec, normal_only: bool) -> np.ndarray:
    return np.concatenate([record_windows(p, spec, normal_only) for p in paths])


def fit_pca_on_records(
    paths: list[str | Path],
    spec: ModelSpec,
    out_path: str | Path,
    n_components: int = 8,
    normal_only: bool = True,
    name: str = "pca-baseline",
) -> Path:
    """Fit the PCA reference on the (normal) windows of ``paths`` as ``spec`` cuts them, and export it.

    The exported model has ``spec``'s leads, window, hop and preprocessing, and a ``score_norm``
    from the training windows' scores (median / MAD), so its scores are on a comparable scale.
    """
    windows = _normal_windows(paths, spec, normal_only)
    model = fit_pca(windows, n_components)
    _, raw = model.score_windows(windows[:: max(1, len(windows) // 5000)])
    pca_spec = _baseline_spec(spec, name, "pca", raw, paths, len(windows))
    return export_pca(model, out_path, pca_spec)


def _segment_pads(segment: int) -> tuple[int, int]:
    """Samples before and after a sample that its centred ``segment``-sample average covers."""
    return segment // 2, segment - 1 - segment // 2


def energy_scores(windows: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment-energy point scores ``(n, window)`` and window scores ``(n,)`` of windows
    ``(n, leads, window)``: the mean-removed signal squared, summed over leads and averaged over
    the ``segment`` samples centred on each sample (fewer at the window's edges); the window score
    is the mean point score. The exported graph (:func:`export_energy`) computes the same."""
    x = np.asarray(windows, dtype=np.float64)
    sq = ((x - x.mean(axis=2, keepdims=True)) ** 2).sum(axis=1)
    before, after = _segment_pads(segment)
    n = sq.shape[1]
    csum = np.concatenate([np.zeros((len(sq), 1)), np.cumsum(sq, axis=1)], axis=1)
    idx = np.arange(n)
    lo, hi = np.clip(idx - before, 0, n), np.clip(idx + after + 1, 0, n)
    point = (csum[:, hi] - csum[:, lo]) / (hi - lo)
    return point.astype(np.float32), point.mean(axis=1).astype(np.float32)


def export_energy(path: str | Path, spec: ModelSpec, segment: int, opset: int = 17) -> Path:
    """Write the segment-energy score (:func:`energy_scores`) as an ONNX file with ``spec``
    metadata (``spec.kind`` is set to ``"energy"``); ``segment`` is in samples at the model rate."""
    from onnx import helper, numpy_helper

    if not 1 <= segment <= spec.window:
        raise ValueError(f"energy segment must be 1-{spec.window} samples, got {segment}")
    before, after = _segment_pads(segment)
    inits = [numpy_helper.from_array(np.array([1], np.int64), "lead_axis")]
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["dc"], axes=[2], keepdims=1),
        helper.make_node("Sub", [INPUT_NAME, "dc"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "lead_axis"], ["sq_sum"], keepdims=1),
        helper.make_node(
            "AveragePool",
            ["sq_sum"],
            ["pooled"],
            kernel_shape=[segment],
            pads=[before, after],
            count_include_pad=0,
        ),  # fmt: skip
        helper.make_node("ReduceSum", ["pooled", "lead_axis"], [OUTPUT_NAMES[0]], keepdims=0),
        helper.make_node("ReduceMean", [OUTPUT_NAMES[0]], [OUTPUT_NAMES[1]], axes=[1], keepdims=0),
    ]
    spec.kind = "energy"
    spec.params = {**spec.params, "segment": int(segment)}
    return _save_graph(nodes, inits, "segment_energy", path, spec, opset)


def fit_energy_on_records(
    paths: list[str | Path],
    spec: ModelSpec,
    out_path: str | Path,
    segment_s: float = ENERGY_SEGMENT_S,
    normal_only: bool = True,
    name: str = "energy-baseline",
) -> Path:
    """Export the segment-energy score cut as ``spec`` cuts windows, with a ``score_norm`` from the
    (normal) windows of ``paths``; nothing else is fitted. ``segment_s`` in seconds."""
    segment = max(1, int(round(segment_s * spec.fs)))
    windows = _normal_windows(paths, spec, normal_only)
    _, raw = energy_scores(windows[:: max(1, len(windows) // 5000)], segment)
    energy_spec = _baseline_spec(spec, name, "energy", raw, paths, len(windows))
    return export_energy(out_path, energy_spec, segment)
