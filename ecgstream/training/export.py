"""Export a trained model to a self-describing ONNX file plus its markdown model card.

The graph follows :mod:`ecgstream.runtime.model_file` (input ``windows`` ``(B, leads, window)``,
outputs ``point_score`` ``(B, window)`` and ``window_score`` ``(B,)``, dynamic batch axis,
opset 17, TorchScript exporter ``dynamo=False``); the :class:`ModelSpec` goes into its
``metadata_props`` and ``<name>.md`` beside it describes use, data, figures and limits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ecgstream.runtime.model_file import INPUT_NAME, OUTPUT_NAMES, ModelSpec, sha256_of, write_spec
from ecgstream.runtime.stepping.consensus import (
    CARRY_OUTPUTS,
    STREAM_INPUTS,
    STREAM_KEY,
    STREAM_OUTPUTS,
    STREAM_RHYTHM_INPUT,
    write_stream_step,
)

__all__ = [
    "OPSET",
    "export_onnx",
    "export_model",
    "write_model_card",
    "export_checkpoint",
]

OPSET = 17


def export_onnx(
    model, spec: ModelSpec, path: str | Path, extra_outputs: tuple[str, ...] = ()
) -> Path:
    """Write ``model``'s scoring graph to ``path`` (ONNX, opset 17) with ``spec`` in its metadata
    (``extra_outputs``: names of outputs the model returns after the two scores)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(2, len(spec.leads), spec.window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[*OUTPUT_NAMES, *extra_outputs],
            dynamic_axes={
                name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES, *extra_outputs)
            },
        )
    write_spec(path, spec)
    return path


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_model_card(onnx_path: str | Path, spec: ModelSpec) -> Path:
    """Write ``<onnx stem>.md`` beside the model: intended use, data, splits, figures, limits, sha256."""
    from ecgstream.training.series_card import is_series_spec, write_series_card

    if is_series_spec(spec):  # a plain series: no rate, filter, records or ECG limits
        return write_series_card(onnx_path, spec)
    onnx_path = Path(onnx_path)
    tr = spec.training
    cfg = tr.get("config", {})
    val = tr.get("validation", {})
    calibrated = _calibration_records(tr)
    where = (
        f"the normal windows of {len(calibrated)} records (validation and training records: the "
        "window scores depend on nothing fitted on the training records)"
        if len(calibrated) > len(tr.get("val_records", []))
        else "normal validation windows"
    )
    lines = [
        f"# Model card: {spec.name} (version {spec.version})",
        "",
        "**Not a certified medical device.** Decision support for research and engineering only; "
        "it must not be used to diagnose or treat patients.",
        "",
        "## Intended use",
        f"Anomaly scoring of ECG streams and records (lead(s) {', '.join(spec.leads)}) with ecgstream "
        "(`ecgstream score`, `ecgstream run`): a higher score means the signal is less like the normal "
        "rhythm the model was trained on. It flags candidates for review; it does not classify beats "
        "or rhythms.",
        "",
        "## Model",
        *_model_lines(spec),
        *_history_lines(spec),
        "",
        "## Validation figures (held-out records)",
        *[f"- {k}: {_fmt(v)}" for k, v in val.items()],
        "",
        "## Score calibration and thresholds",
        f"Calibrated score = (raw - {spec.score_norm.get('center', 0):.6g}) / {spec.score_norm.get('scale', 1):.6g} "
        f"(median and 1.4826 x MAD of the raw window scores of {where}). Thresholds, in "
        f"calibrated units, are quantiles of the same {spec.score_norm.get('n', '?')} windows:",
        *[f"- {k}: {v:.3f}" for k, v in sorted(spec.thresholds.items())],
        "",
        "## Limits",
        *_limit_lines(spec),
        "- Noise, electrode motion and lead-off periods score as anomalous; the model does not tell them "
        "apart from cardiac events.",
        "- Thresholds come from validation normals of the training database; recalibrate for other "
        "devices, leads or populations.",
        "",
        "## File",
        f"- `{onnx_path.name}`: {onnx_path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256_of(onnx_path)}`",
        *_stream_step_lines(onnx_path),
        "- Full metadata: `ecgstream.spec` in the ONNX metadata_props; training configuration:",
        "",
        "```json",
        json.dumps(cfg, indent=1, sort_keys=True),
        "```",
        "",
    ]
    card = onnx_path.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card


