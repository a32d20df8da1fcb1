"""Shared fixtures: synthetic but realistic ECG written as real WFDB records; the test lanes.

Lanes (markers declared in pyproject.toml, applied here so a test file needs no edits):
- ``integration``: the test talks to a real broker, a webhook receiver or a subprocess (it uses
  one of ``INTEGRATION_FIXTURES``, lives in one of ``INTEGRATION_MODULES``, or its body starts a
  subprocess);
- ``slow``: it takes more than a few seconds on the reference machine (``SLOW``, measured with
  ``pytest --durations=0``).

``pytest -m "not integration and not slow"`` is the fast lane (under 2 minutes).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: fixtures that start a real broker (Tansu) or a local S3 server
INTEGRATION_FIXTURES = {"broker", "s3_store"}
#: test modules or tests (``module::name`` prefixes, relative to tests/) that run the worker
#: against a broker, post to receivers or run subprocesses
INTEGRATION_MODULES = (
    "reliability/",
    "streaming/test_cli.py",
    "streaming/test_failover.py",
    "streaming/test_worker.py",
    "sinks/test_webhook.py",
    "test_notebook.py::test_quickstart_notebook_runs",  # a Jupyter kernel
)
#: tests (``module::name`` prefixes, relative to tests/) over a few seconds that are not
#: integration tests: 3 s or more in a run of the whole suite (``--durations=0``)
SLOW = (
    "cli/test_score.py::test_ptbxl_layout_uses_100hz_files_and_lead_by_name",
    "evaluation/test_metrics.py::test_auroc_and_ap_match_sklearn",
    "evaluation/test_protocol.py::test_evaluate_cli_ptbxl_folds_record_auroc",
    "models/test_consensus.py::test_neighbours_export_with_onnx_parity_and_a_stream_step",
    "models/test_consensus.py::test_population_reference_sees_what_is_in_every_beat",
    "models/test_consensus.py::test_population_reference_survives_checkpoint_and_export",
    "models/test_consensus.py::test_refiner_exports_with_onnx_parity_and_a_stream_step",
    "models/test_consensus.py::test_rhythm_term_exports_with_onnx_parity_and_a_stream_step",
    "models/test_consensus_population.py::test_defaults_keep_the_pca_reference_and_its_buffers",
    "models/test_consensus_population.py::test_lead_scale_makes_the_score_independent_of_one_lead_gain",
    "models/test_image_methods.py::test_every_kind_trains_exports_and_scores_identically",
    "models/test_image_methods.py::test_uniad_localises_a_flat_line_after_training",
    "models/test_mmae.py::test_training_steps_lower_the_loss",
    "models/test_refiner.py::test_material_keeps_the_windows_for_a_refiner_reading_the_waveform",
    "models/test_refiner.py::test_the_refiner_learns_where_synthetic_anomalies_lie_on_an_unseen_record",
    "models/test_refiner.py::test_the_refiner_trains_the_same_twice_with_one_seed",
    "models/test_token_core.py::test_core_and_query_decoder_export_to_onnx",
    "signals/test_records.py::test_numpy_reader_equals_wfdb_on_real_records",
    "streaming/test_pipeline.py::test_windows_take_over_the_sorts_of_their_previous_window",
    "streaming/test_twelve_lead.py::test_a_twelve_lead_500_hz_monitor_is_scored_on_lead_ii_as_offline",
    "training/test_train_series.py::test_image_kind_trains_on_wfdb_records_through_the_registry",
    "training/test_train_series.py::test_train_cli_with_series_flag",
    "training/test_train_series.py::test_train_series_then_score_cli_writes_the_contract",
)


def _starts_a_subprocess(item) -> bool:
    try:
        return "subprocess." in inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the integration and slow tests (module docstring)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(tests).as_posix()
        except ValueError:
            continue  # doctests in ecgstream/: fast
        name = f"{rel}::{item.name}"
        if (
            INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
            or name.startswith(INTEGRATION_MODULES)
            or _starts_a_subprocess(item)
        ):
            item.add_marker(pytest.mark.integration)
        if name.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


SHIPPED_MODEL = REPO / "models" / "consensus-mitdb-mlii.onnx"  # the default of `ecgstream run`
MMAE_MODEL = REPO / "models" / "mmae-mitdb-mlii.onnx"


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory) -> Path:
    """The shipped default model without its history section (the in-window detector alone)."""
    import shutil

    from ecgstream.runtime.model_file import update_spec

    path = tmp_path_factory.mktemp("plain") / "consensus-plain.onnx"
    shutil.copy(SHIPPED_MODEL, path)
    update_spec(path, history=None)
    return path


def synthetic_ecg(
    duration_s: float, fs: int, heart_rate: int = 70, seed: int = 0, n_leads: int = 1
) -> np.ndarray:
    """``(n, n_leads)`` float32 ECG in mV from neurokit2 (a real simulator, not a sine)."""
    import neurokit2 as nk

    if n_leads == 12:
        df = nk.ecg_simulate(
            duration=duration_s,
            sampling_rate=fs,
            heart_rate=heart_rate,
            method="multileads",
            random_state=seed,
        )
        return np.array(df.to_numpy(dtype=np.float32))  # writeable (pandas may return a view)
    lead = nk.ecg_simulate(
        duration=duration_s, sampling_rate=fs, heart_rate=heart_rate, noise=0.01, random_state=seed
    )
    return np.repeat(np.asarray(lead, np.float32)[:, None], n_leads, axis=1)


def write_record(folder: Path, name: str, signal: np.ndarray, fs: float, leads: list[str]) -> Path:
    """Write ``signal`` ``(n, leads)`` in mV as a WFDB record (format 16) and return its path."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"] * len(leads),
        sig_name=leads,
        p_signal=signal.astype(np.float64),
        fmt=["16"] * len(leads),
        adc_gain=[200.0] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )
    return folder / name


