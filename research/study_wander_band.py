"""Design study: how far the band the 0.5 Hz high-pass removes can localise synthetic wander (DEV only).

A ceiling, not a model. The model's input is high-passed at 0.5 Hz, so the inside of a synthetic
baseline shift is gone from it. This study asks what a detector given that removed band could
do, and what adding it to the model's score would cost beats.

1. For each of the 15 MIT-BIH DEV records (lead MLII), ``--excerpts`` excerpts of 60 s, each
   with one synthetic wander anomaly (the localisation protocol's synthesiser, strength 1). In
   0.1 s blocks, the removed band (the excerpt minus its causal 0.5 Hz high-pass, order 2) is
   compared with itself at lags of up to 3 s, in units of the excerpt's robust scale (the unit the
   synthesiser draws its shifts in). A gradient-boosted classifier learns those differences on
   10 records and ranks the blocks of the other 5, in three folds (``research/refiner_cv.py``'s).
   Printed: its out-of-fold AUROC of wander blocks against normal ones (blocks within 0.5 s of
   a real abnormal beat left out), beside one hand-made feature (the band against its 6 s
   running median).
2. With ``--model``: the same excerpts again with every kind of anomaly (another draw), and the
   model's point score (max per block, in the model's calibrated units divided by the 90th
   percentile of normal blocks) plus ``w`` times the out-of-fold wander probability: pooled and
   wander block AUROC for each ``w``, and the pooled beat AUROC (±150 ms) of the whole DEV
   records with the same sum, the probability taken on consecutive 60 s stretches.

Not used by ecgstream. Reproduces the figures of ``docs/model-consensus.md``, "Localisation:
what holds it below 0.90" (the removed band, learned):

    python research/study_wander_band.py                                         # 20 s
    python research/study_wander_band.py --model models/consensus-mitdb-mlii.onnx  # 2 min
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from refiner_cv import FOLDS  # benchmarks/ is on sys.path (_bench_path)

REPO = Path(__file__).resolve().parents[1]
#: lags compared, in 0.1 s blocks (up to 3 s before and after)
LAGS = np.array([k for k in range(-30, 31) if k != 0])
#: the study's unit of time (s): features, labels and scores are taken per block of this length
BLOCK_S = 0.1
WEIGHTS = (0.0, 0.3, 1.0, 3.0, 10.0)
EXCERPT_S = 60.0


def band_features(excerpt: np.ndarray, fs: float, block: int) -> np.ndarray:
    """``(blocks, len(LAGS) + 1)``: the removed band's differences at :data:`LAGS` and its
    distance from its 6 s running median (last column), in robust scales of ``excerpt`` (mV, 1-D)."""
    from scipy.ndimage import median_filter
    from scipy.signal import butter, sosfilt

    removed = excerpt - sosfilt(butter(2, 0.5, "highpass", fs=fs, output="sos"), excerpt)
    n = len(removed) // block
    level = removed[: n * block].reshape(n, block).mean(axis=1)
    med = np.median(excerpt)
    scale = max(1.4826 * float(np.median(np.abs(excerpt - med))), 1e-3)
    reach = int(np.abs(LAGS).max())
    padded = np.pad(level, reach, mode="edge")
    diffs = np.stack([padded[reach + k : reach + k + n] - level for k in LAGS], axis=1)
    hand = np.abs(level - median_filter(level, size=2 * reach + 1, mode="nearest"))
    return np.concatenate([diffs, hand[:, None]], axis=1) / scale


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ecgstream.evaluation.metrics import auroc, beat_scores
    from ecgstream.evaluation.protocol import beats_of, synthetic_excerpts
    from ecgstream.evaluation.splits import MITDB_DEV, MITDB_LEAD, mitdb_paths
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.labels import normal_mask
    from ecgstream.signals.records import read_record, select_leads
    from ecgstream.signals.synth import KINDS_1D, inject_1d

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mitdb-ds1")
    p.add_argument("--excerpts", type=int, default=20, help="excerpts of 60 s per record")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", type=Path, help="add the wander probability to this model's score")
    args = p.parse_args()
    scorer = Scorer(args.model, threads=1) if args.model else None
    paths = mitdb_paths(args.data, MITDB_DEV)
    records = {path.name: select_leads(read_record(path), [MITDB_LEAD]) for path in paths}
    beats = {path.name: beats_of(path) for path in paths}

    def blocks_of(kinds: list[str], seed: int) -> dict[str, dict[str, np.ndarray]]:
        """Per record: band features, labels, kinds and (with a model) scores of 0.1 s blocks."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, record in records.items():
            fs, block = record.fs, int(round(record.fs * BLOCK_S))
            ok = normal_mask(beats[name], record.n_samples, 0.5)
            parts: dict[str, list] = {"x": [], "y": [], "kind": [], "score": []}
            inject = partial(inject_1d, kinds=kinds)
            cuts = synthetic_excerpts(
                record.signal[:, 0], fs, rng, args.excerpts, EXCERPT_S, inject
            )
            for start, excerpt, mask, info in cuts:
                x = band_features(excerpt, fs, block)
                m = len(x) * block
                y = mask[:m].reshape(len(x), block).mean(axis=1) > 0.5
                keep = ok[start : start + m].reshape(len(x), block).all(axis=1) | y
                parts["x"].append(x[keep])
                parts["y"].append(y[keep])
                parts["kind"].append(np.full(int(keep.sum()), info["kind"]))
                if scorer is not None:
                    point = scorer.score_signal(excerpt[:, None], fs).point_score[:m]
                    point = np.where(np.isfinite(point), point, -np.inf)
                    parts["score"].append(point.reshape(len(x), block).max(axis=1)[keep])
            out[name] = {k: np.concatenate(v) for k, v in parts.items() if v}
        return out

    wander = blocks_of(["wander"], args.seed)
    detectors, learned, hand, labels = {}, [], [], []
    for fold in FOLDS:
        train = [wander[k] for k in wander if k not in fold]
        clf = HistGradientBoostingClassifier(max_iter=200, random_state=args.seed)
        clf.fit(np.concatenate([b["x"] for b in train]), np.concatenate([b["y"] for b in train]))
        for name in fold:
            detectors[name] = clf
            learned.append(clf.predict_proba(wander[name]["x"])[:, 1])
            hand.append(wander[name]["x"][:, -1])
            labels.append(wander[name]["y"])
    y = np.concatenate(labels)
    print(f"wander: {int(y.sum())} anomalous of {len(y)} blocks of 0.1 s")
    print(f"  learned from the removed band, out of fold: AUROC {auroc(y, np.concatenate(learned)):.3f}")  # fmt: skip
    print(f"  the band against its 6 s running median:    AUROC {auroc(y, np.concatenate(hand)):.3f}")  # fmt: skip
    if scorer is None:
        return

    every = blocks_of(list(KINDS_1D), args.seed + 1)
    y = np.concatenate([every[k]["y"] for k in every])
    kind = np.concatenate([every[k]["kind"] for k in every])
    score = np.concatenate([every[k]["score"] for k in every])
    prob = np.concatenate([detectors[k].predict_proba(every[k]["x"])[:, 1] for k in every])
    unit = float(np.percentile(score[~y], 90))
    is_wander = y & (kind == "wander")

    traces = []  # per record: point scores, wander probability per sample, beats
    for name, record in records.items():
        fs, n = record.fs, int(EXCERPT_S * record.fs)
        block = int(round(fs * BLOCK_S))
        point = scorer.score_signal(record.signal, fs).point_score
        p_wander = np.zeros(record.n_samples)
        for a in range(0, record.n_samples - n + 1, n):
            x = band_features(record.signal[a : a + n, 0], fs, block)
            p_wander[a : a + len(x) * block] = np.repeat(detectors[name].predict_proba(x)[:, 1], block)  # fmt: skip
        traces.append((point / unit, p_wander, beats[name], fs))

    def beat_auroc(w: float) -> float:
        labels, scores = [], []
        for point, p_wander, b, fs in traces:
            s = beat_scores(point + w * p_wander, b.samples, fs)
            ok = np.isfinite(s)
            labels.append(b.abnormal[ok])
            scores.append(s[ok])
        return auroc(np.concatenate(labels), np.concatenate(scores))

    print("\n| w | pooled localisation (blocks) | wander | beat AUROC |")
    print("|---|---|---|---|")
    for w in WEIGHTS:
        total = score / unit + w * prob
        wander_auc = auroc(np.r_[np.ones(is_wander.sum()), np.zeros((~y).sum())],
                           np.r_[total[is_wander], total[~y]])  # fmt: skip
        print(f"| {w:g} | {auroc(y, total):.4f} | {wander_auc:.3f} | {beat_auroc(w):.4f} |")


if __name__ == "__main__":
    main()
