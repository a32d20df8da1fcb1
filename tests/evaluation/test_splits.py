"""The fixed evaluation splits: disjoint, complete, and the benchmark refuses leaked models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ecgstream.evaluation.baselines import export_pca, fit_pca
from ecgstream.evaluation.splits import (
    MITDB_ALL,
    MITDB_DEV,
    MITDB_TEST,
    PTBXL_TEST_FOLDS,
    PTBXL_TRAIN_FOLDS,
    PTBXL_VAL_FOLDS,
    mitdb_paths,
    ptbxl_split,
)
from ecgstream.runtime.model_file import ModelSpec

REPO = Path(__file__).resolve().parents[2]


def test_mitdb_split_is_disjoint_and_covers_ds1():
    assert not set(MITDB_TEST) & set(MITDB_DEV)
    assert len(MITDB_ALL) == 22 and set(MITDB_ALL) == set(MITDB_TEST) | set(MITDB_DEV)
    assert mitdb_paths("/data", ["101"]) == [Path("/data/101")]


def test_ptbxl_folds_are_disjoint():
    folds = [set(PTBXL_TRAIN_FOLDS), set(PTBXL_VAL_FOLDS), set(PTBXL_TEST_FOLDS)]
    assert sum(len(f) for f in folds) == len(set().union(*folds)) == 8


def test_ptbxl_split_parts(tmp_path):
    from conftest import synthetic_ecg, write_record

    (tmp_path / "scp_statements.csv").write_text(
        ",diagnostic,diagnostic_class\nNORM,1.0,NORM\nIMI,1.0,MI\n"
    )
    rows = ["ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr"]
    for i, (fold, code) in enumerate(
        [(1, "NORM"), (2, "IMI"), (6, "IMI"), (7, "NORM"), (8, "IMI")], start=1
    ):
        rows.append(f"{i},{i},\"{{'{code}': 100.0}}\",{fold},r/{i:05d}_lr,r/{i:05d}_hr")
        write_record(tmp_path / "r", f"{i:05d}_lr", synthetic_ecg(1, 100), 100, ["II"])
    (tmp_path / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    assert ptbxl_split(tmp_path, "train")["ecg_id"].tolist() == [1]  # NORM only
    assert ptbxl_split(tmp_path, "val")["ecg_id"].tolist() == [3]
    assert ptbxl_split(tmp_path, "test")["ecg_id"].tolist() == [4, 5]
    with pytest.raises(ValueError, match="split part"):
        ptbxl_split(tmp_path, "dev")


def test_benchmark_refuses_a_model_that_saw_test_records(tmp_path):
    import numpy as np

    spec_ = importlib.util.spec_from_file_location(
        "eval_core", REPO / "benchmarks" / "eval_core.py"
    )
    eval_core = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(eval_core)
    model = fit_pca(np.random.default_rng(0).normal(size=(20, 1, 50)), 2)

    def export(records, val):
        spec = ModelSpec(name="m", version="1", kind="pca", leads=["MLII"], window=50, hop=25,
                         training={"records": records, "val_records": val})  # fmt: skip
        return export_pca(model, tmp_path / "m.onnx", spec)

    assert eval_core.check_unseen(export(["108", "109"], ["112"]), set(MITDB_TEST))["records"] == [
        "108",
        "109",
    ]
    with pytest.raises(SystemExit, match="TEST records"):
        eval_core.check_unseen(export(["108"], ["101"]), set(MITDB_TEST))
    with pytest.raises(SystemExit, match="no training summary"):
        eval_core.check_unseen(export([], []), set(MITDB_TEST))
