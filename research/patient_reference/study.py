"""Per-patient reference terms beside the shipped consensus detector (a study, not the product).

The shipped detector (``models/consensus-mitdb-mlii.onnx``) compares each 10 s window with
itself. This study asks whether the stream's own PAST (minutes) adds what a window cannot hold,
for supraventricular (AAMI S) beats above all: a premature beat of normal shape differs from the
patient's own rhythm, not from the window's typical beat.

For each DS1 DEV record the shipped model scores the record (point scores, calibrated units) and
the terms below are computed window by window (10 s every 5 s, the model's own windows), in
stream order, from the model's own preprocessed signal (``ecgstream.signals.preprocess`` with the
model spec's config). A window's term uses the current window and history banks filled only from
windows that END at or before the current window's START (so no sample of the current window is
in a bank) and whose window score is below the model's default threshold (the quality gate).
Each window's per-segment term (a segment is 0.8 s every 0.1 s, as in the model) is placed at
the segment centres, interpolated to every model sample and averaged over overlapping windows,
as the scorer does with point scores. Lengths below are in samples at the model's 100 Hz unless
said otherwise; the envelope is at 20 Hz.

Terms (all causal):

- ``bank``: a bank of segment descriptors (each 0.8 s segment minus its median, sorted: the
  model's descriptor) of the last ``BANK_MIN`` minutes of gated windows (every 2nd segment);
  the term is the mean squared distance (mV^2) of each segment's descriptor to its 5 nearest in
  the bank.
- ``bank-cons``: ``bank`` minus the distance to the window's consensus (the median descriptor),
  i.e. what the history says beyond what the window says.
- ``rhythm-stream``: the rectified signal averaged over 50 ms (envelope, 20 Hz); the stream's
  period is the median of the periods of the last ``PERIOD_MIN`` minutes of gated windows (each
  window's period as in the model: first minimum of the envelope's self-mismatch over lags
  0.3-1.5 s within 1.3 times the lowest). Each segment's middle 0.6 s of envelope against the
  envelope one STREAM period before it (lags within 10 %): squared difference over the two
  spans' energy. Only the backward direction: a supraventricular premature beat resets the
  sinus node, so the beat after it is about one period later and the forward match of the
  model's term (better of backward and forward) finds it. Excess over twice the window's median
  and the model's gate (fades out when the window's median mismatch reaches 0.15).
- ``rhythm-stream-raw``: the same without the excess and the gate.
- ``early``: how early each segment's span best matches the envelope before it against the
  stream period: the best backward lag ``l*`` over 0.4-1.6 periods, term ``max(0, 1 - l*/P -
  0.1)`` (fraction of a period beyond 10 %), with the same gate.
- ``snippet-nn``: each segment's envelope from 1.2 s before its centre to 0.3 s after (30
  samples at 20 Hz: the beat and the one or two before it, so their spacing) against a bank of
  the same snippets of the last ``SNIPPET_MIN`` minutes of gated windows (every 2nd segment):
  squared distance to the nearest one over the two snippets' energy.
- ``snippet-dtw``: the same under a monotone alignment (dynamic time warping with a band of
  +-3 envelope samples, 0.15 s; order-preserving, so a normal-shaped beat 0.2 s early is
  expensive while ordinary rate variation is not), the minimum over the 8 Euclidean-nearest
  snippets of the bank.
- ``snippet-clean`` (added after the first results, so not part of the pre-set protocol):
  ``snippet-nn`` against a bank that leaves out the snippets the ``early`` term flags (before
  its gate), so the patient's premature beats do not enter the reference. Not timed apart (the
  same work as ``snippet-nn``).

Each term is combined with the shipped point score as ``score + w * term``; a beat's score is
the max within +-150 ms of its annotation. ``w`` is chosen by leave-records-out cross-validation
over the 15 DEV records, 5 folds of 3 (``FOLDS``, fixed before any result): on the 12 other
records, the ``w`` of the grid with the highest mean of pooled, S-vs-N and V-vs-N beat AUROC;
applied to the 3 held out. Reported: out-of-fold pooled and per-class AUROC, the mean and spread
of the per-fold figures, the shipped score alone and the term alone, and the numpy cost per
window of each term against the model's own ONNX Runtime time per window in the same run.
DS1 TEST records are never read.

    nice -n 10 python research/patient_reference/study.py \\
        --out research/patient_reference/results.json
"""