def _stream_step_lines(onnx_path: Path) -> list[str]:
    """The card's line on the file's stream step, if it has one."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    if STREAM_KEY not in meta:
        return []
    lay = json.loads(meta[STREAM_KEY])
    return [
        f"- Stream step: `{STREAM_KEY}` in the metadata_props, a second graph with which "
        f"`ecgstream run` scores a window from the sorts of its {lay['new']} new segments "
        f"(numpy sorts them from its last {lay['span']} samples and selects the window's "
        f"medians) and the {lay['carry']} sorted segments it shares with its stream's previous "
        "window: the same scores, to float32 rounding, for about a quarter of the main graph's "
        "inference time",
    ]


def export_model(model, spec: ModelSpec, path: str | Path) -> Path:
    """ONNX file (with its stream step, when the model has one) plus model card; returns the
    ONNX path."""
    layout_of = getattr(model, "stream_layout", None)
    layout = layout_of(spec.hop) if layout_of is not None else None
    if layout is None:
        path = export_onnx(model, spec, path)
    else:  # the main graph also hands each window's sorts over (the stream step's first window)
        model.carry_outputs = layout
        try:
            path = export_onnx(model, spec, path, CARRY_OUTPUTS)
        finally:
            model.carry_outputs = None
        _export_stream_step(model, spec, path, layout)
    write_model_card(path, spec)
    return path


def _export_stream_step(model, spec: ModelSpec, path: Path, layout: dict) -> None:
    """Embed the stream step of ``model`` (a consensus model with ``layout``, its
    ``stream_layout``) in the ONNX file at ``path``."""
    import io

    import torch

    from ecgstream.models.consensus import StreamStep

    step = StreamStep(model, layout).eval()
    leads = len(spec.leads)
    example = (
        torch.zeros(2, leads, layout["new"], layout["segment"]),
        torch.zeros(2, leads, layout["new_floors"], layout["floor_width"]),
        torch.zeros(2, leads, layout["carry"], layout["segment"]),
        torch.zeros(2, leads, layout["carry_floors"], layout["floor_width"]),
        torch.zeros(2, leads, 1, layout["segment"]),
        torch.zeros(2, leads, 1, layout["floor_width"]),
    )
    names = list(STREAM_INPUTS)
    if layout["rhythm"]:  # the rhythm term compares the whole window with itself
        example = (*example, torch.zeros(2, leads, spec.window))
        names.append(STREAM_RHYTHM_INPUT)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step,
            example,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=list(STREAM_OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (*names, *STREAM_OUTPUTS)},
        )
    write_stream_step(path, layout, buf.getvalue())


def export_checkpoint(checkpoint: str | Path, path: str | Path, name: str | None = None,
                      version: str | None = None) -> Path:  # fmt: skip
    """Export a ``model.pt`` written by training (or its folder) to ``path`` with its card."""
    from ecgstream.training.registry import get_kind
    from ecgstream.training.trainer import load_checkpoint

    state = load_checkpoint(checkpoint)
    if "spec" not in state:
        raise ValueError(f"{checkpoint}: not a finished training checkpoint (no calibrated spec); "
                         "use the model.pt written at the end of `ecgstream train`")  # fmt: skip
    spec = ModelSpec.from_json(state["spec"])
    if name:
        spec.name = name
    if version:
        spec.version = version
    model = get_kind(spec.kind).load(state)
    return export_model(model, spec, path)


def _calibration_records(training: dict) -> list:
    """The records whose normal windows calibrated the thresholds (the validation records for
    models exported before ``calibrate_on``)."""
    return training.get("calibration_records", training.get("val_records", []))


def _history_lines(spec: ModelSpec) -> list[str]:
    """The card's bullet on the per-stream history term (none without one)."""
    h = spec.history
    if not h:
        return []
    return [
        f"- history (`history` in the spec): each segment's envelope snippet ({h['before_s']:g} s "
        f"before its centre to {h['after_s']:g} s after) against a bank of the stream's own "
        f"snippets of the last {h['bank_s']:g} s of windows scoring below {h['gate']:g}; the "
        f"nearest one's relative distance, times {h['weight']:.4g}, is added to the point scores "
        f"and (mean of the top {h['topk_frac']:g}) to the window score; 0 until the bank holds "
        f"{h['min_entries']} snippets (docs/model-consensus.md)"
    ]


