"""Beat AUROC of MMAE-ECG's aligned beat copy alone (zero heads, no training), per DEV fold.

The copy needs no training, so its beat AUROC over the 3 DEV folds of ``research/mmae/cv.py``
can be measured for any way of making it by exporting the fold's network (its metadata and
calibration, from ``cv.py --work``) with zero output heads and the copy's settings replaced.
Rows: version 4's copy (plain mean of the copies, lags in steps of 2 samples) and the
cost-weighted copy with the lag refined to a fraction of a sample (``prompt_refine_step = 1``,
``prompt_subsample``, ``prompt_gate = "cost"``, ``prompt_tau = 0.3``: the copy chosen on the
training records' masked R², ``research/mmae/gate.py``). Never reads the TEST records.

    PYTHONPATH=. nice -n 10 python research/mmae/copy_cv.py --work /tmp/mmae_cv_v4 \
        --out research/mmae/results/copy_cv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from beat_classes import class_aurocs  # noqa: E402

from ecgstream.runtime.model_file import read_spec  # noqa: E402
from research.mmae.data import DATA, DEV, TEST, fold_summary  # noqa: E402

COPIES = {
    "copy_v4": {},
    "copy_cost_subsample": {
        "prompt_refine_step": 1,
        "prompt_subsample": True,
        "prompt_gate": "cost",
        "prompt_tau": 0.3,
    },  # fmt: skip
}


def copy_model(fold_model: Path, over: dict, out: Path) -> Path:
    """``fold_model``'s network with zero output heads and the copy settings ``over``, exported."""
    import torch

    from ecgstream.models.mmae import MMAE, MMAEConfig
    from ecgstream.training.export import export_onnx

    spec = read_spec(fold_model)
    spec.params = {**spec.params, **over}
    model = MMAE(MMAEConfig.from_dict(spec.params))
    with torch.no_grad():
        for head in (model.head_global, model.head_local):
            head.weight.zero_()
            head.bias.zero_()
    spec.name = "beat-copy"
    return export_onnx(model, spec, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmae_cv_v4"))
    ap.add_argument("--out", type=Path, default=REPO / "research/mmae/results/copy_cv.json")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    dev = sorted(DEV)
    results = {"folds": {}}
    for k in range(3):
        test = dev[k::3]
        assert not set(test) & set(TEST)
        fold = {"test": test}
        for name, over in COPIES.items():
            path = copy_model(
                args.work / f"mmae-cv{k}.onnx", over, args.work / f"{name}-cv{k}.onnx"
            )
            fold[name] = {c: {"beats": n, "auroc": round(a, 4)}
                          for c, (n, a) in class_aurocs(path, DATA, test, args.batch).items()}  # fmt: skip
        results["folds"][str(k)] = fold
        print(json.dumps(fold), flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    summary = fold_summary(results["folds"], tuple(COPIES))
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