# ruff: noqa: E402
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one thread: a shared machine, and per-stream cost

import argparse
import json
import time
from collections import deque
from pathlib import Path

import numpy as np

from ecgstream.evaluation.metrics import auroc, beat_scores
from ecgstream.evaluation.splits import MITDB_DEV
from ecgstream.runtime.scorer import Scorer
from ecgstream.signals.labels import AAMI_ABNORMAL, AAMI_NORMAL, read_beats
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import frame, overlap_average, window_starts

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "consensus-mitdb-mlii.onnx"
DATA = REPO.parent / "shared" / "data" / "mitdb-ds1"
RECORDS = tuple(sorted(MITDB_DEV))
#: 5 folds of 3 records, fixed before any result
FOLDS = tuple(RECORDS[i::5] for i in range(5))
CLASSES = {"S": "AaJS", "V": "VE", "F": "F"}
TERMS = (
    "bank",
    "bank-cons",
    "rhythm-stream",
    "rhythm-stream-raw",
    "early",
    "snippet-nn",
    "snippet-clean",
    "snippet-dtw",
)

SEG, STRIDE = 80, 10  # 0.8 s segments every 0.1 s (the model's)
DEC = 5  # envelope: 50 ms blocks, 20 Hz
SPAN = 12  # 0.6 s of envelope per segment for the rhythm terms
BANK_MIN, PERIOD_MIN, SNIPPET_MIN = 5.0, 5.0, 2.0
BANK_EVERY = 2
KNN = 5
SNIP_BEFORE, SNIP_AFTER = 24, 6  # envelope samples before / after a segment's centre
DTW_BAND, DTW_CANDIDATES = 3, 8
TOLERANCE, EXCESS, GATE = 0.1, 2.0, 0.15
HALF = 15  # +-150 ms at the model's 100 Hz
W_GRID = np.r_[0.0, 2.0 ** np.arange(-8, 7)]


# ---------------------------------------------------------------- small signal functions


def descriptors(window: np.ndarray) -> np.ndarray:
    """Sorted, median-centred 0.8 s segments every 0.1 s of one window ``(T,)`` -> ``(n, SEG)`` mV."""
    seg = np.lib.stride_tricks.sliding_window_view(window, SEG)[::STRIDE]
    return np.sort(seg - np.median(seg, axis=1, keepdims=True), axis=1)


def envelope(x: np.ndarray) -> np.ndarray:
    """Rectified signal ``(n,)`` averaged over blocks of ``DEC`` samples -> ``(n // DEC,)``."""
    n = len(x) // DEC * DEC
    return np.abs(x[:n]).reshape(-1, DEC).mean(1)


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared distance of every row of ``a`` ``(n, d)`` to every row of ``b`` ``(m, d)``."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.maximum(d, 0) / a.shape[1]


