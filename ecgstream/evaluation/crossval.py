"""Leave-records-out cross-validation: the protocol every model choice is made by.

For each fold of :mod:`ecgstream.evaluation.splits` (DS1 DEV records in 5 folds of 3, or PTB-XL
``strat_fold`` 1-8), a model is trained from its TOML (``[train]``) through the public training
API on the other folds (the next fold validates, the rest train) and the fold's
held-out records are scored through the runtime :class:`~ecgstream.runtime.scorer.Scorer`, as
``ecgstream score`` scores them. In the same pass two references fitted on the same training
records are scored: the PCA reconstruction and the segment energy (the trivial predictor,
:mod:`ecgstream.evaluation.baselines`). Every record is scored by models that never read it.

Figures per fold and pooled over all out-of-fold scores (:func:`figures`), and their mean, std,
min and max across folds (:func:`spread`):

- ``beat``: beat AUROC and AP, all AAMI abnormal (S, V, F, Q) vs normal (N) beats;
- ``S``, ``V``, ``F``: beat AUROC of each AAMI class against the normal beats (N: N L R e j;
  S: A a J S; V: V E; F: F) of the same records (:func:`class_aurocs`);
- ``window_10s``: AUROC of non-overlapping 10 s windows (max point score);
- ``record``: record AUROC, NORM-only vs any other PTB-XL diagnostic superclass.

Beat and window figures are those of :mod:`ecgstream.evaluation.protocol` (a beat's score is the
max point score within +-150 ms of its annotation). The pooled figures mix models calibrated on
different folds; each model's scores are in its calibrated units, so they are comparable.

DS1 TEST records are refused here: :func:`report_on_test` scores a finished model on them once.
Torch is imported only by training (:func:`ecgstream.training.fit_records`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path

import numpy as np

from ecgstream.evaluation.metrics import MetricError, auroc
from ecgstream.evaluation.protocol import Collected, ModelSource, evaluate, summarise
from ecgstream.evaluation.splits import (
    MITDB_CV_FOLDS,
    MITDB_TEST,
    PTBXL_CV_FOLDS,
    CVFold,
    mitdb_cv_folds,
    mitdb_paths,
    ptbxl_cv_folds,
)
from ecgstream.runtime.model_file import read_spec, sha256_of
from ecgstream.signals.labels import AAMI_NORMAL

__all__ = [
    "BEAT_CLASSES",
    "METRICS",
    "LeakError",
    "class_aurocs",
    "figures",
    "merge",
    "spread",
    "check_unseen",
    "fold_config",
    "reference_models",
    "cross_validate",
    "mitdb_cv",
    "ptbxl_cv",
    "report_on_test",
]

log = logging.getLogger(__name__)

#: AAMI beat classes reported apart, by annotation symbol (each against the normal beats).
BEAT_CLASSES = {"S": "AaJS", "V": "VE", "F": "F"}
#: The figures of one source, in report order (``beat_ap`` is the beat AP).
METRICS = ("beat", "beat_ap", "S", "V", "F", "window_10s", "record")


class LeakError(ValueError):
    """A model (or a fold set) would be evaluated on records it trained or validated on."""


def class_aurocs(symbols: np.ndarray, scores: np.ndarray) -> dict[str, dict]:
    """Beat AUROC of each AAMI class of :data:`BEAT_CLASSES` against the normal beats.

    ``symbols`` are beat annotation symbols and ``scores`` their beat scores (same length, no
    NaN). Returns ``{class: {"n": beats of the class, "n_normal": ..., "auroc": float | None}}``
    (None where the class or the normal beats are absent).
    """
    symbols = np.asarray(symbols).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if symbols.shape != scores.shape:
        raise MetricError(f"{symbols.size} beat symbols but {scores.size} scores")
    normal = np.isin(symbols, sorted(AAMI_NORMAL))
    out: dict[str, dict] = {}
    for cls, members in BEAT_CLASSES.items():
        sel = np.isin(symbols, list(members))
        block: dict = {"n": int(sel.sum()), "n_normal": int(normal.sum()), "auroc": None}
        if sel.any() and normal.any():
            labels = np.r_[np.zeros(normal.sum(), np.int8), np.ones(sel.sum(), np.int8)]
            block["auroc"] = auroc(labels, np.r_[scores[normal], scores[sel]])
        out[cls] = block
    return out


def figures(collected: Collected) -> dict:
    """The metric blocks of one source (see the module docstring) from its collected pairs."""
    report = summarise(collected)
    report.pop("alerts", None)  # thresholds differ per fold: not a cross-validated figure
    out: dict = {}
    if "beat" in report:
        beat = report["beat"]
        out["beat"] = {k: beat[k] for k in ("n", "n_positive", "auroc")}
        out["beat_ap"] = {
            "n": beat["n"],
            "n_positive": beat["n_positive"],
            "ap": beat.get("ap"),
            "ap_chance": beat.get("ap_chance"),
        }
        if collected.beat_symbols:
            _, scores = collected.arrays("beat")
            out.update(class_aurocs(np.concatenate(collected.beat_symbols), scores))
    for key in ("window_10s", "record"):
        if key in report:
            out[key] = {k: report[key][k] for k in ("n", "n_positive", "auroc")}
    return out


def _value(block: dict | None) -> float | None:
    """The figure of a metric block: its AP for ``beat_ap``, else its AUROC."""
    if not block:
        return None
    return block.get("ap") if "ap" in block else block.get("auroc")


def merge(parts: Iterable[Collected]) -> Collected:
    """One :class:`Collected` holding every pair of ``parts`` (e.g. all out-of-fold scores)."""
    out = Collected()
    listed = [f.name for f in fields(Collected) if f.name.endswith(("_labels", "_scores"))]
    for part in parts:
        for name in [*listed, "beat_symbols", "record_names", "record_label", "record_score"]:
            getattr(out, name).extend(getattr(part, name))
        out.per_record.update(part.per_record)
    return out


def spread(values: Iterable[float | None]) -> dict:
    """Mean, std (population), min and max of the defined ``values``, and how many there were."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return {"n_folds": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n_folds": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}  # fmt: skip


