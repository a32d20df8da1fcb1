"""Beat annotations (AAMI classes) and PTB-XL record labels, from files written by the test."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_ecg, write_record

from ecgstream.signals.labels import (
    AAMI_ABNORMAL,
    AAMI_NORMAL,
    BeatAnnotations,
    normal_mask,
    point_labels,
    ptbxl_table,
    read_beats,
    window_labels,
)
from ecgstream.signals.records import RecordError


def annotated(tmp_path, samples, symbols, fs=360):
    import wfdb

    path = write_record(tmp_path, "a", synthetic_ecg(10, fs), fs, ["MLII"])
    wfdb.wrann("a", "atr", np.asarray(samples), np.asarray(symbols), fs=fs, write_dir=str(tmp_path))
    return path


def test_read_beats_keeps_only_aami_beats(tmp_path):
    path = annotated(tmp_path, [10, 100, 200, 300, 400, 500], ["+", "N", "V", "~", "L", "A"])
    beats = read_beats(path)
    assert beats.symbols.tolist() == ["N", "V", "L", "A"]
    assert beats.samples.tolist() == [100, 200, 400, 500]
    assert beats.abnormal.tolist() == [False, True, False, True]
    assert beats.fs == 360 and len(beats) == 4
    assert set("NLRej") == AAMI_NORMAL and set("AaJSVEFfQ") == AAMI_ABNORMAL


def test_read_beats_missing_annotation(tmp_path):
    path = write_record(tmp_path, "b", synthetic_ecg(3, 360), 360, ["MLII"])
    with pytest.raises(RecordError, match="annotation file"):
        read_beats(path)


def beats(samples, abnormal, fs=100.0) -> BeatAnnotations:
    samples = np.asarray(samples)
    return BeatAnnotations(samples, np.array(["N"] * len(samples)), np.asarray(abnormal, bool), fs)


def test_window_labels():
    b = beats([10, 50, 90, 150], [0, 1, 0, 0])
    starts = np.array([0, 40, 60, 100, 200])
    ends = starts + 40
    assert window_labels(b, starts, ends).tolist() == [0, 1, 0, -1, -1]  # [100, 140) has no beat
    # end is exclusive, start inclusive
    assert window_labels(b, np.array([50, 0]), np.array([51, 50])).tolist() == [1, 0]


def test_normal_mask_and_point_labels():
    b = beats([100, 300], [1, 0], fs=100.0)
    mask = normal_mask(b, 400, margin_s=0.5)
    assert not mask[50:151].any() and mask[:50].all() and mask[151:].all()
    pl = point_labels(b, 400, half_width_s=0.15)
    assert pl.dtype == np.int8 and pl.sum() == 31 and pl[85] == 1 and pl[84] == 0


def test_ptbxl_table(tmp_path):
    (tmp_path / "scp_statements.csv").write_text(
        ",diagnostic,diagnostic_class\nNORM,1.0,NORM\nIMI,1.0,MI\nSR,,\n"
    )
    rows = ["ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr"]
    codes = [
        "{'NORM': 100.0, 'SR': 0.0}",
        "{'IMI': 50.0, 'NORM': 0.0}",
        "{'SR': 0.0}",
        "{'NORM': 80.0}",
    ]
    for i, c in enumerate(codes, start=1):
        rows.append(f'{i},{10 + i},"{c}",{i},records100/{i:05d}_lr,records500/{i:05d}_hr')
        if i < 4:  # the last record's files are missing: not listed
            write_record(tmp_path / "records100", f"{i:05d}_lr", synthetic_ecg(2, 100), 100, ["II"])
    (tmp_path / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    table = ptbxl_table(tmp_path)
    assert table["ecg_id"].tolist() == [1, 2, 3]
    assert table["label"].tolist() == [0, 1, -1]
    assert table["superclasses"].tolist() == [["NORM"], ["MI", "NORM"], []]
    assert table["path"][0].name == "00001_lr"
    with pytest.raises(RecordError, match="ptbxl_database.csv"):
        ptbxl_table(tmp_path / "records100")
    with pytest.raises(RecordError, match="resolution"):
        ptbxl_table(tmp_path, "xx")
