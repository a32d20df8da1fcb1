"""The evaluation protocol behind ``ecgstream evaluate`` and ``benchmarks/eval_core.py``.

Scores come from a :class:`ScoreSource`: an exported model scored here with ONNX Runtime
(:class:`ModelSource`), or a folder of ``.npz`` files written by ``ecgstream score`` or by any
third-party tool that follows the scoring contract (:class:`NpzSource`). Both are evaluated by
the same code, on the record's own sampling rate:

- **beat level** (records with ``.atr`` beat annotations): the score of a beat is the max point
  score within +-150 ms of its annotation; label = AAMI abnormal (S, V, F, Q) vs normal (N).
- **10 s windows**: non-overlapping 10 s windows of the record, score = max point score in the
  window, label from :func:`ecgstream.signals.labels.window_labels` (windows without beats and
  windows with unscored samples only are left out).
- **record level** (PTB-XL style sets): record score = max of the record's ``window_score``;
  label 0 = NORM only, 1 = any other diagnostic superclass.
- **localisation** (needs a model): Perlin-noise anomalies with exact masks are injected into
  excerpts of real records (:mod:`ecgstream.signals.synth`); point-level AUROC of the point score
  against the mask. Samples within 0.5 s of a real abnormal beat are left out of the negatives.

AUROC / AP are pooled over all records (not averaged per record).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ecgstream.evaluation.metrics import (
    MetricError,
    auroc,
    auroc_interval,
    average_precision,
    beat_scores,
    fixed_windows,
    interval_max,
)
from ecgstream.runtime.scorer import RecordScores, Scorer
from ecgstream.signals.labels import BeatAnnotations, normal_mask, read_beats, window_labels
from ecgstream.signals.records import Record, RecordError, read_record, select_leads
from ecgstream.signals.series import is_series_path, read_series
from ecgstream.signals.synth import KINDS_1D, inject_1d

__all__ = [
    "BEAT_HALF_WIDTH_S",
    "WINDOW_S",
    "RECORD_SCORE",
    "ScoreSource",
    "ModelSource",
    "NpzSource",
    "load_npz",
    "Collected",
    "collect_record",
    "localisation_excerpts",
    "synthetic_excerpts",
    "LocalisationExample",
    "LOCALISATION_CONTEXT_S",
    "summarise",
    "record_labels",
    "beats_of",
    "Example",
    "default_injector",
    "evaluate",
]

log = logging.getLogger(__name__)

#: Half-width (seconds) of the interval around a beat annotation whose max point score scores the beat.
BEAT_HALF_WIDTH_S = 0.15
#: Length (seconds) of the fixed windows of the window-level metric.
WINDOW_S = 10.0
#: How a record's score is made from its window scores (record-level metric).
RECORD_SCORE = "max of window_score"
#: Seconds kept before and after a synthetic anomaly in a localisation example (for plots).
LOCALISATION_CONTEXT_S = 4.0


def load_npz(path: str | Path) -> RecordScores:
    """Read one ``.npz`` of the scoring contract, checking its fields."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: score file not found")
    with np.load(path) as data:
        missing = {"fs", "point_score", "window_start", "window_end", "window_score"} - set(
            data.files
        )
        if missing:
            raise RecordError(f"{path}: score file lacks {sorted(missing)}")
        return RecordScores(
            name=path.stem,
            fs=float(data["fs"]),
            point_score=np.asarray(data["point_score"], dtype=np.float64),
            window_start=np.asarray(data["window_start"], dtype=np.int64),
            window_end=np.asarray(data["window_end"], dtype=np.int64),
            window_score=np.asarray(data["window_score"], dtype=np.float64),
        )


class ScoreSource:
    """Where the scores of a record come from (a model, or a folder of score files)."""

    name: str = ""

    def scores(self, record: Record) -> RecordScores:  # pragma: no cover - interface
        raise NotImplementedError