def check_unseen(model: str | Path, forbidden: Iterable[str]) -> dict:
    """The model's training summary; :class:`LeakError` if it names a ``forbidden`` record as a
    training or validation record, or names none (the split cannot be checked)."""
    spec = read_spec(model)
    seen = set(spec.training.get("records", [])) | set(spec.training.get("val_records", []))
    if not seen:
        raise LeakError(f"{model}: no training summary (records) in its metadata; "
                        "cannot check that it never saw the evaluation records")  # fmt: skip
    leaked = sorted(seen & {str(r) for r in forbidden})
    if leaked:
        raise LeakError(
            f"{model} was trained or validated on {leaked}, which it would be evaluated on"
        )
    return {
        "records": sorted(spec.training.get("records", [])),
        "val_records": sorted(spec.training.get("val_records", [])),
        "train_seconds": spec.training.get("train_seconds"),
        "validation": spec.training.get("validation", {}),
    }


def fold_config(toml: str | Path | None, fold: CVFold, data: str, **flags):
    """The :class:`~ecgstream.training.TrainConfig` of one fold: the TOML's ``[train]`` and
    ``[model]`` tables (read by the loader ``ecgstream train`` uses), with the fold's records
    (``data="mitdb"``: ``records`` / ``val_records``; ``"ptbxl"``: ``ptbxl_train_folds`` /
    ``ptbxl_val_folds``) and ``flags`` over it (``--set`` keys of either table)."""
    from ecgstream.training.config import load_train_config

    if data == "mitdb":
        split = {"records": [*fold.train, *fold.val], "val_records": list(fold.val)}
    elif data == "ptbxl":
        split = {"records": [], "val_records": [], "ptbxl_train_folds": list(fold.train),
                 "ptbxl_val_folds": list(fold.val)}  # fmt: skip
    else:
        raise ValueError(f"data must be 'mitdb' or 'ptbxl', not {data!r}")
    sets = {key: str(value) for key, value in flags.items()}
    return load_train_config(toml, flags=split, sets=sets, environ={})


def _train(cfg, paths: list[Path], out: Path, reuse: bool, progress: bool) -> Path:
    """Train through :func:`ecgstream.training.fit_records`, or reuse ``out`` when it was
    trained from the same configuration."""
    from dataclasses import replace

    from ecgstream.training import fit_records

    cfg = replace(cfg, model_out=out)
    if reuse and out.exists():
        with contextlib.suppress(Exception):
            if read_spec(out).training.get("config") == cfg.to_dict():
                log.info("reusing %s (same configuration)", out)
                return out
    return fit_records(paths, cfg, out, progress=progress)


