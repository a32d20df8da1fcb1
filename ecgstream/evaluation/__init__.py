"""Evaluation: fixed splits, rank metrics, a PCA reference model, plots and the evaluation protocol.

Submodules are imported on use (``from ecgstream.evaluation.metrics import auroc``) so that
importing the package stays cheap.
"""

__all__ = ["splits", "metrics", "baselines", "plots", "protocol"]
