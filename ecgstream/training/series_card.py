"""The model card of a series model (``ecgstream train --series``): a plain series, not an ECG.

A series model has no sampling rate, no filter, no leads in the ECG sense and no records: it was
fitted on the anomaly-free prefix ``[0, train_end)`` of one series. Its card says so: the input
series and channels, ``train_end``, the window, segment and hop in samples, the kind, how the
scores were calibrated, the kind's measured figures on the UCR anomaly archive (with the command
that reproduces them) and its limits.
"""

from __future__ import annotations

import json
from pathlib import Path

from ecgstream.runtime.model_file import ModelSpec, sha256_of

__all__ = ["UCR_DEV_FIGURES", "is_series_spec", "write_series_card"]

_UCR_COMMAND = (
    "python benchmarks/eval_ucr.py --methods consensus,discord "
    "--out benchmarks/results/ucr_dev_consensus.jsonl"
)
_UCR_IMAGE_COMMAND = (
    "python benchmarks/eval_ucr.py --every 6 --methods discord,consensus,pbas,uniad,onenip "
    "--budget 12 --out benchmarks/results/ucr_dev_image_fixed.jsonl"
)

#: archive accuracy on UCR dev (argmax of the point score after train_end within the labelled
#: anomaly +-100 samples), beside the stumpy discord baseline of the same run, and its command
UCR_DEV_FIGURES: dict[str, tuple[str, str]] = {
    "consensus": (
        "61 of 89 UCR dev series (0.685); on the 85 series the discord baseline ran on, 0.718 "
        "against 0.588 for the matrix-profile discord",
        _UCR_COMMAND,
    ),
    "pbas": (
        "3 of 13 UCR dev series (every 6th) against 9 for the discord baseline",
        _UCR_IMAGE_COMMAND,
    ),
    "uniad": (
        "1 of 13 UCR dev series (every 6th) against 9 for the discord baseline",
        _UCR_IMAGE_COMMAND,
    ),
    "onenip": (
        "1 of 13 UCR dev series (every 6th) against 9 for the discord baseline",
        _UCR_IMAGE_COMMAND,
    ),
}

_KINDS = {
    "consensus": "segment descriptors (sorted values and steps) against the window's own "
    "consensus and against the nearest of the prefix's descriptors stored in the graph; nothing "
    "trained (docs/model-image.md, 'Generic series: the consensus detector')",
    "pbas": "PBAS-style normal centres, boundary-guided feature synthesis and a discriminator on "
    "a small CNN trained on the prefix's channel x time images (docs/model-image.md)",
    "uniad": "UniAD-style neighbour-masked token reconstruction on a small CNN trained on the "
    "prefix's channel x time images (docs/model-image.md)",
    "onenip": "OneNIP-style prompted token reconstruction with a refiner trained on Perlin "
    "anomalies, on a small CNN trained on the prefix's channel x time images "
    "(docs/model-image.md)",
}


def is_series_spec(spec: ModelSpec) -> bool:
    """Whether ``spec`` describes a model trained on a plain series (``train_end`` recorded)."""
    return "train_end" in spec.training and "series" in spec.training


def _sizes(spec: ModelSpec) -> str:
    p = spec.params
    parts = [f"window {spec.window} samples", f"scoring hop {spec.hop} samples"]
    if spec.kind == "consensus":
        parts.insert(1, f"segment {p.get('segment')} samples every {p.get('stride')} samples")
    return ", ".join(parts)


def _settings(spec: ModelSpec) -> dict:
    """The kind's settings, without the fitted arrays (normalisation) kept in the metadata."""
    return {k: v for k, v in spec.params.items() if not isinstance(v, list) or len(v) <= 8}


def write_series_card(onnx_path: str | Path, spec: ModelSpec) -> Path:
    """Write ``<onnx stem>.md`` for a series model: input, prefix, sizes, kind, calibration,
    figures, limits, sha256."""
    onnx_path = Path(onnx_path)
    tr, norm = spec.training, spec.score_norm
    figure, command = UCR_DEV_FIGURES.get(spec.kind, ("not measured", ""))
    lines = [
        f"# Model card: {spec.name} (version {spec.version})",
        "",
        "A series model: fitted by `ecgstream train --series` on the anomaly-free prefix of one "
        "plain series (no sampling rate, no filter; all lengths in samples).",
        "",
        "## Intended use",
        f"Anomaly scoring of the series `{tr.get('series')}` and of streams like it with "
        "`ecgstream score` and `ecgstream run`: a higher score means a stretch is less like the "
        "prefix the model was fitted on. It flags candidates for review.",
        "",
        "## Input and model",
        f"- input series: `{tr.get('series')}`, {len(spec.leads)} channel(s) "
        f"({', '.join(spec.leads)}); rate 1.0 (samples), identity preprocessing",
        f"- anomaly-free prefix: samples [0, {tr.get('train_end')}) (`train_end` "
        f"{tr.get('train_end')}); dominant period {tr.get('dominant_period', '?')} samples",
        f"- sizes: {_sizes(spec)}",
        f"- kind: `{spec.kind}`: {_KINDS.get(spec.kind, spec.kind)}",
        f"- fitted on {tr.get('n_windows', '?')} windows of the prefix"
        + (
            f", {tr['reference_descriptors']} distinct reference descriptors"
            if "reference_descriptors" in tr
            else ""
        )
        + f", in {tr.get('seconds', '?')} s; parameters: {spec.params.get('parameters', 0)}",
        "",
        "## Score calibration and thresholds",
        f"Calibrated score = (raw - {norm.get('center', 0):.6g}) / {norm.get('scale', 1):.6g}: "
        f"median and 1.4826 x MAD of the raw window scores of {norm.get('n', '?')} windows of "
        "the last fifth of the prefix, held out from fitting (the whole prefix when it is too "
        "short). Thresholds, in calibrated units, are quantiles of the same windows:",
        *[f"- {k}: {v:.3f}" for k, v in sorted(spec.thresholds.items())],
        "",
        "## Figures (this kind, UCR anomaly archive)",
        f"- {figure}",
        *([f"- reproduce: `{command}`"] if command else []),
        "- a series of your own has no figure until it is labelled; the archive score counts the "
        "argmax of the point score after `train_end` within the labelled anomaly +-100 samples",
        "",
        "## Limits",
        "- Fitted on one prefix: a regime change after `train_end` (new level, new period) scores "
        "as anomalous until the model is refitted.",
        "- Thresholds come from the held-out end of the prefix only; expect to recalibrate.",
        "",
        "## File",
        f"- `{onnx_path.name}`: {onnx_path.stat().st_size / 1e6:.2f} MB, sha256 "
        f"`{sha256_of(onnx_path)}`",
        "- Full metadata: `ecgstream.spec` in the ONNX metadata_props; settings:",
        "",
        "```json",
        json.dumps(_settings(spec), indent=1, sort_keys=True),
        "```",
        "",
    ]
    card = onnx_path.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card
