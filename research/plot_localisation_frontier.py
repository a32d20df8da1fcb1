"""Plot every cross-validated DEV variant of the consensus detector: beat AUROC against localisation.

Reads the results of ``research/refiner_cv.py`` (``research/results/refiner_cv*.json``, the
three-fold runs only) and draws each variant's pooled DEV beat AUROC against its localisation
AUROC (the mean of its two seeds), the shipped model marked. Two lines show where a variant would
have to lie for both TEST targets to hold if its TEST figures sat as far below its DEV figures as
the shipped model's do (its DEV row, named ``shipped``, against its recorded TEST figures in
``benchmarks/results/eval_core.json`` and ``localisation_test_40.json``). No TEST record is read.

    python research/plot_localisation_frontier.py --out docs/research/localisation-frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = {"beat": 0.90, "localisation": 0.90}


def shipped_test(folder: Path) -> dict[str, float]:
    """The shipped model's TEST figures as recorded: beats from ``eval_core.json``, localisation
    from its larger draw (``localisation_test_40.json``)."""
    core = json.loads((folder / "eval_core.json").read_text())["mitdb"]["sources"]
    draw = json.loads((folder / "localisation_test_40.json").read_text())["sources"]
    return {
        "beat": core["consensus-mitdb-dev"]["beat"]["auroc"],
        "localisation": draw["consensus-mitdb-mlii"]["localisation"]["auroc"],
    }


def variants(folder: Path) -> list[dict]:
    """``[{name, beat, localisation, file}]`` of every three-fold run, the shared reference
    (no refiner) once."""
    out, seen = [], set()
    for path in sorted(folder.glob("refiner_cv*.json")):
        report = json.loads(path.read_text())
        if len(report.get("folds", [])) != 3:
            continue  # one-fold first looks
        for r in report["results"]:
            key = (r["name"], round(r["beat"], 6))
            if key in seen:
                continue
            seen.add(key)
            loc = sum(r["localisation"]) / len(r["localisation"])
            out.append(
                {"name": r["name"], "beat": r["beat"], "localisation": loc, "file": path.name}
            )
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", type=Path, default=REPO / "research" / "results")
    p.add_argument("--shipped-results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument(
        "--out", type=Path, default=REPO / "docs" / "research" / "localisation-frontier.png"
    )
    args = p.parse_args()

    rows = variants(args.results)
    if not rows:
        raise SystemExit(f"no three-fold refiner_cv*.json results in {args.results}")
    dev = next(r for r in rows if r["name"] == "shipped")  # the shipped configuration's DEV row
    test = shipped_test(args.shipped_results)
    need_beat = TARGET["beat"] + dev["beat"] - test["beat"]
    need_loc = TARGET["localisation"] + dev["localisation"] - test["localisation"]

    fig, ax = plt.subplots(figsize=(8, 5.5))
    left = 0.92  # the few variants that lost more beats are listed, not drawn
    top = sorted(rows, key=lambda r: r["localisation"])[-4:]
    for r in rows:
        if r["beat"] < left:
            continue
        shipped = r["name"] == "shipped"
        ax.scatter(r["beat"], r["localisation"], s=60 if shipped else 22,
                   color="tab:red" if shipped else "tab:blue", zorder=3)  # fmt: skip
        if shipped or r in top or r["name"] == "no refiner":
            ax.annotate(r["name"], (r["beat"], r["localisation"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
    hidden = [r for r in rows if r["beat"] < left]
    if hidden:
        ax.text(left + 0.0005, need_loc - 0.004, "beats below 0.92, not drawn: " + ", ".join(
            f"{r['name']} ({r['beat']:.3f}, {r['localisation']:.3f})" for r in hidden),
            fontsize=7, color="0.3")  # fmt: skip
    right = max(r["beat"] for r in rows) + 0.004
    ax.axvline(need_beat, color="0.4", ls="--", lw=1)
    ax.axhline(need_loc, color="0.4", ls="--", lw=1)
    ax.fill_between([need_beat, right], need_loc, need_loc + 0.012, color="tab:green",
                    alpha=0.15, lw=0)  # fmt: skip
    ax.text(left + 0.0005, need_loc + 0.003,
            "both TEST targets (top right), if the shipped model's\nDEV-TEST gaps carry over",
            fontsize=8, color="tab:green")  # fmt: skip
    ax.set_xlim(left, right)
    ax.set_xlabel("DEV beat AUROC (3-fold cross-validation, pooled)")
    ax.set_ylabel("DEV localisation AUROC (mean of seeds 1, 2)")
    ax.set_title(f"{len(rows)} cross-validated variants: localisation is bought with beats")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{len(rows)} variants; both TEST targets need about DEV beats >= {need_beat:.4f} and "
          f"localisation >= {need_loc:.4f}; wrote {args.out}")  # fmt: skip
    best = max(rows, key=lambda r: r["localisation"])
    print(f"highest localisation: {best['name']} {best['localisation']:.4f} (beats {best['beat']:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
