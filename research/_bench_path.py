"""Puts ``benchmarks/`` on ``sys.path``: the studies reuse the product benchmarks' workloads.

Imported first by the scripts in ``research/`` (run as ``python research/SCRIPT.py``), before
``from _workload import ...`` and the like.
"""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
