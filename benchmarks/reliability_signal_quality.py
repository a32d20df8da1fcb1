"""False ECG anomaly alerts per monitor-hour: clean normal monitors versus artefact-injected ones.

Normal ECG monitors (neurokit2 ``ecg_simulate``, 55-95 bpm) run through the worker's pipeline,
1 s chunks, with the model (the shipped model by default, else a small PCA model fitted on
normal synthetic ECG), three times: clean; with one episode of each artefact per monitor (flat
line, lead off, saturation, 50 Hz mains hum, 0.3 Hz baseline wander, 10 % missing samples,
a gap; see tests/reliability/quality.py); and with the same artefacts but technical checks
off, to show what the checks prevent. Every anomaly alert on these normal records is a false
alarm.

    nice -n 5 python benchmarks/reliability_signal_quality.py --out benchmarks/results/reliability_signal_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import SHIPPED_MODEL, make_tiny_model  # noqa: E402
from reliability.quality import ARTEFACTS, run_monitors  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", help="ONNX model (default: the shipped model, else a small PCA model)"
    )
    p.add_argument("--monitors", type=int, default=12)
    p.add_argument("--minutes", type=float, default=10.0, help="per monitor")
    p.add_argument("--episode-s", type=float, default=15.0, help="length of each artefact episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.model:
        model = args.model
    elif SHIPPED_MODEL.exists():
        model = str(SHIPPED_MODEL)
    else:
        model = str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny-pca.onnx"))
    seconds = int(args.minutes * 60)
    result = {"model": Path(model).name, "monitors": args.monitors, "seconds_per_monitor": seconds}
    for name, arts, tech in (
        ("clean", (), True),
        ("artefacts", ARTEFACTS, True),
        ("artefacts_no_checks", ARTEFACTS, False),
    ):
        t = time.time()
        r = run_monitors(
            model,
            args.monitors,
            seconds,
            arts,
            episode_s=args.episode_s,
            seed=args.seed,
            technical=tech,
        )
        result[name] = r.summary()
        print(name, f"({time.time() - t:.0f} s)", json.dumps(result[name]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
