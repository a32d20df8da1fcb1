"""Evaluation: fixed splits and folds, rank metrics, reference models (PCA, segment energy), plots,
the evaluation protocol and its cross-validation.

Submodules are imported on use (``from ecgstream.evaluation.metrics import auroc``) so that
importing the package stays cheap.
"""

__all__ = ["splits", "metrics", "baselines", "plots", "protocol", "crossval"]
