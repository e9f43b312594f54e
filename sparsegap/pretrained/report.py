"""The measurement's outputs in its run folder: results.json, report.md, pareto.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsegap.pretrained.gap import Measured

LABELS = {
    "encoder": "SAE encoder",
    "refit": "NNLS refit on the encoder's support",
    "fista": "FISTA (L1 matched to the encoder's L0)",
    "omp": "OMP (k = encoder's L0)",
    "ito": "ITO: Adam on log-codes, warm-started",
}


def gaps(measured: Measured) -> dict[str, dict[str, float]]:
    """The amortisation gap per method at matched L0: encoder minus method (positive = the
    method reconstructs better), in normalised MSE and, when measured, CE loss."""
    encoder = measured.matched("encoder")
    out: dict[str, dict[str, float]] = {}
    if encoder is None:
        return out
    for method in ("refit", "fista", "omp", "ito"):
        point = measured.matched(method)
        if point is None:
            continue
        row = {
            "normalised_mse": encoder.normalised_mse - point.normalised_mse,
            "l0_method": point.l0,
            "l0_encoder": encoder.l0,
        }
        if "ce_loss" in encoder.lm and "ce_loss" in point.lm:
            row["ce_loss"] = encoder.lm["ce_loss"] - point.lm["ce_loss"]
        out[method] = row
    return out


def write(run_dir: Path, header: dict[str, Any], measured: Measured, lm: dict[str, Any]) -> dict:
    results = {**header, **measured.as_dict(), "gap": gaps(measured), "lm": lm}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "report.md").write_text(markdown(results))
    figure(run_dir / "pareto.png", measured, header.get("sae", ""))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Amortisation gap of {results['sae']}",
        "",
        f"Model `{results['model']}`, hook `{results['hook']}`, {results['tokens']:,} held-out"
        f" tokens, d = {results['dim']}, {results['latents']:,} latents"
        f" ({results['architecture']}).",
        "",
        "| method | budget | L0 | normalised MSE | explained var. | CE loss | KL | CE recovered |"
        " FLOPs/token | µs/token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        lm = p["lm"]
        budget = "" if p["budget"] is None else f"{p['budget']:.4g} (×{p['multiplier']:g})"
        cells = [
            LABELS.get(p["method"], p["method"]) if p["multiplier"] in (None, 1.0) else p["method"],
            budget,
            f"{p['l0']:.2f}",
            f"{p['normalised_mse']:.4f}",
            f"{p['explained_variance']:.4f}",
            *(f"{lm[k]:.4f}" if k in lm else "" for k in ("ce_loss", "kl", "ce_recovered")),
            f"{p['flops_per_token']:.3g}",
            f"{p['seconds_per_token'] * 1e6:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lm = results.get("lm") or {}
    if "clean" in lm:
        lines += [
            "",
            f"Clean CE loss {lm['clean']['ce_loss']:.4f}; with the hook zero-ablated"
            f" {lm['zero_ablation']['ce_loss']:.4f}.",
        ]
    lines += [
        "",
        "## Amortisation gap at matched L0 (encoder − method; > 0: inference is better)",
        "",
    ]
    for method, row in results["gap"].items():
        ce = f", CE loss {row['ce_loss']:+.4f}" if "ce_loss" in row else ""
        lines.append(
            f"- {LABELS[method]}: normalised MSE {row['normalised_mse']:+.4f}{ce}"
            f" (L0 {row['l0_method']:.2f} vs {row['l0_encoder']:.2f})"
        )
    lines += [
        "",
        "Normalised MSE: squared error over the squared deviation from the mean token (0 = exact,"
        " 1 = no better than the mean). Explained variance: 1 − Var(x − x̂)/Var(x). L0: mean"
        " active latents per token. FLOPs: the algorithms' declared counts per token.",
        "",
    ]
    return "\n".join(lines)


def figure(path: Path, measured: Measured, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in ("encoder", "refit", "fista", "omp", "ito"):
        points = sorted((p for p in measured.points if p.method == method), key=lambda p: p.l0)
        if not points:
            continue
        style = "*" if method == "encoder" else "o-"
        ax.plot([p.l0 for p in points], [p.normalised_mse for p in points], style,
                label=LABELS[method], markersize=12 if method == "encoder" else 5)  # fmt: skip
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel("normalised MSE")
    ax.set_yscale("log")
    ax.set_title(title[:80], fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
