"""Design study: the consensus graph split so that a window reuses the previous window's sorts.

Windows are 10 s every 5 s, so 43 of a window's 93 segments (and 22 of its 47 noise-floor
segments) are the previous window's; sorting them is most of the graph's time. This study
exports, from the model file's own configuration, two graphs that together compute the full
graph: ``describe`` (sort the segments that start in the window's last hop, and their noise
floors) and ``score`` (everything after the sorts, from all 93 sorted segments and 47 floors).
It checks that describe + score give the same scores as the shipped graph (ONNX Runtime, bit
for bit) and times, in one run, the full graph against describe on the new segments plus score
with the previous window's descriptors supplied (as a worker keeping them per stream would).

Not used by ecgstream: it measures what the split would save before the model format changes.
Needs the ``train`` extra (torch). Consensus models with a noise floor of every 2nd segment,
no population or level term and no erosion (the shipped MIT-BIH model) only.

    python research/study_split_graph.py --repeats 7
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _bench_path  # noqa: F401  (puts benchmarks/ on sys.path)
import numpy as np
from bench_graph import windows_for  # benchmarks/ is on sys.path (_bench_path)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=REPO / "models" / "consensus-mitdb-mlii.onnx")
    p.add_argument("--windows", type=int, default=800)
    p.add_argument("--batch", type=int, default=400, help="windows per ONNX Runtime call")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import onnxruntime as ort
    import torch

    from ecgstream.models.consensus import ConsensusConfig, SegmentConsensus
    from ecgstream.models.consensus.descriptor import centred, deviation, median_over_segments
    from ecgstream.models.consensus.descriptor import frames as _frames
    from ecgstream.runtime.model_file import read_spec

    spec = read_spec(args.model)
    cfg = ConsensusConfig.from_dict(spec.params)
    if not (cfg.noise_every == 2 and cfg.population_components == 0 and cfg.reference_size == 0):
        raise SystemExit(f"{args.model}: this study covers the shipped MIT-BIH configuration only")
    m = SegmentConsensus(cfg).eval()
    n, seg_len, stride = cfg.n_segments, cfg.segment, cfg.stride
    reuse = n - spec.hop // stride  # segments a window shares with the previous one
    new = n - reuse
    span = (new - 1) * stride + seg_len  # samples at the end of a window the new segments need

    class Describe(torch.nn.Module):
        def forward(self, x):
            seg = _frames(x, seg_len, stride, new)
            return torch.sort(seg, dim=-1).values, m.noise.floor(seg[:, :, reuse % 2 :: 2])

    class Score(torch.nn.Module):
        def forward(self, ordered, floors):
            level = centred(ordered)
            seg_score = deviation(level, m.level_consensus(level))
            dev = deviation(floors, median_over_segments(floors, floors.shape[2]))
            left, right = dev.index_select(1, m.noise.left), dev.index_select(1, m.noise.right)
            seg_score = seg_score + cfg.noise_weight * (left + m.noise.frac * (right - left))
            point = m.spread(seg_score)
            return point, m.window_score(point)

    x = windows_for(args.model, args.windows).astype(np.float32)
    tx = torch.from_numpy(x)
    tmp = Path(tempfile.mkdtemp())
    with torch.no_grad():
        seg = m.segments(tx)
        ordered = torch.sort(seg, -1).values
        floors = m.noise.floor(seg.index_select(2, m.noise.sub))
        dyn = {0: "windows"}
        torch.onnx.export(
            Describe(), (tx[:4, :, -span:],), tmp / "describe.onnx", input_names=["span"],
            output_names=["ordered", "floors"], opset_version=17, dynamo=False,
            dynamic_axes={"span": dyn, "ordered": dyn, "floors": dyn},
        )  # fmt: skip
        torch.onnx.export(
            Score(), (ordered[:4], floors[:4]), tmp / "score.onnx",
            input_names=["ordered", "floors"], output_names=["point", "window"],
            opset_version=17, dynamo=False,
            dynamic_axes={"ordered": dyn, "floors": dyn, "point": dyn, "window": dyn},
        )  # fmt: skip

    def session(path: Path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    full, describe, score = (
        session(p) for p in (args.model, tmp / "describe.onnx", tmp / "score.onnx")
    )
    name = full.get_inputs()[0].name
    cached_o = ordered.numpy()[:, :, :reuse]  # what the previous window would have left
    cached_f = floors.numpy()[:, :, : (reuse + 1) // 2]  # the floors of even segments < reuse
    times: dict[str, list[float]] = {"full graph": [], "describe new + score": []}
    worst = 0.0
    for _ in range(args.repeats):
        for i in range(0, len(x), args.batch):
            xb = x[i : i + args.batch]
            t = time.perf_counter()
            p_full, w_full = full.run(["point_score", "window_score"], {name: xb})
            times["full graph"].append((time.perf_counter() - t) / len(xb))
            t = time.perf_counter()
            o_new, f_new = describe.run(None, {"span": np.ascontiguousarray(xb[..., -span:])})
            o = np.concatenate([cached_o[i : i + len(xb)], o_new], axis=2)
            f = np.concatenate([cached_f[i : i + len(xb)], f_new], axis=2)
            p_split, w_split = score.run(None, {"ordered": o, "floors": f})
            times["describe new + score"].append((time.perf_counter() - t) / len(xb))
            worst = max(
                worst, float(np.abs(p_split - p_full).max()), float(np.abs(w_split - w_full).max())
            )
    print(
        f"segments per window {n}: {reuse} reused, {new} sorted anew; largest score difference {worst:g}"
    )
    ref = float(np.median(times["full graph"]))
    for k, v in times.items():
        med = float(np.median(v))
        print(f"{k}: {med * 1e6:.0f} us per window, x{med / ref:.2f}")


if __name__ == "__main__":
    main()
