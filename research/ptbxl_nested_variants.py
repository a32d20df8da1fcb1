"""Nested cross-validation of four PTB-XL population-reference variants (issue 22, item 4).

Plan, written down before any result of these variants was seen
(docs/research/consensus-studies.md, "PTB-XL: cross-lead terms, nested choice"):

Variants (the short list; nothing else is compared here):
  S   shipped: shrunk Mahalanobis distance of the sorted per-lead descriptor (per-lead scale)
      plus that of the per-lead 1 Hz band log-power spectrum (models/consensus-ptbxl.toml).
  C   S + lead correlation: the shrunk distance (Ledoit-Wolf, relative to its training median)
      of the 66 Fisher-z (artanh) Pearson correlations between the 12 leads over the window
      (per-lead mean removed). The 12-lead relation: electrical axis (the signs of I, II, aVF
      against each other), QRS-T relation, which the per-lead descriptors do not see.
  CS  S + lead correlation of the signal and of its first difference (the slope, which weights
      the QRS): one shrunk distance over 132 values.
  G   lead-group max: the descriptor and spectrum distances fitted and scored for the limb leads
      (I II III aVR aVL aVF) and the precordial leads (V1-V6) apart; window score = the larger
      of the two group sums (a localised abnormality is not diluted by six normal leads).

Protocol: the eight strat_folds 1-8 of ptbxl-dev (folds respect patients), as
benchmarks/eval_cv.py: outer fold k is scored by a reference fitted on the NORM-only ECGs of
the six folds other than k and k+1 (k+1 calibrates: centre = median, scale = 1.4826 MAD of its
NORM-only scores, used for the pooled figure only). Nested choice: for outer fold k, each
variant is scored on each inner fold j != k with a reference fitted on the NORM-only ECGs of the
folds other than k and j; the variant with the highest mean inner AUROC is chosen (ties: the
earlier in the list), then fitted and scored on fold k as above. The nested figure is therefore
out of fold including the choice. Each variant's own (non-nested) 8-fold CV and the PCA
reconstruction (8 components) and segment-energy references are reported in the same run.
Record AUROC: NORM-only (label 0) against any other diagnostic superclass. A PTB-XL ECG is one
10 s window (record score = that window's score).

Rule for shipping, fixed with the plan: a variant is shipped only if the nested figure beats
the shipped configuration's CV in this run on both the mean across folds and the pooled figure,
and one variant is chosen in at least 6 of the 8 outer folds (that variant is then shipped).

    nice -n 10 python research/ptbxl_nested_variants.py --out research/results/ptbxl_nested.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import tune_ptbxl_population  # research/, beside this script (sys.path[0] when run as one)

from ecgstream.evaluation.baselines import energy_scores, fit_pca
from ecgstream.evaluation.metrics import auroc
from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus
from ecgstream.models.consensus.population import GaussianReference
from ecgstream.models.consensus.spectrum import BandSpectrum
from ecgstream.training.consensus import consensus_config
from ecgstream.training.data import collect_records

REPO = Path(__file__).resolve().parents[1]
FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
VARIANTS = ("S", "C", "CS", "G")
LIMB, CHEST = slice(0, 6), slice(6, 12)


def load(data: Path, toml: Path) -> tuple[ConsensusConfig, np.ndarray, np.ndarray, np.ndarray]:
    """Preprocessed windows ``(N, 12, 1000)`` float32, labels and folds of labelled ECGs 1-8
    (in ``collect_records`` order, the order of :func:`superclasses`)."""
    cfg, x, label, fold = tune_ptbxl_population.load(data, toml, FOLDS)
    return consensus_config(cfg), x.numpy().astype(np.float32), label, fold


def superclasses(data: Path) -> list[set[str]]:
    """Diagnostic superclasses of the labelled ECGs of folds 1-8, in :func:`load`'s order."""
    from ecgstream.signals.labels import ptbxl_table

    table = ptbxl_table(data, "lr")
    by_name = {
        Path(p).name: set(c) for p, c in zip(table["path"], table["superclasses"], strict=True)
    }
    items = [p for p, m in collect_records([data], "lr")
             if m and m["fold"] in FOLDS and m["label"] >= 0]  # fmt: skip
    return [by_name[Path(p).name] for p in items]


def lead_correlations(x: np.ndarray) -> np.ndarray:
    """Fisher-z Pearson correlations between the leads of windows ``(N, L, T)``: ``(N, L(L-1)/2)``."""
    z = x - x.mean(axis=2, keepdims=True)
    z = z / np.maximum(np.sqrt((z**2).sum(axis=2, keepdims=True)), 1e-9)
    r = np.einsum("nlt,nmt->nlm", z, z)
    iu = np.triu_indices(x.shape[1], 1)
    return np.arctanh(np.clip(r[:, iu[0], iu[1]], -0.999, 0.999))