class ModelSource(ScoreSource):
    """Scores records with an exported ONNX model (ONNX Runtime only)."""

    def __init__(self, model_path: str | Path, threads: int = 1, batch_size: int = 64):
        self.scorer = Scorer(model_path, threads=threads, batch_size=batch_size)
        self.spec = self.scorer.spec
        self.name = self.spec.name or Path(model_path).stem
        self.path = Path(model_path)

    def scores(self, record: Record) -> RecordScores:
        return self.scorer.score_record(record)

    def score_signal(self, signal: np.ndarray, fs: float, name: str = "") -> RecordScores:
        """Score a signal whose leads are already the model's (see :meth:`Scorer.score_signal`)."""
        return self.scorer.score_signal(signal, fs, name)


class NpzSource(ScoreSource):
    """Reads ``<folder>/<record name>.npz`` (the output of ``ecgstream score`` or a third party)."""

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RecordError(f"{self.folder}: score folder not found")
        self.name = name or self.folder.name

    def scores(self, record: Record) -> RecordScores:
        scores = load_npz(self.folder / f"{record.name}.npz")
        if len(scores.point_score) != record.n_samples:
            raise RecordError(
                f"{record.name}: score file has {len(scores.point_score)} point scores, "
                f"the record {record.n_samples} samples"
            )
        if abs(scores.fs - record.fs) > 1e-6:
            raise RecordError(
                f"{record.name}: score file is at {scores.fs} Hz, the record at {record.fs} Hz"
            )
        return scores


@dataclass
class LocalisationExample:
    """One synthetic anomaly as scored, kept for plots: the part of its excerpt around the anomaly.

    ``signal`` is the first model lead after injection (record units), ``mask`` the exact
    anomaly mask and ``score`` the point score (NaN where unscored), all ``(n,)`` at ``fs`` Hz;
    ``start`` is the first kept sample's index in the record.
    """

    record: str
    kind: str
    fs: float
    start: int
    signal: np.ndarray
    mask: np.ndarray
    score: np.ndarray