def span_mismatch(env: np.ndarray, lo: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``(n_lags, n)``: each span ``env[lo:lo+SPAN]`` against the span ``lag`` samples before it,
    squared difference over the two spans' energy (0 same, 1 unrelated, 2 opposite)."""
    idx = lo[None, :, None] + np.arange(SPAN)[None, None]  # (1, n, SPAN)
    own = env[idx]
    past = env[idx - lags[:, None, None]]  # (n_lags, n, SPAN)
    floor = 1e-3 * SPAN  # the model's floor: flat lines are not divided by ~0
    diff = ((own - past) ** 2).sum(-1)
    return diff / ((own**2).sum(-1) + (past**2).sum(-1) + floor)


def window_period(env_w: np.ndarray) -> tuple[float, float]:
    """A window's beat period in envelope samples (the model's rule) and its profile minimum.

    The profile over lags 0.3-1.5 s is the envelope against itself ``lag`` samples earlier,
    squared difference over the two parts' energy; the period is the first minimum within 1.3
    times its lowest value (so not a multiple of the period).
    """
    lags = np.arange(6, 31)[:, None]  # 0.3-1.5 s at 20 Hz
    j = np.arange(len(env_w))[None]
    valid = j >= lags
    a = env_w[None] * valid
    b = env_w[np.maximum(j - lags, 0)] * valid
    prof = ((a - b) ** 2).sum(1) / ((a * a).sum(1) + (b * b).sum(1) + 1e-9)
    start = int(np.argmax(prof <= 1.3 * prof.min()))
    rising = np.r_[prof[1:] >= prof[:-1], True]
    rising[:start] = False
    return float(lags[int(np.argmax(rising)), 0]), float(prof.min())


def dtw_cost(a: np.ndarray, b: np.ndarray, band: int) -> np.ndarray:
    """Banded DTW cost of ``a`` ``(p, L)`` against ``b`` ``(p, L)`` pairwise by row, mean over
    the path's length ``L`` (squared differences); steps (1,0), (0,1), (1,1)."""
    p, n = a.shape
    inf = np.inf
    d = np.full((p, n + 1, n + 1), inf)
    d[:, 0, 0] = 0.0
    for i in range(1, n + 1):
        lo, hi = max(1, i - band), min(n, i + band)
        for j in range(lo, hi + 1):
            c = (a[:, i - 1] - b[:, j - 1]) ** 2
            d[:, i, j] = c + np.minimum(
                np.minimum(d[:, i - 1, j], d[:, i, j - 1]), d[:, i - 1, j - 1]
            )
    return d[:, n, n] / n


# ---------------------------------------------------------------- one record, stream order


def record_terms(scorer: Scorer, name: str, timings: dict) -> dict:
    """Beat symbols, beat-centred slices of the shipped point score and of each term."""
    spec = scorer.spec
    rec = read_record(DATA / name)
    sig = select_leads(rec, spec.leads).signal
    x, delay_s = preprocess(sig, rec.fs, spec.preprocess_config)
    lead = x[:, 0].astype(np.float64)
    starts = window_starts(len(x), spec.window, spec.hop)
    windows = frame(x, starts, spec.window)
    t0 = time.perf_counter()
    point_raw, window_raw = scorer.score_windows(windows)
    timings["model_s"] += time.perf_counter() - t0
    timings["windows"] += len(starts)
    wscore = spec.normalise(window_raw)
    point = overlap_average(spec.normalise(point_raw), starts, len(x))

    env = envelope(lead)
    n_seg = (spec.window - SEG) // STRIDE + 1
    centres = np.arange(n_seg) * STRIDE + SEG // 2  # model samples in the window
    hop_min = spec.hop / spec.fs / 60
    bank: deque = deque(maxlen=int(round(BANK_MIN / hop_min)))
    snips: deque = deque(maxlen=int(round(SNIPPET_MIN / hop_min)))
    clean: deque = deque(maxlen=int(round(SNIPPET_MIN / hop_min)))
    periods: deque = deque(maxlen=int(round(PERIOD_MIN / hop_min)))
    pending: dict[int, tuple] = {}  # window index -> what it adds to the banks once it is past
    per_window = {t: np.zeros((len(starts), n_seg)) for t in TERMS}
    win_per_hop = spec.window // spec.hop
    for k, s in enumerate(starts):
        # windows ending at or before this window's start join the banks (if gated in)
        done = k - win_per_hop
        if done in pending:
            item = pending.pop(done)
            if item is not None:
                bank.append(item[0])
                snips.append(item[1])
                periods.append(item[2])
                clean.append(item[3])
        w = lead[s : s + spec.window]
        e0 = s // DEC  # window starts are multiples of the hop (500), so of DEC
        env_w = env[e0 : e0 + spec.window // DEC]

        tic = time.perf_counter()
        desc = descriptors(w)
        cons = np.median(desc[::2], axis=0)
        d_cons = ((desc - cons) ** 2).mean(1)
        if bank and sum(len(b) for b in bank) >= 100:
            d = sq_dist(desc, np.concatenate(bank))
            kk = min(KNN, d.shape[1])
            knn = np.partition(d, kk - 1, axis=1)[:, :kk].mean(1)
            per_window["bank"][k] = knn
            per_window["bank-cons"][k] = knn - d_cons
        tac = time.perf_counter()
        timings["bank"] += tac - tic

        own_period, own_min = window_period(env_w)
        period = float(np.median(periods)) if len(periods) >= 6 else own_period
        tpe = time.perf_counter()
        timings["period"] += tpe - tac
        tac = tpe
        c_env = e0 + centres // DEC  # segment centres on the envelope
        lo = c_env - SPAN // 2
        ok = lo - int(np.ceil(1.6 * period)) >= 0
        lags = np.arange(
            int(np.floor(period * (1 - TOLERANCE))), int(np.ceil(period * (1 + TOLERANCE))) + 1
        )
        lags = lags[lags >= 1]
        mis = np.zeros(n_seg)
        if ok.any():
            mis[ok] = span_mismatch(env, lo[ok], lags).min(0)
        median = float(np.median(mis))
        gate = max(0.0, 1.0 - median / GATE)
        per_window["rhythm-stream-raw"][k] = mis
        per_window["rhythm-stream"][k] = np.maximum(mis - EXCESS * median, 0) * gate
        toc = time.perf_counter()
        timings["rhythm-stream"] += toc - tac

        wide = np.arange(max(2, int(0.4 * period)), int(np.ceil(1.6 * period)) + 1)
        early = np.zeros(n_seg)
        if ok.any():
            prof = span_mismatch(env, lo[ok], wide)
            best = wide[np.argmin(prof, axis=0)]
            early[ok] = np.maximum(1 - best / period - TOLERANCE, 0)
        per_window["early"][k] = early * gate
        tec = time.perf_counter()
        timings["early"] += tec - toc

        sidx = c_env[:, None] + np.arange(-SNIP_BEFORE, SNIP_AFTER)[None]
        sok = sidx[:, 0] >= 0
        snip = np.zeros((n_seg, SNIP_BEFORE + SNIP_AFTER))
        snip[sok] = env[sidx[sok]]
        energy = (snip**2).mean(1)
        if snips and sum(len(b) for b in snips) >= 50:
            sb = np.concatenate(snips)
            sb_energy = (sb**2).mean(1)
            d = sq_dist(snip, sb)
            rel = d / (energy[:, None] + sb_energy[None] + 1e-4)
            per_window["snippet-nn"][k] = rel.min(1) * sok
            tsn = time.perf_counter()
            timings["snippet-nn"] += tsn - tec
            cand = np.argpartition(rel, DTW_CANDIDATES - 1, axis=1)[:, :DTW_CANDIDATES]
            a = np.repeat(snip, DTW_CANDIDATES, axis=0)
            b = sb[cand.ravel()]
            cost = dtw_cost(a, b, DTW_BAND).reshape(n_seg, DTW_CANDIDATES)
            norm = energy[:, None] + sb_energy[cand] + 1e-4
            per_window["snippet-dtw"][k] = (cost / norm).min(1) * sok
            timings["snippet-dtw"] += time.perf_counter() - tsn
        else:
            timings["snippet-nn"] += time.perf_counter() - tec
        if clean and sum(len(b) for b in clean) >= 50:
            cb = np.concatenate(clean)
            rel = sq_dist(snip, cb) / (energy[:, None] + (cb**2).mean(1)[None] + 1e-4)
            per_window["snippet-clean"][k] = rel.min(1) * sok

        gated = wscore[k] < spec.threshold
        # only the window's second half (its new 5 s) joins, so each stretch enters once
        new = centres >= spec.window - spec.hop
        on_time = early == 0  # (before the gate) not early against the stream period
        pending[k] = (
            (
                desc[new][::BANK_EVERY],
                snip[new & sok][::2],
                own_period,
                snip[new & sok & on_time][::2],
            )
            if gated
            else None
        )

    # per-segment values -> every model sample of the window -> average over overlaps
    grid = np.arange(spec.window)
    traces = {"score": point}
    for t, v in per_window.items():
        pts = np.stack([np.interp(grid, centres, row) for row in v])
        traces[t] = overlap_average(pts, starts, len(x))

    beats = read_beats(DATA / name)
    pos = np.rint((beats.samples / rec.fs + delay_s) * spec.fs).astype(np.int64)
    idx = pos[:, None] + np.arange(-HALF, HALF + 1)[None]
    inside = (idx[:, 0] >= 0) & (idx[:, -1] < len(x))
    idx = idx[inside]
    out = {"symbols": beats.symbols[inside]}
    for t, tr in traces.items():
        out[t] = tr[idx]
    # the same beats through score_record at the record's rate (the check of this mapping)
    rs = scorer.score_record(rec)
    out["score_record"] = beat_scores(rs.point_score, beats.samples, rec.fs)[inside]
    return out


# ---------------------------------------------------------------- evaluation


def class_aurocs(symbols: np.ndarray, scores: np.ndarray) -> dict:
    """Pooled (every abnormal vs normal) and per-class beat AUROC; NaN where undefined."""
    ok = np.isfinite(scores)
    s, sym = scores[ok], symbols[ok]
    normal = np.isin(sym, sorted(AAMI_NORMAL))
    out = {}
    abnormal = np.isin(sym, sorted(AAMI_ABNORMAL))
    out["all"] = auroc(abnormal.astype(int), s) if abnormal.any() and normal.any() else np.nan
    for cls, members in CLASSES.items():
        sel = np.isin(sym, list(members))
        if sel.any() and normal.any():
            lab = np.r_[np.zeros(normal.sum()), np.ones(sel.sum())]
            out[cls] = auroc(lab, np.r_[s[normal], s[sel]])
        else:
            out[cls] = np.nan
    return out


#: the candidates: (form, terms); form "lin" is ``score + sum(w * term)``, "asinh" is
#: ``asinh(score) + sum(w * term)`` (the same ranking for the score alone, with its heavy tail of
#: ventricular beats compressed)
CANDIDATES = (
    *(("lin", (t,)) for t in TERMS),
    *(("asinh", (t,)) for t in ("bank", "rhythm-stream-raw", "early", "snippet-nn", "snippet-dtw")),
    ("lin", ("early", "bank")),
    ("lin", ("early", "snippet-nn")),
    ("lin", ("early", "snippet-dtw")),
    ("lin", ("early", "snippet-clean")),
)


def beat_max(
    data: dict, names: list[str], form: str = "lin", combo: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Beat scores ``max(f(score) + sum(w * term))`` over +-150 ms, and symbols, pooled."""
    scores, symbols = [], []
    for n in names:
        d = data[n]
        v = d["score"] if form == "lin" else np.arcsinh(d["score"])
        for term, w in (combo or {}).items():
            if w:
                v = v + w * d[term]
        scores.append(np.max(np.where(np.isnan(v), -np.inf, v), axis=1))
        symbols.append(d["symbols"])
    s = np.concatenate(scores)
    s[np.isneginf(s)] = np.nan
    return s, np.concatenate(symbols)


def term_alone(data: dict, names: list[str], term: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([np.nanmax(data[n][term], axis=1) for n in names])
    return s, np.concatenate([data[n]["symbols"] for n in names])


def objective(m: dict) -> float:
    """The choice rule for ``w``: mean of pooled, S-vs-N and V-vs-N beat AUROC (NaN skipped)."""
    return float(np.nanmean([m["all"], m["S"], m["V"]]))


def spread_of(v: np.ndarray) -> float:
    """A robust scale of beat scores: 95th minus 50th percentile (the std if that is 0)."""
    v = v[np.isfinite(v)]
    q = np.percentile(v, 95) - np.percentile(v, 50)
    return float(q) if q > 0 else float(v.std()) or 1.0


def cross_validate(data: dict, form: str, terms: tuple[str, ...]) -> dict:
    """Out-of-fold figures of a candidate, its weights chosen on the other 12 records (grid
    ``W_GRID`` times the ratio of the score's spread to each term's)."""
    oof_s, oof_sym, folds, per_record = [], [], [], {}
    for held in FOLDS:
        train = [r for r in RECORDS if r not in held]
        base = spread_of(beat_max(data, train, form)[0])
        scales = [base / spread_of(term_alone(data, train, t)[0]) for t in terms]
        best = (-1.0, {t: 0.0 for t in terms})
        for gs in np.array(np.meshgrid(*[W_GRID] * len(terms))).reshape(len(terms), -1).T:
            combo = {t: g * sc for t, g, sc in zip(terms, gs, scales, strict=True)}
            val = objective(class_aurocs(*reversed(beat_max(data, train, form, combo))))
            if val > best[0] + 1e-6:
                best = (val, combo)
        s, sym = beat_max(data, list(held), form, best[1])
        for r in held:
            per_record[r] = class_aurocs(*reversed(beat_max(data, [r], form, best[1])))
        oof_s.append(s)
        oof_sym.append(sym)
        rel = {t: best[1][t] / sc for t, sc in zip(terms, scales, strict=True)}
        folds.append(
            {"held": list(held), "w": best[1], "w_over_scale": rel, **class_aurocs(sym, s)}
        )
    pooled = class_aurocs(np.concatenate(oof_sym), np.concatenate(oof_s))
    return {"oof": pooled, "folds": folds, "per_record": per_record}


def fold_summary(folds: list[dict]) -> dict:
    out = {}
    for key in ("all", "S", "V", "F"):
        v = np.array([f[key] for f in folds], dtype=float)
        v = v[np.isfinite(v)]
        out[key] = (
            {
                "mean": float(v.mean()),
                "sd": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "folds": int(len(v)),
            }
            if len(v)
            else None
        )
    return out


def load_or_compute(scorer: Scorer, names: list[str], cache: Path | None) -> tuple[dict, dict]:
    """Per-record beat slices (from ``cache`` when it holds them) and the summed timings."""
    timings = {k: 0.0 for k in ("model_s", "windows", "bank", "period", "rhythm-stream", "early")}
    timings.update({"snippet-nn": 0.0, "snippet-dtw": 0.0})
    data = {}
    t0 = time.time()
    for name in names:
        f = cache / f"{name}.npz" if cache else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                data[name] = {k: z[k] for k in z.files}
            tf = cache / f"{name}.timings.json"
            for k, v in json.loads(tf.read_text()).items():
                timings[k] += v
            continue
        before = dict(timings)
        data[name] = record_terms(scorer, name, timings)
        if f is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(f, **data[name])
            spent = {k: timings[k] - before[k] for k in timings}
            (cache / f"{name}.timings.json").write_text(json.dumps(spent))
        print(f"{name}: {len(data[name]['symbols'])} beats, {time.time() - t0:.0f} s", flush=True)
    return data, timings


def gate_counts(scorer: Scorer, names: list[str]) -> dict:
    """Per record: windows, windows at or over the default threshold (left out of the banks),
    windows holding an S beat, and those of them over the threshold."""
    out = {}
    for name in names:
        rs = scorer.score_record(read_record(DATA / name))
        b = read_beats(DATA / name)
        s_beats = b.samples[np.isin(b.symbols, list(CLASSES["S"]))]
        over = rs.window_score >= scorer.spec.threshold
        lo = np.searchsorted(s_beats, rs.window_start)
        has_s = np.searchsorted(s_beats, rs.window_end) > lo
        out[name] = [len(over), int(over.sum()), int(has_s.sum()), int((has_s & over).sum())]
    return out


def row_name(form: str, terms: tuple[str, ...]) -> str:
    f = "score" if form == "lin" else "asinh(score)"
    return f + "".join(f" + w*{t}" for t in terms)


def main() -> None:
    global RECORDS, FOLDS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="per-record term cache (npz)")
    ap.add_argument("--records", nargs="*", default=list(RECORDS))
    args = ap.parse_args()
    if set(args.records) & {"101", "106", "119", "201", "209", "215", "223"}:
        raise SystemExit("DS1 TEST records are not read by this study")
    scorer = Scorer(MODEL, batch_size=64)
    names = list(args.records)
    data, timings = load_or_compute(scorer, names, args.cache)
    RECORDS = tuple(names)
    FOLDS = tuple(f for f in (tuple(r for r in f if r in names) for f in FOLDS) if f)

    s_pt, sym = beat_max(data, names)
    s_rec = np.concatenate([data[n]["score_record"] for n in names])
    check = {"model_rate": class_aurocs(sym, s_pt), "score_record": class_aurocs(sym, s_rec)}
    print(
        "shipped score, beats from the model-rate trace / from score_record:",
        {
            k: (round(v, 4), round(check["score_record"][k], 4))
            for k, v in check["model_rate"].items()
        },
    )
    counts = {c: int(np.isin(sym, list(m)).sum()) for c, m in CLASSES.items()}
    counts["N"] = int(np.isin(sym, sorted(AAMI_NORMAL)).sum())
    results = {
        "records": names,
        "folds": [list(f) for f in FOLDS],
        "beats": counts,
        "check": check,
        "rows": {},
    }
    gates = gate_counts(scorer, names)
    results["gate"] = gates
    total = np.sum(list(gates.values()), axis=0)
    print(
        f"quality gate: {total[1]} of {total[0]} windows over the threshold (left out of the"
        f" banks); {total[3]} of the {total[2]} windows holding an S beat",
        {n: g[1] for n, g in gates.items() if g[1]},
    )
    per_fold = [class_aurocs(*reversed(beat_max(data, list(f)))) for f in FOLDS]
    per_record = {n: class_aurocs(*reversed(beat_max(data, [n]))) for n in names}
    results["rows"]["shipped score"] = {
        "oof": check["model_rate"],
        "folds": per_fold,
        "spread": fold_summary(per_fold),
        "per_record": per_record,
    }
    for term in TERMS:
        results["rows"][f"{term} alone"] = {
            "oof": class_aurocs(*reversed(term_alone(data, names, term)))
        }
    for form, terms in CANDIDATES:
        cv = cross_validate(data, form, terms)
        cv["spread"] = fold_summary(cv["folds"])
        results["rows"][row_name(form, terms)] = cv
        print(row_name(form, terms), {k: round(v, 4) for k, v in cv["oof"].items()}, flush=True)
    n_win = timings.pop("windows")
    ms = {k: 1000 * v / n_win for k, v in timings.items()}
    results["ms_per_window"] = ms
    results["windows"] = n_win

    fmt = lambda v: "  -  " if v is None or not np.isfinite(v) else f"{v:.3f}"  # noqa: E731
    print(f"beats: {counts}")
    print(f"{'row':44s} {'pooled':>6s} {'S':>6s} {'V':>6s} {'F':>6s} | folds mean+-sd: pooled S V")
    for row, r in results["rows"].items():
        o = r["oof"]
        line = (
            f"{row:44s} {fmt(o['all']):>6s} {fmt(o['S']):>6s} {fmt(o['V']):>6s} {fmt(o['F']):>6s}"
        )
        if "spread" in r:
            sp = r["spread"]
            line += " | " + "  ".join(
                f"{sp[k]['mean']:.3f}+-{sp[k]['sd']:.3f}" if sp[k] else "-"
                for k in ("all", "S", "V")
            )
        if "folds" in r and "w_over_scale" in r["folds"][0]:
            line += "  w/scale " + " ".join(
                ",".join(f"{v:g}" for v in f["w_over_scale"].values()) for f in r["folds"]
            )
        print(line)
    print(
        "ms per 10 s window (numpy terms, one thread; model_s = the ONNX Runtime main graph of"
        " the shipped model, batches of 64, same run):",
        {k: round(v, 3) for k, v in ms.items()},
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