def _prompt_text(p: dict) -> str:
    """The model card's words for an MMAE-ECG rhythm prompt (``""`` without one)."""
    if not p.get("prompt_periods"):
        return ""
    text = (
        f"; rhythm prompt: every token also sees the visible signal 1 to "
        f"{p['prompt_periods']} beat periods before and after it, aligned per token"
    )
    if "prompt_refine_step" in p:
        step = p["prompt_refine_step"]
        text += f" (lag steps of {step} sample" + ("s" if step != 1 else "")
        text += (", refined below one sample" if p.get("prompt_subsample") else "") + ")"
    gate, tau = p.get("prompt_gate", "mean"), p.get("prompt_tau")
    if gate == "cost":
        return (
            text + f", and the heads correct those copies weighted by their match cost (tau {tau})"
        )
    if gate == "learned":
        text += (
            ", combined by a learned gate (weight, gain and shift per copy, starting at weights "
            f"from their match cost, tau {tau})"
        )
        return text + (", which the heads correct" if p.get("prompt_heads", True) else "")
    return text + ", and the heads correct the mean of those copies"


def _model_lines(spec: ModelSpec) -> list[str]:
    """The card's model and training-data bullets, which depend on the model kind."""
    tr, p = spec.training, spec.params
    cfg = tr.get("config", {})
    io = (
        f"- input: {len(spec.leads)} lead(s) at {spec.fs:g} Hz, window {spec.window} samples "
        f"({spec.window_s:g} s), hop {spec.hop} samples ({spec.hop_s:g} s); band-pass "
        f"{spec.preprocessing.get('highpass_hz')}-{spec.preprocessing.get('lowpass_hz')} Hz (causal)"
    )
    records = f"{' '.join(map(str, tr.get('records', [])))}"
    val_records = f"{' '.join(map(str, tr.get('val_records', [])))}"
    calibration = _calibration_records(tr)
    if spec.kind == "consensus":
        refiner = tr.get("refiner")
        weights = (
            f"a score refiner of {p.get('parameters', '?')} trained weights "
            f"({p.get('refiner_channels')} channels, dilations {list(p.get('refiner_dilations', ()))}"
            ") places the point scores; the window scores are the detector's own"
            if refiner
            else f"a population reference fitted on the normal training windows "
            f"({_fitted_population_values(spec):,} values: means, scales and whitening bases of "
            "the window's typical segment and of each lead's band spectrum)"
            if p.get("population_components")
            else "no trained weights"
        )
        return [
            "- kind: `consensus` (in-window consensus of shift-invariant segment descriptors; "
            f"see docs/model-consensus.md); {weights}",
            io,
            f"- segments of {p.get('segment')} samples every {p.get('stride')} samples, each "
            "described by its sorted median-centred values"
            "; score = squared distance to the window's median descriptor"
            + (
                f"; where a segment holds less than the median, at most its mean squared "
                f"distance to its {p.get('neighbours')} nearest segments of the window"
                if p.get("neighbours")
                else ""
            )
            + (
                f"; plus a rhythm term (weight {p.get('rhythm_weight')}): each segment's middle "
                f"{p.get('rhythm_span')} samples against the signal one beat period before and "
                "after it"
                if p.get("rhythm_weight")
                else ""
            ),
            "",
            "## Data and splits",
            f"- records read ({len(tr.get('records', []))}, counted only): {records}"
            if not refiner
            else f"- training records ({len(tr.get('records', []))}; the refiner learned from "
            f"{refiner.get('windows')} windows of synthetic anomalies injected into them, final "
            f"loss {refiner.get('loss')}): {records}",
            f"- validation records ({len(tr.get('val_records', []))}; the figures below): "
            f"{val_records}",
            f"- calibration records ({len(calibration)}; thresholds from their normal windows): "
            f"{' '.join(map(str, calibration))}",
            f"- calibration time {tr.get('train_seconds', '?')} s",
        ]
    return [
        f"- kind: `{spec.kind}` (MMAE-ECG, multi-scale masked autoencoder; see docs/model-mmae.md)",
        f"- parameters: {p.get('parameters', '?')}, about {p.get('macs_per_window', 0) / 1e6:.0f} M "
        "multiply-accumulates per window",
        io,
        f"- architecture: segment {p.get('segment')} samples, local segments "
        f"{p.get('segment', 0) // max(1, p.get('local_factor', 1))} samples over a region of "
        f"{p.get('local_region')} segments, dim {p.get('dim')}, encoder depth {p.get('depth')}, "
        f"{p.get('heads')} heads, one decoder block, training mask ratios {p.get('mask_global')} "
        f"(global) / {p.get('mask_local')} (local){_prompt_text(p)}",
        "",
        "## Training data and splits",
        f"- training records ({len(tr.get('records', []))}): {records}",
        f"- validation records ({len(tr.get('val_records', []))}, not trained on; early stopping, model "
        f"selection and threshold calibration): {val_records}",
        f"- normal training windows (start positions): {tr.get('windows', '?')}; only windows without "
        f"abnormal beats (AAMI S, V, F, Q classes) within {cfg.get('normal_margin_s', '?')} s, or NORM-only "
        "ECGs for PTB-XL",
        f"- epochs run: {tr.get('epochs', '?')}, best epoch: {tr.get('best_epoch', '?')} "
        f"(selected by {tr.get('selection_metric', '?')}), seed {tr.get('seed', '?')}, training time "
        f"{tr.get('train_seconds', '?')} s",
    ]


