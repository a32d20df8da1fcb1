"""PyTorch models (training and export only; serving runs their ONNX graphs without torch).

- :mod:`ecgstream.models.token_core`: the shared token-reconstruction core (masking, encoder,
  decoder, learned queries, neighbour-masked attention, residual score).
- :mod:`ecgstream.models.mmae`: MMAE-ECG, the multi-scale masked autoencoder for ECG windows.
"""

__all__ = ["token_core", "mmae"]
