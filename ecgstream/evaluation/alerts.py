"""Alerts judged like an arrhythmia monitor (after ANSI/AAMI EC57), record by record.

Each annotated WFDB record is replayed through the streaming pipeline exactly as
``ecgstream run --replay`` does (1 s chunks, stream start ``t0 = 0`` so every time is seconds
from the record start), with the same alert state machines; its alert messages are then compared
with the reference annotations:

- **events** (:func:`reference_events`): ventricular runs (>= 3 consecutive V/E beats, or a
  ``(VT`` / ``(VFL`` rhythm episode), supraventricular runs (>= 3 consecutive S-class beats
  A a J S, or ``(SVTA``), atrial fibrillation / flutter episodes (``(AFIB``, ``(AFL``).
- an event is **alerted** when an alert message that raises or changes an alert (``firing``,
  ``escalated``, ``updated``; any ECG kind for runs, ``irregular_rhythm`` for AF) is decided
  (``at_s``) between the event's start and ``tolerance_s`` after its end; **latency** = that
  ``at_s`` minus the event's start. An AF episode also counts as alerted when an
  ``irregular_rhythm`` alert already open overlaps it (EC57 episode overlap; no latency then). Runs merged across gaps shorter than ``merge_s`` count as one.
- AF **positive predictivity**: the share of ``irregular_rhythm`` alerts overlapping an AF
  episode. A **false alert** is an ECG alert (anomaly or rhythm) whose span holds no abnormal
  beat and no annotated rhythm other than normal sinus rhythm; counted per monitor-hour.
- **beats at the threshold**: a beat is flagged when a window containing it scored at or above
  the warning threshold; V (S) sensitivity = flagged V (S) beats / V (S) beats; V (S) positive
  predictivity = flagged windows containing a V (S) beat / flagged windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgstream.alerts.state import AlertConfig
from ecgstream.signals.records import read_record

__all__ = [
    "Events",
    "RecordRun",
    "reference_events",
    "replay_record",
    "score_record",
    "pool",
    "plot_timeline",
    "evaluate_alerts",
    "table_lines",
    "rescore",
    "operating_point",
    "write_thresholds",
    "summarise",
    "V_SYMBOLS",
    "S_SYMBOLS",
]

V_SYMBOLS = set("VE")
S_SYMBOLS = set("AaJS")
BEATS = set("NLRejAaJSVEFfQ/")
ECG_KINDS = ("anomaly", "irregular_rhythm", "tachycardia", "bradycardia", "pause")
RAISING = ("firing", "escalated", "updated")


@dataclass
class Events:
    """Reference events of one record, times in seconds from its start."""

    duration_s: float
    beat_t: np.ndarray
    beat_sym: np.ndarray
    v_runs: list[tuple[float, float]]
    sv_runs: list[tuple[float, float]]
    af: list[tuple[float, float]]
    abnormal_rhythm: list[tuple[float, float, str]]


def _runs(t: np.ndarray, hit: np.ndarray, min_beats: int = 3) -> list[tuple[float, float]]:
    """Spans (s) of >= ``min_beats`` consecutive beats with ``hit``."""
    edges = np.diff(np.concatenate(([0], hit.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [
        (float(t[a]), float(t[b - 1]))
        for a, b in zip(starts, ends, strict=True)
        if b - a >= min_beats
    ]


def _merge(spans: list[tuple[float, float]], gap_s: float) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] <= gap_s:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def reference_events(path: str | Path, merge_s: float = 10.0) -> Events:
    """Events of record ``path`` from its ``.atr`` beat and rhythm annotations."""
    import wfdb

    path = Path(path)
    rec = read_record(path)
    ann = wfdb.rdann(str(path), "atr")
    t = np.asarray(ann.sample) / ann.fs if ann.fs else np.asarray(ann.sample) / rec.fs
    sym = np.asarray(ann.symbol)
    aux = [str(a).strip("\x00").strip() for a in ann.aux_note]
    beats = np.isin(sym, sorted(BEATS))
    bt, bs = t[beats], sym[beats]
    dur = rec.duration_s
    rhythm = [(float(t[i]), aux[i]) for i in range(len(sym)) if sym[i] == "+" and aux[i]]
    episodes = []
    for j, (a, name) in enumerate(rhythm):
        b = rhythm[j + 1][0] if j + 1 < len(rhythm) else dur
        episodes.append((a, b, name))
    v = _runs(bt, np.isin(bs, sorted(V_SYMBOLS)))
    v += [(a, b) for a, b, n in episodes if n in ("(VT", "(VFL")]
    sv = _runs(bt, np.isin(bs, sorted(S_SYMBOLS)))
    sv += [(a, b) for a, b, n in episodes if n == "(SVTA"]
    af = [(a, b) for a, b, n in episodes if n in ("(AFIB", "(AFL")]
    abnormal = [(a, b, n) for a, b, n in episodes if n != "(N"]
    return Events(dur, bt, bs, _merge(v, merge_s), _merge(sv, merge_s), _merge(af, 0.0), abnormal)


@dataclass
class RecordRun:
    """One record replayed: its alert messages and window scores (times s from its start)."""

    name: str
    duration_s: float
    messages: list[dict]
    scores: list[dict]
    threshold: float
    critical: float | None
    rhythm_trace: list[tuple] = field(default_factory=list)


def replay_record(
    scorer,
    path: str | Path,
    cfg: AlertConfig | None = None,
    thresholds: tuple[float, float | None] | None = None,
) -> RecordRun:
    """Replay record ``path`` through the streaming pipeline (as ``ecgstream run --replay
    PATH --t0 0``) with ``scorer`` and alert policy ``cfg``; collect messages and scores.

    ``thresholds`` (warning, critical; calibrated units) replace the model file's, e.g. to
    replay held-out records at thresholds chosen on other records."""
    from ecgstream.streaming.local import pipeline_close
    from ecgstream.streaming.pipeline import Incoming, Pipeline
    from ecgstream.streaming.replay import plan_streams, record_chunks

    (stream,) = plan_streams([path])
    pipe = Pipeline(scorer, cfg or AlertConfig(), keep_scores=True)
    if thresholds is not None:
        pipe.threshold, pipe.critical = thresholds
    messages: list[dict] = []
    scores: list[dict] = []
    for chunk in record_chunks(stream.stream, stream.record, 0.0):
        res = pipe.process([Incoming(chunk)], now=0.0)
        st = pipe.streams.get(stream.stream)
        if chunk.seq == 0 and st is not None and st.anomaly.rhythm is not None:
            st.anomaly.rhythm.keep_trace = True
        messages += [a.to_dict() for a in res.alerts]
        scores += res.scores
    st = pipe.streams.get(stream.stream)
    trace = []
    if st is not None and st.anomaly.rhythm is not None:
        trace = list(st.anomaly.rhythm.trace)
    messages += pipeline_close(pipe)
    return RecordRun(
        stream.stream,
        stream.record.duration_s,
        messages,
        scores,
        pipe.threshold,
        pipe.critical,
        trace,
    )


def _alerts(messages: list[dict], kinds: tuple[str, ...]) -> list[dict]:
    """One entry per alert: kind, start, end, worst severity, messages (status, at_s)."""
    out: dict[str, dict] = {}
    for m in messages:
        if m["kind"] not in kinds:
            continue
        a = out.setdefault(
            m["alert_id"],
            {"id": m["alert_id"], "kind": m["kind"], "start": m["start_s"], "changes": []},
        )
        a["end"] = m["end_s"]
        a["severity"] = m["severity"]
        a["changes"].append((m["status"], m["at_s"]))
    return list(out.values())


def _detect(
    events: list[tuple[float, float]], alerts: list[dict], tolerance_s: float
) -> list[float | None]:
    """Per event, the latency (s) of the first raising message inside it, else None."""
    at = np.array(sorted(t for a in alerts for s, t in a["changes"] if s in RAISING))
    out: list[float | None] = []
    for a, b in events:
        hit = at[(at >= a) & (at <= b + tolerance_s)]
        out.append(float(hit[0] - a) if len(hit) else None)
    return out


def score_record(run: RecordRun, ev: Events, tolerance_s: float = 10.0) -> dict:
    """EC57-style figures of one replayed record (see the module docstring)."""
    ecg = _alerts(run.messages, ECG_KINDS)
    irregular = [a for a in ecg if a["kind"] == "irregular_rhythm"]
    v_lat = _detect(ev.v_runs, ecg, tolerance_s)
    sv_lat = _detect(ev.sv_runs, ecg, tolerance_s)
    af_lat = _detect(ev.af, irregular, tolerance_s)
    # an AF episode inside an irregular-rhythm alert already open is detected too (EC57 overlap)
    af_hit = [
        lat is not None or any(x["start"] < b and x["end"] > a for x in irregular)
        for lat, (a, b) in zip(af_lat, ev.af, strict=True)
    ]
    af_true = sum(any(a["start"] < b and a["end"] > s for s, b in ev.af) for a in irregular)
    abnormal_t = ev.beat_t[~np.isin(ev.beat_sym, list("NLRej"))]
    false = 0
    for a in ecg:
        beat = ((abnormal_t >= a["start"]) & (abnormal_t <= a["end"])).any()
        rhythm = any(s < a["end"] and e > a["start"] for s, e, _ in ev.abnormal_rhythm)
        false += not (beat or rhythm)
    # beats at the warning threshold
    sc = run.scores
    st = np.array([s["start_s"] for s in sc])
    en = np.array([s["end_s"] for s in sc])
    flagged = np.array([s["score"] >= run.threshold for s in sc], bool)
    beat_counts = {}
    for name, symbols in (("v", V_SYMBOLS), ("s", S_SYMBOLS)):
        bt = ev.beat_t[np.isin(ev.beat_sym, sorted(symbols))]
        if len(st):
            inside = (bt[:, None] >= st[None]) & (bt[:, None] < en[None])
            beat_flag = (inside & flagged[None]).any(axis=1)
            win_has = inside.any(axis=0)
        else:
            beat_flag, win_has = np.zeros(len(bt), bool), np.zeros(0, bool)
        beat_counts[name] = {
            "beats": int(len(bt)),
            "flagged_beats": int(beat_flag.sum()),
            "flagged_windows": int(flagged.sum()),
            "flagged_windows_with": int((flagged & win_has).sum()),
        }
    return {
        "record": run.name,
        "hours": run.duration_s / 3600.0,
        "v_runs": len(ev.v_runs),
        "v_runs_alerted": sum(x is not None for x in v_lat),
        "v_latency_s": [x for x in v_lat if x is not None],
        "sv_runs": len(ev.sv_runs),
        "sv_runs_alerted": sum(x is not None for x in sv_lat),
        "sv_latency_s": [x for x in sv_lat if x is not None],
        "af_episodes": len(ev.af),
        "af_alerted": int(sum(af_hit)),
        "af_latency_s": [x for x in af_lat if x is not None],
        "irregular_alerts": len(irregular),
        "irregular_alerts_true": int(af_true),
        "alerts": len(ecg),
        "alerts_by_kind": {k: sum(a["kind"] == k for a in ecg) for k in ECG_KINDS},
        "false_alerts": int(false),
        "beats": beat_counts,
    }


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def _q(x: list[float], q: float) -> float | None:
    return None if not x else float(np.quantile(x, q))


def summarise(row: dict) -> dict:
    """Rates of one record's (or a pooled) row."""
    b = row["beats"]
    lat = row["v_latency_s"]
    return {
        "v_run_se": _ratio(row["v_runs_alerted"], row["v_runs"]),
        "sv_run_se": _ratio(row["sv_runs_alerted"], row["sv_runs"]),
        "af_se": _ratio(row["af_alerted"], row["af_episodes"]),
        "af_ppv": _ratio(row["irregular_alerts_true"], row["irregular_alerts"]),
        "false_per_hour": _ratio(row["false_alerts"], row["hours"]),
        "v_beat_se": _ratio(b["v"]["flagged_beats"], b["v"]["beats"]),
        "v_beat_ppv": _ratio(b["v"]["flagged_windows_with"], b["v"]["flagged_windows"]),
        "s_beat_se": _ratio(b["s"]["flagged_beats"], b["s"]["beats"]),
        "s_beat_ppv": _ratio(b["s"]["flagged_windows_with"], b["s"]["flagged_windows"]),
        "v_latency_median_s": _q(lat, 0.5),
        "v_latency_p95_s": _q(lat, 0.95),
        "af_latency_median_s": _q(row["af_latency_s"], 0.5),
        "af_latency_p95_s": _q(row["af_latency_s"], 0.95),
    }