@dataclass
class Collected:
    """Pooled (label, score) pairs of one score source over many records, per metric."""

    beat_labels: list[np.ndarray] = field(default_factory=list)
    beat_scores: list[np.ndarray] = field(default_factory=list)
    #: the beats' annotation symbols, aligned with ``beat_labels`` (for per-class figures)
    beat_symbols: list[np.ndarray] = field(default_factory=list)
    window_labels: list[np.ndarray] = field(default_factory=list)
    window_scores: list[np.ndarray] = field(default_factory=list)
    record_names: list[str] = field(default_factory=list)
    record_label: list[int] = field(default_factory=list)
    record_score: list[float] = field(default_factory=list)
    point_labels: list[np.ndarray] = field(default_factory=list)
    point_scores: list[np.ndarray] = field(default_factory=list)
    point_kinds: list[str] = field(default_factory=list)
    #: the windows the model scores (``window_score``), labelled from the beats, for the share
    #: of them over ``threshold`` (the model's default alert threshold; None: not known)
    alert_labels: list[np.ndarray] = field(default_factory=list)
    alert_scores: list[np.ndarray] = field(default_factory=list)
    threshold: float | None = None
    #: point scores of records written by ``ecgstream synth``, labelled by their saved masks
    mask_labels: list[np.ndarray] = field(default_factory=list)
    mask_scores: list[np.ndarray] = field(default_factory=list)
    #: the first scored excerpt of each kind of synthetic anomaly
    localisation_examples: dict[str, LocalisationExample] = field(default_factory=dict)
    per_record: dict = field(default_factory=dict)

    def arrays(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated labels and scores of ``kind`` (beat, window, record, point, alert, mask)."""
        if kind == "record":
            return np.asarray(self.record_label, dtype=np.int8), np.asarray(
                self.record_score, dtype=np.float64
            )
        labels, scores = getattr(self, f"{kind}_labels"), getattr(self, f"{kind}_scores")
        if not labels:
            return np.zeros(0, np.int8), np.zeros(0)
        return np.concatenate(labels), np.concatenate(scores)


def _record_score(scores: RecordScores) -> float:
    finite = scores.window_score[np.isfinite(scores.window_score)]
    return float(finite.max()) if finite.size else float("nan")


def collect_record(
    out: Collected,
    record: Record,
    scores: RecordScores,
    beats: BeatAnnotations | None = None,
    record_label: int | None = None,
) -> None:
    """Add one record's beat, 10 s window and record (label, score) pairs to ``out``."""
    info: dict = {"n_samples": record.n_samples, "fs": record.fs}
    point = scores.point_score
    if beats is not None and len(beats):
        b = beat_scores(point, beats.samples, record.fs, BEAT_HALF_WIDTH_S)
        ok = np.isfinite(b)
        out.beat_labels.append(beats.abnormal[ok].astype(np.int8))
        out.beat_scores.append(b[ok])
        out.beat_symbols.append(beats.symbols[ok])
        starts, ends = fixed_windows(record.n_samples, record.fs, WINDOW_S)
        wl = window_labels(beats, starts, ends)
        ws = interval_max(point, starts, ends)
        keep = (wl >= 0) & np.isfinite(ws)
        out.window_labels.append(wl[keep])
        out.window_scores.append(ws[keep])
        ml = window_labels(beats, scores.window_start, scores.window_end)
        usable = (ml >= 0) & np.isfinite(scores.window_score)
        out.alert_labels.append(ml[usable])
        out.alert_scores.append(scores.window_score[usable])
        info.update(
            n_beats=int(ok.sum()),
            n_abnormal_beats=int(beats.abnormal[ok].sum()),
            n_windows=int(keep.sum()),
            n_abnormal_windows=int((wl[keep] == 1).sum()),
        )
        with contextlib.suppress(MetricError):
            info["beat_auroc"] = auroc(beats.abnormal[ok], b[ok])
    if record_label is not None and record_label >= 0:
        out.record_names.append(record.name)
        out.record_label.append(int(record_label))
        out.record_score.append(_record_score(scores))
        info.update(label=int(record_label), score=out.record_score[-1])
    out.per_record[record.name] = info


def synthetic_excerpts(
    signal: np.ndarray, fs: float, rng: np.random.Generator, n_excerpts: int, excerpt_s: float,
    inject: Callable,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, dict]]:  # fmt: skip
    """``n_excerpts`` random excerpts of ``excerpt_s`` seconds of ``signal`` (at ``fs`` Hz; the
    whole signal when shorter), each with one anomaly from ``inject(excerpt, fs, rng) ->
    (excerpt_out, mask, info)``: yields ``(start sample, excerpt_out, mask (bool), info)``.

    The draws of the localisation protocol, in its order (the start, then the anomaly), so a
    study that cuts its excerpts here sees the same ones as ``ecgstream evaluate`` for one seed.
    """
    n = min(int(round(excerpt_s * fs)), len(signal))
    for _ in range(n_excerpts):
        start = int(rng.integers(0, len(signal) - n + 1))
        out, mask, info = inject(signal[start : start + n], fs, rng)
        yield start, out, np.asarray(mask, dtype=bool), info


def localisation_excerpts(
    source: ModelSource,
    record: Record,
    rng: np.random.Generator,
    n_excerpts: int,
    excerpt_s: float,
    inject: Callable,
    beats: BeatAnnotations | None = None,
    out: Collected | None = None,
) -> Collected:
    """Inject one synthetic anomaly into each of ``n_excerpts`` random excerpts and score them.

    ``inject(signal, fs, rng) -> (signal_out, mask, info)`` works on ``(n, leads)`` at the record
    rate and returns a per-sample boolean mask and a dict with the anomaly ``kind``. Excerpts are cut from the model's leads of ``record``.
    Negatives within 0.5 s of a real abnormal beat are left out.
    """
    out = out if out is not None else Collected()
    picked = select_leads(record, source.spec.leads) if source.spec.leads else record
    real_ok = (
        normal_mask(beats, record.n_samples, 0.5) if beats is not None and len(beats) else None
    )
    excerpts = synthetic_excerpts(picked.signal, record.fs, rng, n_excerpts, excerpt_s, inject)
    for start, seg_out, mask, info in excerpts:
        n = len(mask)
        scores = source.score_signal(seg_out, record.fs, f"{record.name}+{start}")
        keep = np.isfinite(scores.point_score)
        if real_ok is not None:
            keep &= real_ok[start : start + n] | mask
        if mask[keep].any() and not mask[keep].all():
            out.point_labels.append(mask[keep].astype(np.int8))
            out.point_scores.append(scores.point_score[keep])
            kind = str(info.get("kind", ""))
            out.point_kinds.append(kind)
            if kind not in out.localisation_examples:
                out.localisation_examples[kind] = _example_of(
                    record, start, seg_out, mask, scores.point_score, kind
                )
            out.per_record.setdefault(record.name, {}).setdefault("excerpts", []).append(
                {"start": start, "n": n, "anomalous": int(mask.sum()), "kind": kind}
            )
    return out