def reference_models(
    train_paths: list[Path], model: Path, out_dir: Path, tag: str, pca_components: int = 8
) -> dict[str, Path]:
    """The PCA reconstruction and segment-energy references, fitted (PCA) and calibrated (both)
    on the normal windows of ``train_paths``, cut as ``model`` cuts its windows."""
    from ecgstream.evaluation.baselines import fit_energy_on_records, fit_pca_on_records

    spec = read_spec(model)
    return {
        "pca": fit_pca_on_records(
            train_paths, spec, out_dir / f"pca-{tag}.onnx", n_components=pca_components
        ),  # fmt: skip
        "energy": fit_energy_on_records(train_paths, spec, out_dir / f"energy-{tag}.onnx"),
    }


def _score(models: dict[str, Path], paths: list[Path]) -> tuple[dict[str, Collected], dict]:
    """Every model of ``models`` (role -> ONNX file) on ``paths`` through the runtime Scorer."""
    sources = []
    for role, path in models.items():
        source = ModelSource(path)
        source.name = role
        sources.append(source)
    report, collected, _ = evaluate(sources, paths, progress=False)
    if report["skipped"]:
        raise RuntimeError(f"records could not be scored: {report['skipped']}")
    return collected, report


def _model_entry(path: Path) -> dict:
    spec = read_spec(path)
    return {"path": str(path), "sha256": sha256_of(path), "kind": spec.kind,
            "train_seconds": spec.training.get("train_seconds")}  # fmt: skip