@pytest.fixture(scope="session")
def ecg_folder(tmp_path_factory) -> Path:
    """A folder of three 2-lead 360 Hz WFDB records (60 s each) with a RECORDS file."""
    folder = tmp_path_factory.mktemp("wfdb")
    names = []
    for i, hr in enumerate((62, 75, 88)):
        sig = synthetic_ecg(60, 360, heart_rate=hr, seed=i, n_leads=2)
        write_record(folder, f"syn{i}", sig, 360, ["MLII", "V1"])
        names.append(f"syn{i}")
    (folder / "RECORDS").write_text("\n".join(names) + "\n")
    return folder


def make_tiny_model(
    path: Path,
    leads: tuple[str, ...] = ("MLII",),
    fs: float = 100.0,
    window: int = 250,
    hop: int = 125,
) -> Path:
    """Export a small PCA reconstruction model (no torch) fitted on synthetic normal ECG windows.

    It has the full ecgstream model-file interface, so it stands in for a trained model wherever
    a test needs a real ONNX Runtime session with real scores.
    """
    from ecgstream.evaluation.baselines import export_pca, fit_pca, robust_norm
    from ecgstream.runtime.model_file import ModelSpec
    from ecgstream.signals.preprocess import PreprocessConfig, preprocess
    from ecgstream.signals.windows import frame, window_starts

    cfg = PreprocessConfig(fs=fs)
    parts = []
    for seed, hr in enumerate((60, 72, 85)):
        sig = synthetic_ecg(25, 360, heart_rate=hr, seed=100 + seed, n_leads=len(leads))
        x, _ = preprocess(sig, 360.0, cfg)
        parts.append(frame(x, window_starts(len(x), window, hop // 2), window))
    windows = np.concatenate(parts)
    model = fit_pca(windows, n_components=6)
    spec = ModelSpec(
        name="tiny-pca",
        version="0.0.1",
        kind="pca",
        leads=list(leads),
        window=window,
        hop=hop,
        preprocessing=cfg.to_dict(),
        score_norm=robust_norm(model.score_windows(windows)[1]),
        thresholds={"default": 5.0},
    )
    return export_pca(model, path, spec)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-lead (MLII) 100 Hz ONNX model with 2.5 s windows and 1.25 s hop (see make_tiny_model)."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-mlii.onnx")