def _example_of(
    record: Record, start: int, signal: np.ndarray, mask: np.ndarray, score: np.ndarray, kind: str
) -> LocalisationExample:
    """The part of an excerpt within :data:`LOCALISATION_CONTEXT_S` of its anomaly."""
    where = np.flatnonzero(mask)
    pad = int(round(LOCALISATION_CONTEXT_S * record.fs))
    a, b = max(int(where[0]) - pad, 0), min(int(where[-1]) + 1 + pad, len(mask))
    lead = np.asarray(signal).reshape(len(mask), -1)[a:b, 0]
    return LocalisationExample(
        record.name, kind, record.fs, start + a, lead.copy(), mask[a:b].copy(), score[a:b].copy()
    )


def _metric_block(labels: np.ndarray, scores: np.ndarray, with_ap: bool = True) -> dict:
    block: dict = {"n": int(labels.size), "n_positive": int((labels == 1).sum())}
    try:
        block["auroc"] = auroc(labels, scores)
        if with_ap:
            block["ap"] = average_precision(labels, scores)
            block["ap_chance"] = block["n_positive"] / block["n"]
    except MetricError as exc:
        block["auroc"] = None
        block["note"] = str(exc)
    return block


def summarise(collected: Collected) -> dict:
    """The metric blocks (AUROC, AP, counts) of one source, for the JSON report."""
    report: dict = {}
    labels, scores = collected.arrays("beat")
    if labels.size:
        report["beat"] = {**_metric_block(labels, scores), "half_width_s": BEAT_HALF_WIDTH_S}
    labels, scores = collected.arrays("window")
    if labels.size:
        report["window_10s"] = {
            **_metric_block(labels, scores),
            "window_s": WINDOW_S,
            "window_score": "max point score",
        }
    labels, scores = collected.arrays("record")
    if labels.size:
        report["record"] = {**_metric_block(labels, scores), "record_score": RECORD_SCORE}
    labels, scores = collected.arrays("alert")
    if labels.size and collected.threshold is not None:
        over = scores >= collected.threshold
        report["alerts"] = {
            "threshold": collected.threshold,
            "window_score": "the model's own windows",
            "normal_windows": int((labels == 0).sum()),
            "abnormal_windows": int((labels == 1).sum()),
            "normal_over": float(over[labels == 0].mean()) if (labels == 0).any() else None,
            "abnormal_over": float(over[labels == 1].mean()) if (labels == 1).any() else None,
        }
        if (labels == 0).any() and (labels == 1).any():
            # how well the model ranks its own windows, and the threshold that would put half
            # of the abnormal ones over it (with the share of normal ones it would put over too)
            half = float(np.median(scores[labels == 1]))
            report["alerts"]["auroc"] = auroc(labels, scores)
            report["alerts"]["half_threshold"] = half
            report["alerts"]["normal_over_at_half"] = float((scores[labels == 0] >= half).mean())
    labels, scores = collected.arrays("point")
    if labels.size:
        block = {**_metric_block(labels, scores), "n_excerpts": len(collected.point_labels)}
        if block["auroc"] is not None:  # the excerpts, not the samples, are the unit of chance
            block["auroc_interval_95"] = list(
                auroc_interval(collected.point_labels, collected.point_scores)
            )
        per_kind = {}
        for kind in sorted(set(collected.point_kinds)):
            sel = [i for i, k in enumerate(collected.point_kinds) if k == kind]
            kl = np.concatenate([collected.point_labels[i] for i in sel])
            ks = np.concatenate([collected.point_scores[i] for i in sel])
            per_kind[kind] = _metric_block(kl, ks, with_ap=False)
        block["per_kind"] = per_kind
        report["localisation"] = block
    labels, scores = collected.arrays("mask")
    if labels.size:
        report["synth_masks"] = {
            **_metric_block(labels, scores),
            "n_records": len(collected.mask_labels),
            "labels": "the masks `ecgstream synth` saved (<name>.mask.npz), point level",
        }
    return report