def cross_validate(
    folds: list[CVFold],
    train: Callable[[CVFold], Path],
    held_out: Callable[[CVFold], list[Path]],
    train_paths: Callable[[CVFold, Path], list[Path]],
    work_dir: Path,
    pca_components: int = 8,
    on_fold: Callable[[dict], None] | None = None,
) -> dict:
    """Run the protocol over ``folds``: ``train(fold)`` returns the fold's model file (checked not
    to have seen ``held_out(fold)``), ``train_paths(fold, model)`` the records the references are
    fitted on. Returns ``{"folds": [...], "summary": {role: {metric: spread + pooled}}}`` with
    roles ``model``, ``pca`` and ``energy``; ``on_fold`` sees each fold's entry when done."""
    work_dir.mkdir(parents=True, exist_ok=True)
    per_fold: list[dict] = []
    pooled: dict[str, list[Collected]] = {}
    for fold in folds:
        t0 = time.perf_counter()
        model = train(fold)
        held = held_out(fold)
        summary = check_unseen(model, {Path(p).name for p in held})
        refs = reference_models(train_paths(fold, model), model, work_dir,
                                f"fold{fold.index}", pca_components)  # fmt: skip
        models = {"model": model, **refs}
        collected, _ = _score(models, held)
        entry = {
            "index": fold.index,
            "held_out": list(fold.held_out),
            "train": list(fold.train),
            "val": list(fold.val),
            "n_records_scored": len(held),
            "training": summary,
            "models": {role: _model_entry(p) for role, p in models.items()},
            "figures": {role: figures(c) for role, c in collected.items()},
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        per_fold.append(entry)
        for role, c in collected.items():
            pooled.setdefault(role, []).append(c)
        if on_fold is not None:
            on_fold(entry)
    summary_out: dict = {}
    for role, parts in pooled.items():
        pooled_figs = figures(merge(parts))
        summary_out[role] = {
            metric: {
                **spread(_value(f["figures"][role].get(metric)) for f in per_fold),
                "pooled": _value(pooled_figs.get(metric)),
                "pooled_n": (pooled_figs.get(metric) or {}).get("n"),
            }
            for metric in METRICS
            if metric in pooled_figs
        }
    return {"folds": per_fold, "summary": summary_out}


def _refuse_test(names: Iterable[str]) -> None:
    leaked = sorted(set(names) & set(MITDB_TEST))
    if leaked:
        raise LeakError(f"DS1 TEST records {leaked} are never read by cross-validation; "
                        "score a finished model on them once with report_on_test")  # fmt: skip


def mitdb_cv(
    toml: str | Path | None,
    folder: str | Path,
    work_dir: str | Path,
    folds: tuple[tuple[str, ...], ...] = MITDB_CV_FOLDS,
    pca_components: int = 8,
    reuse: bool = True,
    progress: bool = False,
    on_fold: Callable[[dict], None] | None = None,
    **flags,
) -> dict:
    """Cross-validate the model of ``toml`` over MIT-BIH records of ``folder`` in ``folds``
    (default: the DS1 DEV folds). Only the folds' records are read; a fold set naming a DS1
    TEST record raises :class:`LeakError`. ``flags`` override ``[train]`` keys (e.g. ``seed``).
    Trained fold models go to ``work_dir``."""
    _refuse_test(r for f in folds for r in f)
    cv_folds = mitdb_cv_folds(folds)
    folder, work_dir = Path(folder), Path(work_dir)

    def train(fold: CVFold) -> Path:
        cfg = fold_config(toml, fold, "mitdb", **flags)
        name = f"{cfg.name}-cv{fold.index}"
        paths = mitdb_paths(folder, [*fold.train, *fold.val])
        return _train(cfg, paths, work_dir / f"{name}.onnx", reuse, progress)

    def refs(fold: CVFold, model: Path) -> list[Path]:
        return mitdb_paths(folder, check_unseen(model, fold.held_out)["records"])

    result = cross_validate(cv_folds, train, lambda f: mitdb_paths(folder, f.held_out), refs,
                            work_dir, pca_components, on_fold)  # fmt: skip
    return {"data": str(folder), "toml": str(toml) if toml else None, **result}


def _ptbxl_paths(folder: Path, folds: Iterable[int], normal_only: bool = False) -> list[Path]:
    """Paths of the labelled 100 Hz ECGs of ``folds`` (only the NORM-only ones: ``normal_only``)."""
    from ecgstream.signals.labels import ptbxl_table

    table = ptbxl_table(folder, "lr")
    keep = table["strat_fold"].isin(list(folds)) & (table["label"] >= 0)
    if normal_only:
        keep &= table["label"] == 0
    return [Path(p) for p in table.loc[keep, "path"]]


def ptbxl_cv(
    toml: str | Path | None,
    folder: str | Path,
    work_dir: str | Path,
    folds: tuple[int, ...] = PTBXL_CV_FOLDS,
    pca_components: int = 8,
    reuse: bool = True,
    progress: bool = False,
    on_fold: Callable[[dict], None] | None = None,
    **flags,
) -> dict:
    """Cross-validate the model of ``toml`` over the PTB-XL ``strat_fold``s ``folds`` of
    ``folder`` (folds respect patients): record AUROC of each held-out fold's labelled ECGs.
    References are fitted on the NORM-only ECGs of the training folds."""
    cv_folds = ptbxl_cv_folds(folds)
    folder, work_dir = Path(folder), Path(work_dir)

    def train(fold: CVFold) -> Path:
        cfg = fold_config(toml, fold, "ptbxl", **flags)
        if cfg.ptbxl_resolution != "lr":
            raise ValueError("PTB-XL cross-validation scores the 100 Hz records (resolution lr)")
        return _train(cfg, [folder], work_dir / f"{cfg.name}-cv{fold.index}.onnx", reuse, progress)

    result = cross_validate(
        cv_folds,
        train,
        lambda f: _ptbxl_paths(folder, f.held_out),
        lambda f, _model: _ptbxl_paths(folder, f.train, normal_only=True),
        work_dir,
        pca_components,
        on_fold,
    )
    return {"data": str(folder), "toml": str(toml) if toml else None, **result}


def report_on_test(
    model: str | Path,
    folder: str | Path,
    work_dir: str | Path,
    records: tuple[str, ...] = MITDB_TEST,
    pca_components: int = 8,
) -> dict:
    """Score a finished model once on the DS1 TEST ``records`` with the cross-validation's
    figures, beside PCA and segment-energy references fitted on the model's own training
    records. Refuses (:class:`LeakError`) a model whose training summary names a TEST record."""
    model, folder, work_dir = Path(model), Path(folder), Path(work_dir)
    summary = check_unseen(model, set(records) | set(MITDB_TEST))
    work_dir.mkdir(parents=True, exist_ok=True)
    refs = reference_models(mitdb_paths(folder, summary["records"]), model, work_dir, "test",
                            pca_components)  # fmt: skip
    models = {"model": model, **refs}
    collected, _ = _score(models, mitdb_paths(folder, records))
    return {
        "data": str(folder),
        "records": list(records),
        "training": summary,
        "models": {role: _model_entry(p) for role, p in models.items()},
        "figures": {role: figures(c) for role, c in collected.items()},
        "per_record": {role: c.per_record for role, c in collected.items()},
    }
