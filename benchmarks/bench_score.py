"""Speed of ``ecgstream score`` on one core, and ONNX Runtime vs PyTorch eager on the same windows.

Workload: one 30 min 2-lead 360 Hz record (MIT-BIH DS1 record 101 when ``--data`` has it, else a
synthetic neurokit2 record of the same shape written as WFDB). Everything runs pinned to one CPU
core (``taskset -c 0`` when available, plus ``OMP_NUM_THREADS=1``, ONNX Runtime intra-op threads 1,
``torch.set_num_threads(1)``).

Measured, each over ``--repeats`` runs (median and min reported), as wall time and as CPU time
(user + system): on a shared machine the CPU time is the better estimate of what one idle core
does, so both are reported with the load average at the start:

1. ``ecgstream score`` as a user runs it (a new process: start-up, imports, reading the record,
   preprocessing, inference, writing the npz) -> x real time = record duration / wall time.
2. Where the time of 1. goes: the same steps timed one by one in a fresh process (interpreter
   start, imports, model load, read, preprocess, windows, inference, mapping back, npz).
   Everything but the inference is what start-up work costs a user scoring one record.
3. The same work in-process (``Scorer.score_record`` on a record already read), i.e. without the
   Python start-up.
4. ONNX Runtime vs PyTorch eager (``torch.no_grad``) on the same batches of windows (all windows
   of the record, batch 64): seconds and the ratio.

The torch model is built from the spec's architecture parameters; with ``--model`` omitted an
untrained MMAE-ECG of the default training configuration is exported first (speed does not depend
on the weights).

    nice -n 5 python benchmarks/bench_score.py --model models/consensus-mitdb-mlii.onnx \\
        --out benchmarks/results/bench_score.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/mitdb-ds1")
TARGET_X_REALTIME = 1000.0


def one_core() -> None:
    """Pin this process to CPU 0 and ask every math library for one thread."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def workload(data: Path, tmp: Path) -> Path:
    """A 30 min 2-lead 360 Hz WFDB record: MIT-BIH 101 if present, else synthetic."""
    if (data / "101.hea").exists():
        return data / "101"
    import neurokit2 as nk
    import wfdb

    lead = np.asarray(
        nk.ecg_simulate(duration=1800, sampling_rate=360, heart_rate=72, random_state=0)
    )
    sig = np.stack([lead, 0.6 * lead], axis=1)
    wfdb.wrsamp("synthetic30", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=sig,
                fmt=["16", "16"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp))  # fmt: skip
    return tmp / "synthetic30"


def default_model(tmp: Path) -> Path:
    """An untrained MMAE-ECG of the default training configuration, exported to ONNX."""
    from ecgstream.training.config import TrainConfig
    from ecgstream.training.export import export_onnx
    from ecgstream.training.trainer import build_model, preprocess_config

    cfg = TrainConfig()
    model = build_model(cfg).eval()
    from ecgstream.runtime.model_file import ModelSpec

    spec = ModelSpec(name="mmae-untrained", version="0", kind="mmae", leads=list(cfg.leads), window=cfg.window,
                     hop=cfg.hop, preprocessing=preprocess_config(cfg).to_dict(), params=model.cfg.to_dict())  # fmt: skip
    return export_onnx(model, spec, tmp / "mmae-untrained.onnx")