def synth_mask(path: Path, record: Record) -> np.ndarray | None:
    """The anomaly mask ``ecgstream synth`` saved beside ``record`` (``<name>.mask.npz``: True
    where it changed the signal, one per sample), or None when there is none.

    A mask whose length or rate differs from the record's is an error: the record is not the one
    the mask was written with.
    """
    file = Path(path).parent / f"{record.name}.mask.npz"
    if not file.exists():
        return None
    with np.load(file) as saved:
        mask, fs = np.asarray(saved["mask"], dtype=bool), float(saved["fs"])
    if len(mask) != record.n_samples or fs != record.fs:
        raise RecordError(
            f"{file}: mask of {len(mask)} samples at {fs:g} Hz does not fit record "
            f"{record.name} ({record.n_samples} samples at {record.fs:g} Hz)"
        )
    return mask


def collect_mask(
    out: Collected,
    mask: np.ndarray,
    scores: RecordScores,
    beats: BeatAnnotations | None,
) -> None:
    """Add a synth record's (mask, point score) pairs to ``out``: scored samples only, and, as in
    the localisation protocol, no sample within 0.5 s of a real abnormal beat among the
    negatives."""
    keep = np.isfinite(scores.point_score)
    if beats is not None and len(beats):
        keep &= normal_mask(beats, len(mask), 0.5) | mask
    if keep.any():
        out.mask_labels.append(mask[keep].astype(np.int8))
        out.mask_scores.append(scores.point_score[keep])


def record_labels(paths: Iterable[Path]) -> dict[Path, int]:
    """Record labels of PTB-XL records (by path), from the ``ptbxl_database.csv`` of their folder."""
    from ecgstream.signals.labels import ptbxl_table

    out: dict[Path, int] = {}
    roots: dict[Path, dict] = {}
    for path in paths:
        path = Path(path)
        root = next((p for p in path.parents if (p / "ptbxl_database.csv").exists()), None)
        if root is None:
            continue
        if root not in roots:
            table = ptbxl_table(root, "lr")
            table_hr = ptbxl_table(root, "hr")
            mapping = {
                Path(p).resolve(): int(lab)
                for p, lab in zip(table["path"], table["label"], strict=False)
            }
            mapping.update(
                {
                    Path(p).resolve(): int(lab)
                    for p, lab in zip(table_hr["path"], table_hr["label"], strict=False)
                }
            )
            roots[root] = mapping
        label = roots[root].get(path.resolve())
        if label is not None:
            out[path] = label
    return out


def beats_of(path: Path) -> BeatAnnotations | None:
    """Beat annotations of a record when it has an ``.atr`` file, else None."""
    if not Path(path).with_suffix(".atr").exists():
        return None
    return read_beats(path)


@dataclass
class Example:
    """One record kept for the example plot: the signal of the first source's leads and every source's scores."""

    record: Record
    beats: BeatAnnotations | None
    scores: dict[str, RecordScores]


def default_injector(kinds: Sequence[str] | None = None, strength: float = 1.0) -> Callable:
    """``inject(signal, fs, rng) -> (signal_out, mask, info)``: the Perlin synthesiser.

    ``kinds`` limits the kinds drawn (default all of ``KINDS_1D``); ``strength`` multiplies the
    size of the additive kinds (wander, noise), 1 being the protocol the reported figures use.
    """
    if not strength > 0:
        raise ValueError(f"anomaly strength must be > 0, got {strength}")
    if kinds is None and strength == 1.0:
        return inject_1d
    return partial(inject_1d, kinds=list(kinds) if kinds else None, strength=strength)


