"""Design study: what holds the consensus detector's localisation AUROC below 0.90 (DEV only).

Scores the shipped model on the 15 MIT-BIH DEV records and on 20 Perlin localisation excerpts
per DEV record (seed 1, as in ``docs/model-consensus.md``), then re-scores the same samples with
changes applied to the raw point score in numpy, and prints beat AUROC (±150 ms, pooled) and
localisation point AUROC (pooled, per kind) for each:

- **per-stream scale**: raw point scores divided by the median raw point score of the excerpt
  (or of the whole record): what pooling across records costs the localisation figure, and what
  the same division costs beats;
- **plateau terms** on the record high-passed at ``--highpass`` Hz instead of 0.5 Hz: the level
  (0.8 s running median) against the 4 s running median of levels (``window``), or against the
  levels 0.8 s / 1.5 s before and after when it stands above or below both (``bump``), squared
  and added with a weight. A synthetic baseline shift is invisible inside its region after the
  0.5 Hz high-pass; these terms see it and also see the records' own baseline wander.

Not used by ecgstream. Reproduces the "Localisation: what was tried" figures.

    python research/study_localisation.py --highpass 0.05     # about 1 min
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from scipy.ndimage import median_filter

    from ecgstream.evaluation.metrics import auroc, beat_scores
    from ecgstream.evaluation.protocol import beats_of, synthetic_excerpts
    from ecgstream.evaluation.splits import MITDB_DEV
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.labels import normal_mask
    from ecgstream.signals.preprocess import PreprocessConfig, preprocess
    from ecgstream.signals.records import read_record, select_leads
    from ecgstream.signals.synth import inject_1d
    from ecgstream.signals.windows import to_record_rate

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "consensus-mitdb-mlii.onnx")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mitdb-ds1")
    p.add_argument("--excerpts", type=int, default=20, help="localisation excerpts per record")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--highpass", type=float, default=0.05, help="Hz, for the plateau terms")
    args = p.parse_args()

    scorer = Scorer(args.model, threads=1)
    spec = scorer.spec
    base = spec.preprocess_config
    low_cut = PreprocessConfig(base.fs, args.highpass, base.lowpass_hz, base.order)

    def raw_points(signal: np.ndarray, fs: float) -> np.ndarray:
        return spec.score_norm["center"] + spec.score_norm["scale"] * (
            scorer.score_signal(signal, fs).point_score
        )

    def plateau_terms(signal: np.ndarray, fs: float) -> dict[str, np.ndarray]:
        x, delay_s = preprocess(signal, fs, low_cut)
        level = median_filter(x[:, 0].astype(np.float64), size=80, mode="nearest")
        terms = {"window": (level - median_filter(level, size=401, mode="nearest")) ** 2}
        for reach in (80, 150):
            before, after = np.roll(level, reach), np.roll(level, -reach)
            high, low = np.maximum(before, after), np.minimum(before, after)
            bump = np.maximum(level - high, 0) + np.maximum(low - level, 0)
            terms[f"bump{reach / 100:.1f}s"] = bump**2
        return {k: to_record_rate(v, base.fs, fs, len(signal), delay_s) for k, v in terms.items()}

    records, excerpts = [], []
    for index, name in enumerate(MITDB_DEV):
        record = read_record(args.data / name)
        beats = beats_of(args.data / name)
        signal = select_leads(record, spec.leads).signal
        fs = record.fs
        raw = raw_points(signal, fs)
        records.append((beats, fs, raw, plateau_terms(signal, fs), np.nanmedian(raw)))
        ok = normal_mask(beats, record.n_samples, 0.5)
        rng = np.random.default_rng([args.seed, index])
        for start, y, mask, info in synthetic_excerpts(
            signal, fs, rng, args.excerpts, 60.0, inject_1d
        ):
            n = len(mask)
            score = raw_points(y, fs)
            terms = plateau_terms(y, fs)
            keep = np.isfinite(score) & (ok[start : start + n] | mask)
            for t in terms.values():
                keep &= np.isfinite(t)
            if mask[keep].any() and not mask[keep].all():
                kept = {k: t[keep] for k, t in terms.items()}
                excerpts.append((info["kind"], mask[keep], score[keep], kept, records[-1][4]))

    Change = Callable[[np.ndarray, dict, float, np.ndarray], np.ndarray]

    def report(label: str, change: Change) -> None:
        labels, scores = [], []
        for beats, fs, raw, terms, median in records:
            b = beat_scores(change(raw, terms, median, raw), beats.samples, fs, 0.15)
            ok = np.isfinite(b)
            labels.append(beats.abnormal[ok])
            scores.append(b[ok])
        beat = auroc(np.concatenate(labels), np.concatenate(scores))
        by_kind: dict[str, list] = {}
        for kind, mask, score, terms, median in excerpts:
            by_kind.setdefault(kind, []).append((mask, change(score, terms, median, score)))
        pooled = [pair for pairs in by_kind.values() for pair in pairs]

        def point_auroc(pairs: list) -> float:
            return auroc(
                np.concatenate([m for m, _ in pairs]), np.concatenate([s for _, s in pairs])
            )

        kinds = " ".join(f"{k} {point_auroc(v):.3f}" for k, v in sorted(by_kind.items()))
        print(f"{label:34s} beat {beat:.4f}  localisation {point_auroc(pooled):.4f} | {kinds}")

    print(
        f"{len(records)} DEV records, {len(excerpts)} excerpts, plateau terms at {args.highpass} Hz"
    )
    report("shipped", lambda s, t, med, own: s)
    report("/ median of the excerpt or record", lambda s, t, med, own: s / np.nanmedian(own))
    report("/ median of the whole record", lambda s, t, med, own: s / med)
    for key in ("window", "bump0.8s", "bump1.5s"):
        for weight in (0.3, 1.0, 3.0):
            report(f"+ {weight} x {key}", lambda s, t, med, own, k=key, w=weight: s + w * t[k])


if __name__ == "__main__":
    main()
