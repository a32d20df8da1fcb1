"""What a model's alert threshold does on annotated records: the share of windows over it.

Each model window (10 s every 5 s for the shipped model, the windows `ecgstream run` scores) is
labelled from the beat annotations: abnormal if it holds an AAMI abnormal beat, normal if it
holds only normal beats (windows without beats are left out). Reported per model, pooled over
the records: the share of normal windows whose ``window_score`` reaches the model's default
threshold (the false alarms a monitor would raise per window) and the share of abnormal windows
that do (the windows it would flag). Thresholds are calibrated on DEV normals, so run it on the
TEST records (the default) to see how they carry over.

    python benchmarks/window_alert_rates.py BEFORE.onnx models/consensus-mitdb-mlii.onnx
"""

from __future__ import annotations

import json
from pathlib import Path

from _workload import model_records_parser  # benchmarks/ is on sys.path when run as a script


def alert_rates(model: Path, folder: Path, records: list[str]) -> dict:
    """Windows per label and the share of each at or over the default threshold (the ``alerts``
    block of ``ecgstream evaluate``'s report)."""
    from ecgstream.evaluation.protocol import ModelSource, evaluate
    from ecgstream.evaluation.splits import mitdb_paths

    report, _, _ = evaluate([ModelSource(model)], mitdb_paths(folder, records), progress=False)
    alerts = next(iter(report["sources"].values()))["alerts"]
    return {"model": str(model), **{k: v for k, v in alerts.items() if k != "window_score"}}


def main() -> None:
    from ecgstream.evaluation.splits import MITDB_TEST

    args = model_records_parser(__doc__, list(MITDB_TEST), "default: TEST records").parse_args()
    rows = [alert_rates(m, args.data, args.records) for m in args.models]
    for r in rows:
        print(
            f"{r['model']}: threshold {r['threshold']:.2f}; normal windows over it "
            f"{100 * r['normal_over']:.1f} % of {r['normal_windows']}, abnormal windows "
            f"{100 * r['abnormal_over']:.1f} % of {r['abnormal_windows']}"
        )
    if args.out:
        args.out.write_text(json.dumps({"records": args.records, "models": rows}, indent=1))


if __name__ == "__main__":
    main()