def evaluate(
    sources: list[ScoreSource],
    paths: list[Path],
    localisation: int = 0,
    excerpt_s: float = 60.0,
    seed: int = 0,
    inject: Callable | None = None,
    progress: bool = True,
    kinds: Sequence[str] | None = None,
    strength: float = 1.0,
) -> tuple[dict, dict[str, Collected], Example | None]:
    """Evaluate every source on the same records; returns (report, collected pairs, example record).

    ``localisation`` is the number of excerpts (``excerpt_s`` seconds) per record into which one
    synthetic anomaly each is injected; every model source sees the same excerpts and anomalies.
    They come from ``inject``, or else from the Perlin synthesiser with ``kinds`` (default all)
    and ``strength`` (:func:`default_injector`).
    Records that cannot be read or scored are skipped and listed under ``skipped``.
    """
    from tqdm import tqdm

    # a model's default threshold is the one ecgstream run alerts at; score folders have none
    collected = {
        s.name: Collected(threshold=s.spec.threshold if getattr(s, "spec", None) else None)
        for s in sources
    }
    if len(collected) != len(sources):
        raise ValueError(f"score sources need distinct names, got {[s.name for s in sources]}")
    labels = record_labels(paths)
    skipped: dict[str, str] = {}
    example: Example | None = None
    anomalies: dict = (
        {"injector": "custom"}
        if inject is not None
        else {"injector": "perlin", "kinds": list(kinds or KINDS_1D), "strength": strength}
    )
    if localisation and inject is None:
        inject = default_injector(kinds, strength)
    for index, path in enumerate(
        tqdm(paths, desc="evaluating", unit="record", disable=not progress)
    ):
        try:
            record = read_series(path) if is_series_path(path) else read_record(path)
            beats = beats_of(path)
            mask = synth_mask(path, record)
            per_source = {s.name: s.scores(record) for s in sources}
        except RecordError as exc:
            skipped[str(path)] = str(exc)
            log.warning("skipped %s: %s", path, exc)
            continue
        for source in sources:
            collect_record(
                collected[source.name],
                record,
                per_source[source.name],
                beats,
                labels.get(Path(path)),
            )
            if mask is not None:
                collect_mask(collected[source.name], mask, per_source[source.name], beats)
            if localisation and isinstance(source, ModelSource):
                rng = np.random.default_rng([seed, index])
                localisation_excerpts(
                    source,
                    record,
                    rng,
                    localisation,
                    excerpt_s,
                    inject,
                    beats,
                    collected[source.name],
                )
        # the example plot shows the record with the most abnormal beats
        n_abnormal = 0 if beats is None else int(beats.abnormal.sum())
        if n_abnormal and (example is None or n_abnormal > int(example.beats.abnormal.sum())):
            example = Example(record, beats, per_source)
    report = {
        "records": [str(p) for p in paths],
        "skipped": skipped,
        "protocol": {
            "beat_half_width_s": BEAT_HALF_WIDTH_S,
            "window_s": WINDOW_S,
            "record_score": RECORD_SCORE,
            "localisation_excerpts_per_record": localisation,
            "localisation_excerpt_s": excerpt_s,
            "localisation_anomalies": anomalies,
            "seed": seed,
            "pooling": "pooled over records",
        },
        "sources": {},
    }
    for source in sources:
        entry = summarise(collected[source.name])
        if isinstance(source, ModelSource):
            from ecgstream.runtime.model_file import sha256_of

            entry["model"] = {
                "path": str(source.path),
                "sha256": sha256_of(source.path),
                "kind": source.spec.kind,
                "version": source.spec.version,
                "leads": source.spec.leads,
                "fs": source.spec.fs,
                "window": source.spec.window,
                "hop": source.spec.hop,
            }
        else:
            entry["scores_folder"] = str(getattr(source, "folder", ""))
        entry["per_record"] = collected[source.name].per_record
        report["sources"][source.name] = entry
    return report, collected, example