def features(base: ConsensusConfig, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-ECG features every variant is fitted on (computed once, as the model computes them)."""
    model = SegmentConsensus(
        ConsensusConfig(
            **{**base.to_dict(), "population_components": 0, "population_spectrum_frame": 0}
        )
    )
    model.eval()
    spectrum = BandSpectrum(base)
    t = torch.from_numpy(x)
    with torch.no_grad():
        inwin = torch.cat([model(w)[1] for w in torch.split(t, 64)]).numpy()
        cons = torch.cat(
            [model.level_consensus(model.descriptors(w)[0]) for w in torch.split(t, 64)]
        )
        spec = torch.cat([spectrum(w) for w in torch.split(t, 64)]).numpy()
    n = len(x)
    return {
        "inwin": inwin.astype(np.float64),
        "desc": cons.reshape(n, base.n_leads, -1).numpy().astype(np.float64),
        "spec": spec.reshape(n, base.n_leads, -1).astype(np.float64),
        "corr": lead_correlations(x.astype(np.float64)),
        "corr_d": lead_correlations(np.diff(x.astype(np.float64), axis=2)),
    }


def gaussian_distance(
    train: np.ndarray, test: np.ndarray, n_leads: int, scaled: bool
) -> np.ndarray:
    """Shrunk Mahalanobis distance (relative to the training median) of rows ``test``, fitted on
    rows ``train`` by the model's own :class:`GaussianReference`."""
    dims = train.shape[1]
    ref = GaussianReference(dims, min(160, dims), n_leads, shrunk=True, scaled=scaled).double()
    ref.fit(torch.from_numpy(train))
    with torch.no_grad():
        return ref(torch.from_numpy(test)).numpy()


def variant_scores(name: str, f: dict, fit: np.ndarray) -> np.ndarray:
    """Record scores of every ECG under variant ``name``, the reference fitted on rows ``fit``."""

    def term(key: str, leads: slice = slice(None), scaled: bool = True) -> np.ndarray:
        a = f[key][:, leads]
        n_leads = a.shape[1] if a.ndim == 3 else 1
        flat = a.reshape(len(a), -1)
        return gaussian_distance(flat[fit], flat, n_leads, scaled)

    if name == "G":
        pop = np.maximum(term("desc", LIMB) + term("spec", LIMB),
                         term("desc", CHEST) + term("spec", CHEST))  # fmt: skip
    else:
        pop = term("desc") + term("spec")
        if name == "C":
            pop = pop + term("corr", scaled=False)
        elif name == "CS":
            both = np.concatenate([f["corr"], f["corr_d"]], axis=1)
            pop = pop + gaussian_distance(both[fit], both, 1, scaled=False)
    return f["inwin"] + pop


def calibrated(scores: np.ndarray, normal_val: np.ndarray) -> np.ndarray:
    """``(scores - median) / (1.4826 MAD)`` of the validation normals' scores (the Scorer's)."""
    c = np.median(normal_val)
    s = 1.4826 * np.median(np.abs(normal_val - c)) or float(np.std(normal_val)) or 1.0
    return (scores - c) / s


def summary(per_fold: list[float], pooled: float) -> dict:
    return {"mean": float(np.mean(per_fold)), "std": float(np.std(per_fold)),
            "min": float(np.min(per_fold)), "max": float(np.max(per_fold)),
            "pooled": float(pooled), "per_fold": [round(float(a), 4) for a in per_fold]}  # fmt: skip


def next_fold(k: int) -> int:
    return FOLDS[(FOLDS.index(k) + 1) % len(FOLDS)]


def bootstrap_differences(label: np.ndarray, pooled: dict[str, np.ndarray], n: int = 2000) -> dict:
    """Pooled AUROC of each variant minus S's, with a 95 % interval from a bootstrap of the ECGs
    stratified by label (seed 0)."""
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(label != 0), np.flatnonzero(label == 0)
    draws = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
             for _ in range(n)]  # fmt: skip
    out = {}
    for v in VARIANTS[1:]:
        d = [auroc(label[i], pooled[v][i]) - auroc(label[i], pooled["S"][i]) for i in draws]
        diff = auroc(label, pooled[v]) - auroc(label, pooled["S"])
        lo, hi = np.quantile(d, [0.025, 0.975])
        out[v] = {"difference": float(diff), "ci95": [float(lo), float(hi)]}
        print(f"pooled {v} - S: {diff:+.3f} (95 % {lo:+.3f} to {hi:+.3f})", flush=True)
    return out


