"""``sparsegap-report DIR [--out OUT] [--metric final|best]``.

Reads every job folder under DIR (a multirun folder, a folder of multiruns, or one run folder),
whatever its state, and writes into DIR/report (or OUT):

- ``results.csv``: one row per job × replica × evaluation (jobs without evaluations: one row);
- ``summary.md``: per method and setting, final / best test latent MCC, dictionary MCC, compute,
  wall time, then every job that did not complete, with its status and error (also printed);
- figures as PNG and PDF: training curves, regime heatmaps, sparsity Pareto plots, and |DᵀD| of
  the learned decoders when jobs differ in their number of latents (App. C);
- ``frontier.md`` and ``frontier_*`` figures: MCC against total FLOPs and wall time with the Pareto
  front and the amortisation gap, when a setting compares several methods (``report/frontier.py``).
- ``width_*`` and ``bias_*`` figures: the MLP width and encoder-bias ablations (App. D, E;
  ``report/ablations.py``) when jobs differ in hidden width or ``encoder.bias``.

Failed or unfinished jobs are listed, never fatal: the exit code is 0 unless DIR holds no job.
Figures and the table use completed jobs only, unless ``--include-unfinished``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from sparsegap.report.ablations import bias_figures, width_figures
from sparsegap.report.aggregate import Row, fmt_l1, summary_rows
from sparsegap.report.collect import Job, all_rows, distinguish, load_jobs, write_csv
from sparsegap.report.frontier import frontier_report
from sparsegap.report.gram import gram_figures


def _pm(value: tuple[float, float]) -> str:
    mean, std = value
    return "–" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def _num(value: float, fmt: str) -> str:
    return "–" if not math.isfinite(value) else format(value, fmt)


def summary_table(rows: list[Row]) -> str:
    header = [
        "scenario", "N", "M", "K", "λ", "method", "jobs", "replicas", "final test latent MCC",
        "best test latent MCC", "caveat", "final dictionary MCC", "train FLOPs/model",
        "wall time (s)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        scenario, n, m, k, l1 = r.setting
        cells = [
            scenario, n, m, k, fmt_l1(l1), r.label, r.jobs, r.replicas,
            _pm(r.final), _pm(r.best), "; ".join(r.caveats) or "–", _pm(r.dictionary),
            _num(r.flops_train, ".3g"),
            _num(r.wall_time_s, ".1f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def problems_table(jobs: list[Job]) -> str:
    bad = [j for j in jobs if not j.finished]
    if not bad:
        return "All jobs completed."
    lines = [
        f"{len(bad)} of {len(jobs)} jobs did not complete:",
        "",
        "| job | status | method | evaluations | last step | overrides | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in bad:
        last = j.evaluations[-1].get("step") if j.evaluations else "–"
        error = (j.error or "").replace("|", "\\|").replace("\n", " ")[:200]
        overrides = " ".join(j.overrides)
        lines.append(
            f"| {j.name} | {j.status} | {j.label} | {len(j.evaluations)} | {last} | "
            f"{overrides} | {error} |"
        )
    return "\n".join(lines)


def make_report(
    root: Path,
    out: Path | None = None,
    metric: str = "final",
    include_unfinished: bool = False,
    figures: bool = True,
) -> dict:
    """Write the report for ``root``; returns what was written (for tests and scripts)."""
    from sparsegap.report import figures as fig

    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    jobs = load_jobs(root)
    if not jobs:
        raise FileNotFoundError(f"no run folders (summary.json / metrics.jsonl) under {root}")
    compared = [j for j in jobs if include_unfinished or j.finished]
    distinguish(compared)  # e.g. two SAE jobs with different lr become "sae lr=…"
    rows = all_rows(jobs)
    write_csv(rows, out / "results.csv")
    used = [j for j in compared if j.evaluations]
    table = summary_table(summary_rows(used))
    problems = problems_table(jobs)
    paths: list[Path] = []
    if figures and used:
        palette = fig.colours([j.label for j in used])
        paths += fig.curve_figures(used, out, palette)
        if len({j.regime for j in used}) > 1:
            for scenario in sorted({str(j.scenario) for j in used}):
                members = [j for j in used if str(j.scenario) == scenario]
                if len({j.regime for j in members}) > 1:
                    stem = f"regimes_{scenario}_{metric}"
                    paths += fig.regime_heatmaps(members, out, metric=metric, stem=stem)
        paths += fig.pareto_figures(used, out, palette)
        paths += fig.gap_figures(used, out)
        paths += gram_figures(used, out)
        paths += width_figures(used, out) + bias_figures(used, out)
        paths += frontier_report(used, out)
    text = (
        f"# sparsegap report: {root}\n\n"
        f"{len(jobs)} jobs, {len(used)} used in the table and figures"
        f"{'' if include_unfinished else ' (completed only)'}.\n"
        "Final = value at the last evaluation; best = maximum over evaluations (per replica); "
        "mean ± std over replicas. Caveat: the runs are much shorter than the paper's, or their "
        "MCC was still rising at the end: those numbers are not converged.\n\n"
        f"{table}\n\n## Jobs that did not complete\n\n{problems}\n"
    )
    (out / "summary.md").write_text(text)
    return {"jobs": jobs, "rows": rows, "out": out, "figures": paths, "text": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sparsegap-report",
        description="Tidy CSV, summary table and figures from sparsegap run folders.",
    )
    parser.add_argument("dir", type=Path, help="a multirun folder, a folder of runs, or one run")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default DIR/report)")
    parser.add_argument(
        "--metric",
        choices=("final", "best"),
        default="final",
        help="test latent MCC used by the regime heatmaps: at the last evaluation, or the best",
    )
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also use the metrics of failed and running jobs in the table and figures",
    )
    parser.add_argument("--no-figures", action="store_true", help="only results.csv and summary.md")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a folder", file=sys.stderr)
        return 2
    from sparsegap.autointerp import report as autointerp

    if autointerp.is_autointerp(args.dir):
        return autointerp.main(args.dir, args.out, not args.no_figures)
    try:
        result = make_report(
            args.dir, args.out, args.metric, args.include_unfinished, not args.no_figures
        )
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["text"])
    out = result["out"]
    print(f"wrote {out / 'results.csv'} ({len(result['rows'])} rows), {out / 'summary.md'}")
    for path in result["figures"]:
        if path.suffix == ".png":
            print(f"figure {path} (+ .pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
