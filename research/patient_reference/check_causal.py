"""Causality check of the study's terms: on record 118 cut at 5 min, every beat's shipped score
and terms (but for the last 20 beats, which the end-aligned last window changes) equal those of
the whole record, so nothing after a window's end reaches its terms.

    python research/patient_reference/check_causal.py
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import study  # noqa: E402

from ecgstream.runtime.scorer import Scorer

sc = Scorer(study.MODEL)
orig = study.read_record
cut_s = 300.0


def truncated(path, leads=None):
    r = orig(path, leads)
    n = int(cut_s * r.fs)
    return dataclasses.replace(r, signal=r.signal[:n])


t = {
    k: 0.0 for k in ("model_s", "windows", "bank", "period", "rhythm-stream", "early", "snippet-nn")
}
t["snippet-dtw"] = 0.0
a = study.record_terms(sc, "118", t)
study.read_record = truncated
b = study.record_terms(sc, "118", t)
n = len(b["symbols"])
keep = np.arange(n - 20)  # leave out the last 20 beats (the end-aligned last window differs)
worst = 0.0
for k in ("score", *study.TERMS):
    d = float(np.nanmax(np.abs(a[k][keep] - b[k][keep])))
    worst = max(worst, d)
    print(f"{k}: {len(keep)} beats, max abs difference {d:g}")
if worst > 1e-9:
    raise SystemExit("a term depends on samples after its window")
print("causal: OK")
