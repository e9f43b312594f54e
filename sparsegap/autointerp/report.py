"""The autointerp report: F1 (and balanced accuracy) distributions per encoder, bootstrap 95 %
confidence intervals of the mean, and a table of every feature with its explanation and score.

Reads every autointerp output folder (one holding ``autointerp.json``) under the root — one run,
or e.g. a multirun over an SAE and an MLP run — and writes into ``<root>/report/`` (or ``out``):
``summary.md``, ``features.csv`` and ``f1_by_encoder.{png,pdf}``, each replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsegap.tracking import write_text_atomic

SUMMARY, FEATURES = "autointerp.json", "features.jsonl"
_PRUNE = {"report", "wandb", "llm_cache", ".hydra", "__pycache__"}
METRICS = ("f1", "balanced_accuracy")


def output_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold an autointerp output."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _PRUNE)
        if SUMMARY in files:
            found.append(Path(folder))
    return found


def is_autointerp(root: Path) -> bool:
    return bool(output_dirs(Path(root)))


@dataclass
class Output:
    path: Path
    summary: dict[str, Any]
    features: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return str(self.summary.get("label") or self.path.name)


def load_outputs(root: Path) -> list[Output]:
    outputs = []
    for path in output_dirs(root):
        summary = json.loads((path / SUMMARY).read_text())
        lines = (path / FEATURES).read_text().splitlines() if (path / FEATURES).is_file() else []
        outputs.append(Output(path, summary, [json.loads(line) for line in lines if line]))
    return outputs


def bootstrap_ci(
    values: list[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    if not values:
        return (math.nan, math.nan)
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _scores(outputs: list[Output]) -> dict[str, dict[str, list[float]]]:
    by: dict[str, dict[str, list[float]]] = {}
    for o in outputs:
        entry = by.setdefault(o.label, {m: [] for m in METRICS})
        for r in o.features:
            if r.get("metrics"):
                for m in METRICS:
                    entry[m].append(r["metrics"][m])
    return by


def encoder_table(outputs: list[Output]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    scores = _scores(outputs)
    for label, values in scores.items():
        mine = [o for o in outputs if o.label == label]
        failures: dict[str, int] = {}
        for o in mine:
            for kind in ("explanation_failures", "scoring_failures"):
                for k, n in (o.summary.get(kind) or {}).items():
                    failures[k] = failures.get(k, 0) + n
        row: dict[str, Any] = {
            "encoder": label,
            "runs": len(mine),
            "features": sum(len(o.features) for o in mine),
            "scored": len(values["f1"]),
            "failures": failures,
        }
        for m in METRICS:
            v = values[m]
            row[m] = (float(np.mean(v)) if v else math.nan, *bootstrap_ci(v))
            row[f"{m}_median"] = float(np.median(v)) if v else math.nan
        rows.append(row)
    header = (
        "| encoder | runs | features | scored | failures | mean F1 [95 % CI] | median F1 |"
        " mean balanced accuracy [95 % CI] |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fails = ", ".join(f"{k} {n}" for k, n in sorted(r["failures"].items())) or "none"
        lines.append(
            f"| {r['encoder']} | {r['runs']} | {r['features']} | {r['scored']} | {fails} | "
            f"{_ci(r['f1'])} | {r['f1_median']:.3f} | {_ci(r['balanced_accuracy'])} |"
        )
    return "\n".join(lines), rows


def _ci(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    return "–" if math.isnan(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def feature_rows(outputs: list[Output]) -> list[dict[str, Any]]:
    rows = []
    for o in outputs:
        for r in o.features:
            m = r.get("metrics") or {}
            rows.append(
                {
                    "encoder": o.label,
                    "feature": r["feature"],
                    "explanation": r.get("explanation"),
                    "f1": m.get("f1"),
                    "balanced_accuracy": m.get("balanced_accuracy"),
                    "precision": m.get("precision"),
                    "recall": m.get("recall"),
                    "error": r.get("explanation_error") or r.get("score_error"),
                    "run": str(o.path),
                }
            )
    return rows


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def features_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| encoder | feature | explanation | F1 | balanced accuracy | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['feature']} | {_cell(r['explanation'] or '–')[:200]} | "
            f"{_num(r['f1'])} | {_num(r['balanced_accuracy'])} | {r['error'] or ''} |"
        )
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["encoder", "feature", "explanation", "f1", "balanced_accuracy", "precision",
               "recall", "error", "run"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def distribution_figure(outputs: list[Output], out: Path) -> list[Path]:
    """Violin + strip plot of F1 and balanced accuracy per encoder (paper Fig. 7), PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = {k: v for k, v in _scores(outputs).items() if v["f1"]}
    if not scores:
        return []
    labels = sorted(scores)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.5 * len(labels), 3.5))
    rng = np.random.default_rng(0)
    for ax, metric, chance in zip(axes, METRICS, (2 / 3, 0.5), strict=True):
        data = [scores[label][metric] for label in labels]
        positions = np.arange(1, len(labels) + 1)
        ax.violinplot(data, positions, showmeans=False, showextrema=False)
        for x, values in zip(positions, data, strict=True):
            jitter = rng.uniform(-0.12, 0.12, len(values))
            ax.scatter(x + jitter, values, s=8, alpha=0.6, color="black", zorder=3)
            mean, low, high = float(np.mean(values)), *bootstrap_ci(values)
            ax.errorbar(x + 0.25, mean, yerr=[[mean - low], [high - mean]], fmt="o", color="C3",
                        capsize=3, zorder=4)  # fmt: skip
        ax.axhline(chance, ls=":", color="grey", lw=1)
        ax.set_xticks(positions, labels)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("F1" if metric == "f1" else metric.replace("_", " "))
    axes[0].set_title("F1 (red: mean, 95 % CI; dotted: always yes)", fontsize=9)
    axes[1].set_title("balanced accuracy (dotted: chance)", fontsize=9)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150)
        path = out / f"f1_by_encoder.{ext}"
        write_text_atomic(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def make_report(root: Path, out: Path | None = None, figures: bool = True) -> dict[str, Any]:
    """Write the report of every autointerp output under ``root``; returns what was written."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    outputs = load_outputs(root)
    if not outputs:
        raise FileNotFoundError(f"no autointerp output ({SUMMARY}) under {root}")
    table, encoders = encoder_table(outputs)
    rows = feature_rows(outputs)
    unfinished = [o for o in outputs if o.summary.get("status") != "completed"]
    problems = "\n".join(
        f"- {o.path}: {o.summary.get('status')} {o.summary.get('error') or ''}" for o in unfinished
    )
    usage = [o.summary.get("llm_usage") for o in outputs if o.summary.get("llm_usage")]
    cost = sum(u["cost_usd"] for u in usage)
    requests = sum(u["http_requests"] for u in usage)
    overview = (
        f"# sparsegap autointerp report: {root}\n\n"
        f"{len(outputs)} autointerp runs. F1 and balanced accuracy over each feature's held-out"
        " scoring examples; mean with a 95 % bootstrap confidence interval. An always-yes"
        " labeller scores F1 0.667 and balanced accuracy 0.5 with equal positives and"
        " negatives.\n\n"
        f"{table}\n\n"
        + (f"LLM: {requests} HTTP requests, cost ${cost:.4f}.\n\n" if usage else "")
        + ("## Runs that did not complete\n\n" + problems + "\n\n" if unfinished else "")
    )
    text = f"{overview}## Features\n\n{features_table(rows)}\n"
    write_text_atomic(out / "summary.md", text)
    write_text_atomic(out / "features.csv", _csv(rows))
    paths = distribution_figure(outputs, out) if figures else []
    return {"outputs": outputs, "encoders": encoders, "rows": rows, "out": out,
            "figures": paths, "text": text, "overview": overview}  # fmt: skip


def main(root: Path, out: Path | None = None, figures: bool = True) -> int:
    """``sparsegap-report <autointerp folder>``: prints the per-encoder table; exit code 0."""
    result = make_report(root, out, figures)
    print(result["overview"], end="")
    out = result["out"]
    print(f"wrote {out / 'summary.md'} (with every feature), {out / 'features.csv'}")
    for path in result["figures"]:
        if path.suffix == ".png":
            print(f"figure {path} (+ .pdf)")
    return 0
