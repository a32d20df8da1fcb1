"""Cost per 4 s window (ONNX Runtime, one thread, batch 1, best of 5 x 50 runs) of each image head
on the ECG spectrogram, without and with the per-window self-reference, in the same run.

    nice -n 10 python research/image/cost_selfref.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ecgstream.runtime.model_file import ModelSpec
from ecgstream.signals.preprocess import PreprocessConfig
from ecgstream.training.image import ImageConfig, export_detector, fit_image_detector

torch.set_num_threads(1)
rng = np.random.default_rng(0)
wins = rng.normal(size=(64, 1, 400)).astype(np.float32)
x = wins[:1]
with tempfile.TemporaryDirectory() as tmp:
    for kind in ["pbas", "uniad", "onenip"]:
        res = {}
        for sr in (0, 3):
            cfg = ImageConfig(
                kind=kind,
                spec_rows=7,
                encoder_steps=2,
                head_steps=2,
                self_ref_patch=sr,
                self_ref_exclude=8,
            )
            m = fit_image_detector(wins, cfg)
            spec = ModelSpec(
                name="c",
                version="1",
                kind=kind,
                leads=["MLII"],
                window=400,
                hop=200,
                preprocessing=PreprocessConfig(fs=100.0).to_dict(),
                params={**cfg.to_dict(), **m.frontend.params()},
                frontend="spectrogram",
            )
            p = export_detector(m, spec, Path(tmp) / f"{kind}{sr}.onnx")
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            best = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(50):
                    s.run(None, {"windows": x})
                best.append((time.perf_counter() - t) / 50 * 1000)
            res[sr] = (min(best), p.stat().st_size / 1024)
        print(
            f"{kind}: without {res[0][0]:.2f} ms ({res[0][1]:.0f} kB), with self-reference {res[3][0]:.2f} ms ({res[3][1]:.0f} kB)"
        )