def _fitted_population_values(spec: ModelSpec) -> int:
    """How many values the population reference of a consensus ``spec`` fitted: mean, lead scale,
    basis (components x dims) and spread of the descriptor, and the same for the band spectrum."""
    p = spec.params
    k, leads = int(p.get("population_components", 0)), len(spec.leads)
    dims = [leads * int(p.get("segment", 0))]  # the window's typical segment, per lead
    if p.get("population_spectrum_bands"):
        dims.append(leads * int(p["population_spectrum_bands"]))
    # mean and scale (dims each), basis (rows x dims), spread (rows), residual (1); rows <= k
    return sum(2 * d + min(k, d) * d + min(k, d) + 1 for d in dims)


def _limit_lines(spec: ModelSpec) -> list[str]:
    """The card's kind-specific limits."""
    if spec.kind == "consensus":
        return [
            "- It compares each part of a 10 s window with the rest of the same window: an "
            "abnormality present in every beat of the window (a bundle branch block, a paced rhythm, "
            "a whole window of a ventricular rhythm) is the window's consensus and scores low.",
            "- Where abnormal beats are the majority of a window (bigeminy, runs), the normal beats "
            "between them stand out instead.",
        ]
    return [
        "- Trained on few patients; scores of patients unlike the training ones (pacemakers, bundle "
        "branch blocks, unusual morphology) run high: expect more false alarms on them.",
        "- Rhythm-only anomalies with normal morphology (some supraventricular ectopy) are weakly scored.",
    ]