def time_cli(model: Path, record: Path, out: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``ecgstream score`` in a fresh process on core 0."""
    cmd = [sys.executable, "-m", "ecgstream", "score", "--model", str(model), "--out", str(out),
           "--no-progress", "--threads", "1", str(record)]  # fmt: skip
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times, cpu = [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        if proc.returncode != 0:
            raise RuntimeError(f"ecgstream score failed: {proc.stderr}")
    return times, cpu


#: the steps of ``ecgstream score`` on one record (as in ``Scorer.score_signal``), each timed;
#: run in a fresh process, prints one JSON line of seconds per step
STAGES = """
import time
t0 = time.perf_counter()
import json, sys
import numpy as np
from ecgstream.cli import score
from ecgstream.runtime.scorer import RecordScores, Scorer
from ecgstream.signals.preprocess import preprocess
from ecgstream.signals.records import read_record, select_leads
from ecgstream.signals.windows import frame, overlap_average, to_record_rate, window_starts
t = {"imports_s": time.perf_counter() - t0}
def lap(name, t0=[time.perf_counter()]):
    now = time.perf_counter(); t[name] = now - t0[0]; t0[0] = now
model, path, out = sys.argv[1:4]
scorer = Scorer(model, threads=1); spec = scorer.spec; lap("model_load_s")
rec = read_record(path); sig = select_leads(rec, spec.leads).signal; lap("read_s")
x, delay = preprocess(sig, rec.fs, spec.preprocess_config); lap("preprocess_s")
starts = window_starts(len(x), spec.window, spec.hop); w = frame(x, starts, spec.window); lap("windows_s")
p_raw, w_raw = scorer.score_windows(w); lap("inference_s")
point = to_record_rate(overlap_average(spec.normalise(p_raw), starts, len(x)), spec.fs, rec.fs,
                       len(sig), delay); lap("map_back_s")
RecordScores(rec.name, rec.fs, point, starts, starts, spec.normalise(w_raw)).save_npz(out)
lap("write_s")
t["loaded"] = [m for m in ("scipy.signal", "wfdb", "pandas", "tqdm", "torch", "matplotlib")
               if m in sys.modules]
print(json.dumps(t))
"""


def cli_stages(model: Path, record: Path, out: Path, repeats: int) -> dict:
    """Median seconds per step of ``ecgstream score`` in fresh processes on core 0 (see STAGES)."""
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs, starts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([*taskset, sys.executable, "-c", "pass"], env=env, check=True)
        starts.append(time.perf_counter() - t0)
        proc = subprocess.run(
            [*taskset, sys.executable, "-c", STAGES, str(model), str(record), str(out / "st.npz")],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    stages = {"interpreter_start_s": statistics.median(starts)}
    for key in runs[0]:
        if key.endswith("_s"):
            stages[key] = statistics.median(r[key] for r in runs)
    stages["non_inference_s"] = sum(v for k, v in stages.items() if k != "inference_s")
    stages["modules_loaded"] = runs[0]["loaded"]
    return stages


def time_in_process(
    model: Path, record: Path, repeats: int
) -> tuple[list[float], list[float], dict]:
    """Wall and CPU seconds of ``Scorer.score_record`` (record in memory), and a per-stage split."""
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.preprocess import preprocess
    from ecgstream.signals.records import read_record, select_leads
    from ecgstream.signals.windows import frame, window_starts

    scorer = Scorer(model, threads=1)
    rec = read_record(record)
    scorer.score_record(rec)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scorer.score_record(rec)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # stage split of one run
    spec = scorer.spec
    t0 = time.perf_counter()
    t_read = read_record(record)
    t1 = time.perf_counter()
    x, _ = preprocess(select_leads(t_read, spec.leads).signal, t_read.fs, spec.preprocess_config)
    t2 = time.perf_counter()
    windows = frame(x, window_starts(len(x), spec.window, spec.hop), spec.window)
    scorer.score_windows(windows)
    t3 = time.perf_counter()
    stages = {
        "read_s": t1 - t0,
        "preprocess_s": t2 - t1,
        "inference_s": t3 - t2,
        "n_windows": len(windows),
    }
    return times, cpu, stages


def ort_vs_torch(model: Path, record: Path, repeats: int, batch: int = 64) -> dict:
    """Seconds for all windows of the record through ONNX Runtime and through PyTorch eager."""
    import torch

    from ecgstream.models.mmae import MMAE, MMAEConfig
    from ecgstream.runtime.scorer import Scorer
    from ecgstream.signals.preprocess import preprocess
    from ecgstream.signals.records import read_record
    from ecgstream.signals.windows import frame, window_starts

    torch.set_num_threads(1)
    scorer = Scorer(model, threads=1, batch_size=batch)
    spec = scorer.spec
    if spec.kind == "mmae":  # same graph; weights do not change the cost
        net = MMAE(MMAEConfig.from_dict(spec.params)).eval()
    elif spec.kind == "consensus":
        from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus

        net = SegmentConsensus(ConsensusConfig.from_dict(spec.params)).eval()
    else:
        return {"skipped": f"model kind {spec.kind!r} has no torch counterpart here"}
    rec = read_record(record, spec.leads)
    x, _ = preprocess(rec.signal, rec.fs, spec.preprocess_config)
    windows = frame(x, window_starts(len(x), spec.window, spec.hop), spec.window)
    batches = [windows[i : i + batch] for i in range(0, len(windows), batch)]
    tb = [torch.from_numpy(b) for b in batches]

    def run_ort():
        for b in batches:
            scorer.session.run(None, {"windows": b})

    def run_torch():
        with torch.no_grad():
            for b in tb:
                net(b)

    out = {}
    for name, fn in (("onnxruntime", run_ort), ("torch_eager", run_torch)):
        fn()  # warm-up
        ts, cs = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        out[f"{name}_s"] = statistics.median(ts)
        out[f"{name}_cpu_s"] = statistics.median(cs)
    out.update(
        n_windows=len(windows),
        batch=batch,
        speedup_ort_over_torch=out["torch_eager_s"] / out["onnxruntime_s"],
        speedup_ort_over_torch_cpu=out["torch_eager_cpu_s"] / out["onnxruntime_cpu_s"],
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", type=Path, help="exported .onnx (default: an untrained default MMAE-ECG)"
    )
    ap.add_argument(
        "--data", type=Path, default=DATA, help="folder with MIT-BIH record 101 (else synthetic)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    one_core()
    tmp = Path(tempfile.mkdtemp(prefix="bench_score_"))
    try:
        model = args.model or default_model(tmp)
        record = workload(args.data, tmp)
        from ecgstream.runtime.model_file import read_spec, sha256_of
        from ecgstream.signals.records import read_record

        rec = read_record(record)
        duration = rec.duration_s
        spec = read_spec(model)
        load_before = os.getloadavg()[0]
        cli, cli_cpu = time_cli(model, record, tmp / "out", args.repeats)
        (tmp / "out").mkdir(exist_ok=True)
        stages_cli = cli_stages(model, record, tmp / "out", args.repeats)
        inproc, inproc_cpu, stages = time_in_process(model, record, args.repeats)
        ratio = ort_vs_torch(model, record, args.repeats)
        result = {
            "workload": {
                "record": str(record),
                "duration_s": duration,
                "fs": rec.fs,
                "leads": rec.leads,
            },
            "model": {
                "path": str(model),
                "name": spec.name,
                "kind": spec.kind,
                "window": spec.window,
                "hop": spec.hop,
                "fs": spec.fs,
                "sha256": sha256_of(model),
                "parameters": spec.params.get("parameters"),
            },  # fmt: skip
            "cli_wall_s": {"median": statistics.median(cli), "min": min(cli), "runs": cli},
            "cli_cpu_s": {
                "median": statistics.median(cli_cpu),
                "min": min(cli_cpu),
                "runs": cli_cpu,
            },
            "cli_x_realtime": duration / statistics.median(cli),
            "cli_stages_s": stages_cli,
            "cli_x_realtime_cpu": duration / statistics.median(cli_cpu),
            "in_process_s": {
                "median": statistics.median(inproc),
                "min": min(inproc),
                "runs": inproc,
            },
            "in_process_cpu_s": {"median": statistics.median(inproc_cpu), "runs": inproc_cpu},
            "in_process_x_realtime": duration / statistics.median(inproc),
            "in_process_x_realtime_cpu": duration / statistics.median(inproc_cpu),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "stages_one_run": stages,
            "ort_vs_torch": ratio,
            "target_x_realtime": TARGET_X_REALTIME,
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "cores_used": 1,
            },  # fmt: skip
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(
        f"\necgstream score, 1 core, {duration / 60:.0f} min record (load average "
        f"{load_before:.1f}): end to end {result['cli_wall_s']['median']:.2f} s wall = "
        f"{result['cli_x_realtime']:.0f}x real time, {result['cli_cpu_s']['median']:.2f} s CPU = "
        f"{result['cli_x_realtime_cpu']:.0f}x; in-process {result['in_process_x_realtime']:.0f}x wall, "
        f"{result['in_process_x_realtime_cpu']:.0f}x CPU; target {TARGET_X_REALTIME:.0f}x"
    )
    print(
        "steps of one fresh `ecgstream score` process (median s): "
        + ", ".join(f"{k[:-2]} {v:.3f}" for k, v in stages_cli.items() if k.endswith("_s"))
    )
    if "speedup_ort_over_torch" in ratio:
        print(
            f"ONNX Runtime vs PyTorch eager, same {ratio['n_windows']} windows: "
            f"{ratio['speedup_ort_over_torch']:.2f}x wall, {ratio['speedup_ort_over_torch_cpu']:.2f}x CPU"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