def pool(rows: list[dict]) -> dict:
    """Sum the counts of record rows (gross statistics, as EC57 pools them), with the figures
    :func:`summarise` derives from them."""
    out: dict = {"record": "pooled", "alerts_by_kind": {}}
    for key in (
        "hours", "v_runs", "v_runs_alerted", "sv_runs", "sv_runs_alerted", "af_episodes",
        "af_alerted", "irregular_alerts", "irregular_alerts_true", "alerts", "false_alerts",
    ):  # fmt: skip
        out[key] = sum(r[key] for r in rows)
    for key in ("v_latency_s", "sv_latency_s", "af_latency_s"):
        out[key] = [x for r in rows for x in r[key]]
    for k in ECG_KINDS:
        out["alerts_by_kind"][k] = sum(r["alerts_by_kind"][k] for r in rows)
    out["beats"] = {
        name: {
            key: sum(r["beats"][name][key] for r in rows)
            for key in ("beats", "flagged_beats", "flagged_windows", "flagged_windows_with")
        }
        for name in ("v", "s")
    }
    out.update(summarise(out))
    return out


def plot_timeline(run: RecordRun, ev: Events, path: str | Path) -> Path | None:
    """A clinician-readable timeline of one record: annotated events above, alerts below, the
    window score with its thresholds at the bottom (minutes from the record start)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is part of the eval extra
        return None
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(14, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lanes = [
        ("V beats", None, "tab:red"),
        ("ventricular runs", ev.v_runs, "tab:red"),
        ("SV runs", ev.sv_runs, "tab:orange"),
        ("AF / flutter", ev.af, "tab:purple"),
    ]
    # one lane per alert kind, so that short alerts of different kinds never share a label
    kinds = [(k.replace("_", " ") + " alerts", (k,)) for k in ECG_KINDS]
    y = len(lanes) + len(kinds)
    labels = []
    for name, spans, colour in lanes:
        y -= 1
        labels.append((y, "annotated: " + name))
        if spans is None:
            vt = ev.beat_t[np.isin(ev.beat_sym, sorted(V_SYMBOLS))] / 60
            ax.vlines(vt, y - 0.3, y + 0.3, color=colour, lw=0.6)
        else:
            ax.broken_barh([(a / 60, max(b - a, 1.0) / 60) for a, b in spans], (y - 0.3, 0.6),
                           color=colour)  # fmt: skip
    colours = {"warning": "gold", "critical": "crimson", "info": "grey"}
    for name, ks in kinds:
        y -= 1
        labels.append((y, name))
        for a in _alerts(run.messages, ks):
            ax.broken_barh([(a["start"] / 60, max(a["end"] - a["start"], 1.0) / 60)],
                           (y - 0.3, 0.6), color=colours.get(a["severity"], "grey"))  # fmt: skip
            for status, t in a["changes"]:
                if status in RAISING:
                    ax.plot(t / 60, y + 0.38, "v", color="black", ms=4)
    ax.set_yticks([p for p, _ in labels], [n for _, n in labels], fontsize=8)
    ax.set_ylim(-0.8, len(lanes) + len(kinds) - 0.4)
    ax.set_title(
        f"record {run.name}: annotated events (top) and ecgstream alerts (yellow warning, red "
        f"critical; triangles = alert messages)",
        fontsize=9,
    )
    if run.scores:
        t = np.array([(s["start_s"] + s["end_s"]) / 2 for s in run.scores]) / 60
        sc = np.array([s["score"] for s in run.scores])
        ax2.plot(t, np.clip(sc, 0.1, None), lw=0.7, color="black")
        ax2.axhline(run.threshold, color="gold", ls="--", lw=0.8, label="warning threshold")
        if run.critical is not None:
            ax2.axhline(run.critical, color="crimson", ls="--", lw=0.8, label="critical threshold")
        ax2.set_yscale("log")
        ax2.legend(fontsize=7, loc="upper right")
    ax2.set_ylabel("window score", fontsize=8)
    ax2.set_xlabel("minutes from the record start")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_alerts(
    scorer,
    paths: list[Path],
    cfg: AlertConfig | None = None,
    plots: Path | None = None,
    tolerance_s: float = 10.0,
) -> dict:
    """Replay and score every record; the report with record rows and the pooled row."""
    rows = []
    for path in paths:
        ev = reference_events(path)
        run = replay_record(scorer, path, cfg)
        row = score_record(run, ev, tolerance_s)
        row.update(summarise(row))
        if plots is not None:
            p = plot_timeline(run, ev, plots / f"timeline-{run.name}.png")
            row["plot"] = str(p) if p else None
        rows.append(row)
    pooled = pool(rows)
    return {
        "threshold": run.threshold if paths else None,
        "critical": run.critical if paths else None,
        "tolerance_s": tolerance_s,
        "records": rows,
        "pooled": pooled,
    }


def table_lines(report: dict) -> list[str]:
    """The record-by-record table (markdown) of a report, pooled row last."""

    def f(x: float | None, digits: int = 2) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    def frac(a: int, b: int) -> str:
        return f"{a}/{b}" if b else "-"

    head = (
        "| record | hours | V runs alerted | SV runs alerted | AF episodes alerted | AF PPV "
        "| false alerts (/h) | V beat Se / +P | S beat Se / +P | V latency median / p95 (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in [*report["records"], report["pooled"]]:
        lines.append(
            f"| {r['record']} | {r['hours']:.2f} | {frac(r['v_runs_alerted'], r['v_runs'])} "
            f"| {frac(r['sv_runs_alerted'], r['sv_runs'])} | {frac(r['af_alerted'], r['af_episodes'])} "
            f"| {frac(r['irregular_alerts_true'], r['irregular_alerts'])} "
            f"| {r['false_alerts']} ({f(r['false_per_hour'])}) "
            f"| {f(r['v_beat_se'])} / {f(r['v_beat_ppv'])} | {f(r['s_beat_se'])} / {f(r['s_beat_ppv'])} "
            f"| {f(r['v_latency_median_s'], 1)} / {f(r['v_latency_p95_s'], 1)} |"
        )
    return lines


def rescore(
    run: RecordRun, threshold: float, critical: float | None, cfg: AlertConfig
) -> RecordRun:
    """``run`` with its anomaly alerts re-decided at other thresholds from its window scores
    (the same state machine, without localisation); rhythm alerts are kept as they were."""
    import dataclasses

    from ecgstream.alerts.state import AnomalyMachine

    m = AnomalyMachine(
        run.name, dataclasses.replace(cfg, rhythm=False), threshold, "", "", [], critical=critical
    )
    ks = [s["window"] for s in run.scores]
    m.step = int(np.min(np.diff(ks))) if len(ks) > 1 else 1
    msgs = [x for x in run.messages if x["kind"] != "anomaly"]
    out = []
    for s in run.scores:
        out += m.update(s["window"], s["score"], s["start_s"], s["end_s"], None, 1.0)
    out += m.close(m.open.end_s if m.open is not None else 0.0)
    msgs += [a.to_dict() for a in out]
    return dataclasses.replace(run, messages=msgs, threshold=threshold, critical=critical)


def operating_point(
    runs: list[tuple[RecordRun, Events]],
    target_per_hour: float,
    cfg: AlertConfig | None = None,
    critical_share: float = 0.1,
) -> dict:
    """Warning and critical thresholds for a target false-alert rate per monitor-hour.

    ``warning``: the lowest threshold whose pooled false alerts per monitor-hour (alerts with no
    abnormal beat or rhythm in them, all ECG kinds) over ``runs`` are at most
    ``target_per_hour``; ``critical``: the lowest at or above it whose anomaly alerts are false at
    most ``critical_share`` as often. Returns the thresholds and the pooled rows at them.
    """
    cfg = cfg or AlertConfig()
    scores = np.concatenate([[s["score"] for s in r.scores] for r, _ in runs])
    grid = np.unique(
        np.round(np.geomspace(max(np.quantile(scores, 0.5), 1.0), scores.max(), 60), 2)
    )

    def pooled(thr: float, crit: float | None) -> dict:
        return pool([score_record(rescore(r, thr, crit, cfg), ev) for r, ev in runs])

    warning = next(
        (t for t in grid if pooled(t, None)["false_per_hour"] <= target_per_hour), grid[-1]
    )
    crit_target = target_per_hour * critical_share
    critical = grid[-1]
    for t in grid[grid > warning]:
        rows = []
        for r, ev in runs:
            r2 = rescore(r, t, None, cfg)
            r2.messages = [x for x in r2.messages if x["kind"] == "anomaly"]
            rows.append(score_record(r2, ev))
        false_h = sum(x["false_alerts"] for x in rows) / sum(x["hours"] for x in rows)
        if false_h <= crit_target:
            critical = t
            break
    return {
        "warning": float(warning),
        "critical": float(critical),
        "target_per_hour": target_per_hour,
        "pooled": pooled(float(warning), float(critical)),
    }


def write_thresholds(model_path: str | Path, warning: float, critical: float) -> dict:
    """Set the ``default``/``warning`` and ``critical`` alert thresholds (calibrated units) in
    the metadata of an exported model, leaving its graph and other metadata as they are;
    returns the new thresholds. Refresh ``SHA256SUMS`` afterwards for a shipped model."""
    from ecgstream.runtime.model_file import read_spec, update_spec

    if not 0 < warning < critical:
        raise ValueError(f"need 0 < warning < critical, got {warning} and {critical}")
    thresholds = {
        **read_spec(model_path).thresholds,
        "default": float(warning),
        "warning": float(warning),
        "critical": float(critical),
    }
    return update_spec(model_path, thresholds=thresholds).thresholds