def diagnostics(f: dict, label, fold, outer_scores: dict, classes: list[set[str]]) -> dict:
    """Not used for any choice: each term alone (same CV) and each variant's out-of-fold AUROC
    per diagnostic superclass (ECGs holding it against NORM-only ECGs)."""
    normal = label == 0
    out: dict = {"term_alone": {}, "per_class": {}}
    terms = {"descriptor": ("desc", True), "spectrum": ("spec", True),
             "correlation": ("corr", False), "slope correlation": ("corr_d", False)}  # fmt: skip
    for name, (key, scaled) in terms.items():
        per = []
        for k in FOLDS:
            fit = normal & (fold != k) & (fold != next_fold(k))
            a = f[key].reshape(len(label), -1)
            n_leads = f[key].shape[1] if f[key].ndim == 3 else 1
            s = gaussian_distance(a[fit], a, n_leads, scaled)
            per.append(auroc(label[fold == k], s[fold == k]))
        out["term_alone"][name] = summary(per, float("nan"))
        print(f"term alone {name}: {np.mean(per):.3f} ± {np.std(per):.3f}", flush=True)
    for v, by_fold in outer_scores.items():
        row = {}
        for cls in ("MI", "STTC", "CD", "HYP"):
            has = np.array([cls in c for c in classes])
            per = [auroc(has[(fold == k) & (has | normal)], by_fold[k][(fold == k) & (has | normal)])
                   for k in FOLDS]  # fmt: skip
            row[cls] = {"mean": float(np.mean(per)), "n": int(has.sum())}
        out["per_class"][v] = row
        print(f"per class {v}: " + ", ".join(f"{c} {r['mean']:.3f} (n {r['n']})"
                                              for c, r in row.items()), flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/ptbxl-dev")
    ap.add_argument("--config", type=Path, default=REPO / "models/consensus-ptbxl.toml")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base, x, label, fold = load(args.data, args.config)
    normal = label == 0
    f = features(base, x)
    print(
        f"{len(label)} ECGs ({int((~normal).sum())} abnormal), features {time.perf_counter() - t0:.0f} s"
    )

    # each variant's plain CV: fold k scored, fit on the NORM-only ECGs outside {k, k+1}
    plain: dict[str, dict] = {}
    outer_scores: dict[str, dict[int, np.ndarray]] = {v: {} for v in VARIANTS}
    pooled_scores: dict[str, np.ndarray] = {}
    for v in VARIANTS:
        per, pooled = [], np.zeros(len(label))
        for k in FOLDS:
            val = next_fold(k)
            s = variant_scores(v, f, normal & (fold != k) & (fold != val))
            outer_scores[v][k] = s
            held = fold == k
            per.append(auroc(label[held], s[held]))
            pooled[held] = calibrated(s[held], s[(fold == val) & normal])
        plain[v] = summary(per, auroc(label, pooled))
        pooled_scores[v] = pooled
        print(f"plain CV {v}: {plain[v]['mean']:.3f} ± {plain[v]['std']:.3f}, pooled "
              f"{plain[v]['pooled']:.3f}  {plain[v]['per_fold']}", flush=True)  # fmt: skip

    # nested choice
    chosen, inner, per, pooled = {}, {}, [], np.zeros(len(label))
    for k in FOLDS:
        inner[k] = {}
        for v in VARIANTS:
            aucs = []
            for j in FOLDS:
                if j == k:
                    continue
                s = variant_scores(v, f, normal & (fold != k) & (fold != j))
                aucs.append(auroc(label[fold == j], s[fold == j]))
            inner[k][v] = float(np.mean(aucs))
        best = max(VARIANTS, key=lambda v: (round(inner[k][v], 6), -VARIANTS.index(v)))
        chosen[k] = best
        s, val, held = outer_scores[best][k], next_fold(k), fold == k
        per.append(auroc(label[held], s[held]))
        pooled[held] = calibrated(s[held], s[(fold == val) & normal])
        print(f"outer fold {k}: inner {({v: round(a, 3) for v, a in inner[k].items()})} -> {best}: "
              f"{per[-1]:.3f}", flush=True)  # fmt: skip
    nested = {**summary(per, auroc(label, pooled)), "chosen": chosen, "inner": inner}
    print(f"nested: {nested['mean']:.3f} ± {nested['std']:.3f}, pooled {nested['pooled']:.3f}")

    # references in the same run: PCA (8 components) and segment energy, calibrated on the
    # training normals as benchmarks/eval_cv.py calibrates them
    refs: dict[str, dict] = {}
    seg = int(round(0.4 * 100))
    energy = energy_scores(x, seg)[1].astype(np.float64)
    for name in ("pca", "energy"):
        per_r, pooled_r = [], np.zeros(len(label))
        for k in FOLDS:
            train = normal & (fold != k) & (fold != next_fold(k))
            if name == "pca":
                s = fit_pca(x[train], 8).score_windows(x)[1].astype(np.float64)
            else:
                s = energy
            held = fold == k
            per_r.append(auroc(label[held], s[held]))
            pooled_r[held] = calibrated(s[held], s[train])
        refs[name] = summary(per_r, auroc(label, pooled_r))
        print(f"{name}: {refs[name]['mean']:.3f} ± {refs[name]['std']:.3f}, pooled "
              f"{refs[name]['pooled']:.3f}", flush=True)  # fmt: skip
    diag = diagnostics(f, label, fold, outer_scores, superclasses(args.data))
    diag["pooled_difference"] = bootstrap_differences(label, pooled_scores)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = {"plain": plain, "nested": nested, "references": refs,
               "diagnostics": diag, "n": int(len(label)), "n_abnormal": int((~normal).sum())}  # fmt: skip
        args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
