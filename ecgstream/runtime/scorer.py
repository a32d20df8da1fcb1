"""Batched ONNX Runtime scoring of windows and whole records (no torch).

:class:`Scorer` is the one place where model input is prepared and model output is mapped back
to time. ``ecgstream score`` uses :meth:`Scorer.score_record`; the streaming worker scores the
windows cut by its per-stream buffers (fed by the same
:class:`~ecgstream.signals.preprocess.Preprocessor`) through :attr:`Scorer.stepper`, the model
kind's stream step when its file carries one (:mod:`ecgstream.runtime.stepping`), else
:meth:`Scorer.score_windows`. The scorer itself knows no model's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgstream.runtime.history import History
from ecgstream.runtime.model_file import (
    INPUT_NAME,
    OUTPUT_NAMES,
    ModelFileError,
    ModelSpec,
    read_spec,
)
from ecgstream.runtime.stepping import StreamStepper, load_history, load_stepper
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import Record, RecordError, select_leads
from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts

__all__ = ["Scorer", "RecordScores", "make_session", "session_options"]


def make_session(path: str | Path, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` on CPU with ``threads`` intra-op threads."""
    import onnxruntime as ort

    from ecgstream.runtime.manifest import check_model

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} not found")
    check_model(path)  # sha256 manifest (models/SHA256SUMS or $ECGSTREAM_MODEL_MANIFEST)
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelFileError(f"{path}: not a loadable ONNX model: {exc}") from exc


def session_options(threads: int):
    """ONNX Runtime session options: ``threads`` intra-op threads, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if threads > 1:
        # idle intra-op threads spin by default, taking the CPU that the poll loop and the
        # Kafka client need between inference calls
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


@dataclass
class RecordScores:
    """Scores of one record at the record's own rate (the scoring contract).

    ``point_score`` has one value per record sample (NaN where no window covered it);
    ``window_start`` / ``window_end`` are sample indices at the record's rate (end exclusive).
    """

    name: str
    fs: float
    point_score: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    window_score: np.ndarray

    def save_npz(self, path: str | Path) -> None:
        np.savez(
            path,
            fs=np.float64(self.fs),
            point_score=self.point_score.astype(np.float64),
            window_start=self.window_start.astype(np.int64),
            window_end=self.window_end.astype(np.int64),
            window_score=self.window_score.astype(np.float64),
        )


class Scorer:
    """Scores windows and records with one exported model.

    ``threads`` is ONNX Runtime's intra-op thread count; ``batch_size`` the windows per call.
    """

    def __init__(self, model_path: str | Path, threads: int = 1, batch_size: int = 64):
        self.model_path = Path(model_path)
        self.session = make_session(self.model_path, threads)
        self.spec: ModelSpec = read_spec(self.session)
        self.batch_size = batch_size
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= set(outputs):
            raise ModelFileError(
                f"{model_path}: graph must take '{INPUT_NAME}' and give {OUTPUT_NAMES}; "
                f"it takes {inputs} and gives {outputs}"
            )
        #: the model's per-stream history term (:mod:`ecgstream.runtime.history`), None without
        #: one; read before the stepper, which wraps it
        self.history: History | None = load_history(self)
        #: how the model scores a stream window after window, None without a stream step
        #: (see :mod:`ecgstream.runtime.stepping`); the pipeline then uses the main graph
        self.stepper: StreamStepper | None = load_stepper(self, threads)

    def score_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw point scores ``(n, window)`` and window scores ``(n,)`` of preprocessed windows.

        ``windows`` is ``(n, n_leads, window)`` float32 at the model rate; calibrated units are
        ``self.spec.normalise(raw)``.
        """
        if len(windows) == 0:
            return np.zeros((0, self.spec.window), np.float32), np.zeros(0, np.float32)
        return self.run(self.session, OUTPUT_NAMES, {INPUT_NAME: windows})  # type: ignore[return-value]

    def run(self, session, names: tuple[str, ...], feed: dict) -> tuple[np.ndarray, ...]:
        """``session``'s outputs ``names`` for inputs ``feed`` (equally long arrays), in calls
        of at most ``batch_size`` rows."""
        n = len(next(iter(feed.values())))
        outs: list[list[np.ndarray]] = [[] for _ in names]
        for i in range(0, n, self.batch_size):
            part = {
                k: np.ascontiguousarray(v[i : i + self.batch_size], dtype=np.float32)
                for k, v in feed.items()
            }
            for out, value in zip(outs, session.run(list(names), part), strict=True):
                out.append(value)
        return tuple(np.concatenate(o) for o in outs)

    def history_terms(
        self, windows: np.ndarray, starts: np.ndarray, window_raw: np.ndarray
    ) -> np.ndarray:
        """The history terms ``(n, segments)`` of one stream's consecutive ``windows``
        ``(n, leads, window)`` starting at ``starts`` (model samples), from a fresh history,
        given their raw window scores before the term (the gate); zeros without a history."""
        if self.history is None:
            return np.zeros((len(windows), 0))
        from threadpoolctl import threadpool_limits

        state = self.history.new_state("offline")
        cal = self.spec.normalise(np.asarray(window_raw, np.float64))
        with threadpool_limits(limits=1, user_api="blas"):  # many small products
            return self.history.advance([state], [0], [np.asarray(starts)], windows, cal)

    def score_signal(self, signal: np.ndarray, fs: float, name: str = "") -> RecordScores:
        """Score a whole signal ``(n_samples, n_leads)`` (leads already in model order)."""
        spec = self.spec
        x, delay_s = preprocess(signal, fs, spec.preprocess_config)
        starts = window_starts(len(x), spec.window, spec.hop)
        if len(starts) == 0:
            raise RecordError(
                f"{name or 'signal'}: {signal.shape[0] / fs:.2f} s is shorter than one "
                f"{spec.window_s:.2f} s window (plus {delay_s:.2f} s filter delay)"
            )
        windows = frame(x, starts, spec.window)
        point_raw, window_raw = self.score_windows(windows)
        if self.history is not None:  # one stream, its windows in order
            terms = self.history_terms(windows, starts, window_raw)
            point_raw, window_raw = self.history.apply(
                point_raw, window_raw, terms, float(spec.score_norm["scale"])
            )
        point_model = overlap_average(spec.normalise(point_raw), starts, len(x))
        point = to_record_rate(point_model, spec.fs, fs, signal.shape[0], delay_s)
        # [w_start, w_end) are the record samples between a window's first and last model sample
        # (so every one of them has a finite point score)
        t_first = starts / spec.fs - delay_s
        t_last = (starts + spec.window - 1) / spec.fs - delay_s
        w_start = np.clip(np.ceil(t_first * fs - 1e-6), 0, signal.shape[0]).astype(np.int64)
        w_end = np.clip(np.floor(t_last * fs + 1e-6) + 1, 0, signal.shape[0]).astype(np.int64)
        return RecordScores(name, fs, point, w_start, w_end, spec.normalise(window_raw))

    def score_record(self, record: Record) -> RecordScores:
        """Score a :class:`Record`, choosing the model's leads by name."""
        if record.signal.shape[1] < len(self.spec.leads):
            raise RecordError(
                f"{record.name}: model needs leads {self.spec.leads}, record has {record.leads}"
            )
        picked = select_leads(record, self.spec.leads)
        return self.score_signal(picked.signal, record.fs, record.name)
