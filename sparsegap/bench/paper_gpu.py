"""The whole paper on one GPU, measured (`make bench-paper-gpu`, or
`python -m sparsegap.bench.paper_gpu`): the one script a short GPU slot runs (≤ 9 minutes on an
H100 at the defaults; every size is a flag).

1. **check**: captured (``device.graph=on``) against uncaptured (``off``) training, both through
   the real entry point, for the SAE, MLP and sparse coding with their hand-written and autograd
   steps and warm-ups of the learning rate and L1 coefficient: every metric at every evaluation
   equal to float tolerance.
2. **steps**: per-step time of each encoder of the ``unknown`` preset (5 replicas, the paper's
   data), uncaptured and captured in the same call, the one-off capture cost, and the time of one
   evaluation both ways (sparse coding's and ITO's 10,000 inference iterations run at every
   evaluation).
3. **sweeps**: the full-length ``unknown`` preset (its 6 encoders × 5 replicas × 40,000 steps)
   and the ``regimes`` K = 3 slice (45 jobs × 30,000 steps), each with k jobs sharing the GPU
   (``hydra/launcher=gpu``, as ``make paper DEVICE=cuda`` runs them) for each k of ``--jobs``,
   timed wall-clock.
4. **projection** of ``make paper DEVICE=cuda`` from those times (``project``).

Prints a table and writes ``paper_gpu.json`` and ``paper_gpu.md`` (for docs/RESULTS.md) under
``--out``. Stops starting new measurements after ``--budget`` seconds. Runs under any Python
whose torch sees CUDA, as ``bench.gpu`` does (.venv's or .bench-site's pure-Python packages).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsegap.bench import gpu  # noqa: F401  (makes the framework's packages importable)

CHECK_CASES = {
    "sae hand-written": ["encoder=sae"],
    "sae autograd": ["encoder=sae", "encoder.fast_step=false"],
    "mlp hand-written": ["encoder=mlp"],
    "mlp autograd": ["encoder=mlp", "encoder.fast_step=false"],
    "sparse_coding hand-written": ["encoder=sparse_coding", "encoder.inference.iterations=50"],
    "sparse_coding autograd": ["encoder=sparse_coding", "encoder.fast_step=false",
                               "encoder.inference.iterations=50"],
}  # fmt: skip
CHECK_COMMON = ["device=cuda", "logger=none", "progress=false", "eval_every=100",
                "device.graph_steps=40", "lr_warmup_steps=7", "l1_warmup_steps=11"]  # fmt: skip
UNKNOWN_ENCODERS = ("sae", "sae_ito", "sae_ito_scratch", "sparse_coding", "mlp", "mlp_256")


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from sparsegap.registry import register_configs

    register_configs()
    with initialize_config_module("sparsegap.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def check(steps: int) -> list[dict[str, Any]]:
    """Captured vs uncaptured training of each ``CHECK_CASES`` case: the largest relative
    difference of any metric of any replica at any evaluation, and whether all are equal to
    rel 1e-4 / abs 1e-5."""
    from sparsegap.__main__ import run

    rows = []
    for label, overrides in CHECK_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("on", "off"):
                cfg = compose([*CHECK_COMMON, f"steps={steps}", *overrides, f"device.graph={mode}"])
                run(cfg, Path(tmp) / mode)
            captured, plain = _records(Path(tmp) / "on"), _records(Path(tmp) / "off")
        worst, equal = 0.0, len(captured) == len(plain)
        for a, b in zip(captured, plain, strict=False):
            for key, value in a.items():
                if not isinstance(value, dict) or key == "wall_time_s":
                    continue
                for x, y in zip(value["replicas"], b[key]["replicas"], strict=True):
                    worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
                    equal &= math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
        rows.append({"case": label, "max_rel_diff": worst, "equal": equal})
        print(f"check  {label:28s} max rel diff {worst:.2e}  {'ok' if equal else 'DIFFERENT'}")
    return rows


def _sync_time(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def step_times(encoders: tuple[str, ...], steps: int) -> list[dict[str, Any]]:
    """Per encoder of the ``unknown`` preset: ms per step uncaptured and captured (the same
    process, the same steps, taken ``eval_every`` at a time as the loop takes them), the extra
    seconds of the first two captured calls (warm-up and the capture of each graph length), and
    one evaluation's seconds."""
    from sparsegap.evaluate import evaluate
    from sparsegap.model import build
    from sparsegap.step import make_step, runner

    rows = []
    for encoder in encoders:
        row: dict[str, Any] = {"encoder": encoder}
        for mode in ("off", "on"):
            cfg = compose(["+experiment=unknown", f"encoder={encoder}", "device=cuda",
                           "logger=none", f"device.graph={mode}"])  # fmt: skip
            model = build(cfg)
            trainer = make_step(model)
            run_steps, every = runner(trainer), cfg.eval_every
            chunks = max(1, steps // every)
            first = _sync_time(lambda: [run_steps(every) for _ in range(2)])  # noqa: B023
            seconds = _sync_time(lambda: [run_steps(every) for _ in range(chunks)])  # noqa: B023
            per_step = seconds / (chunks * every)
            row[f"ms_per_step_{mode}"] = 1e3 * per_step
            if mode == "on":
                row["capture_s"] = first - 2 * every * per_step
            flops = model.train_step_flops()
            evaluation = lambda: evaluate(model, 0, flops, 0.0, trainer)  # noqa: B023, E731
            evaluation()  # the first may pay for lazy initialisation
            row[f"eval_s_{mode}"] = _sync_time(evaluation)
        row["speedup"] = row["ms_per_step_off"] / row["ms_per_step_on"]
        rows.append(row)
        print(f"steps  {encoder:16s} {row['ms_per_step_off']:.3f} → {row['ms_per_step_on']:.3f}"
              f" ms/step (×{row['speedup']:.1f}), capture {row['capture_s']:.2f} s,"
              f" one evaluation {row['eval_s_off']:.3f} → {row['eval_s_on']:.3f} s")  # fmt: skip
    return rows


def sweep(
    name: str, overrides: list[str], jobs: int, out: Path, wandb: bool, timeout: float
) -> dict[str, Any]:
    """One preset's multirun as ``make paper DEVICE=cuda`` launches it, timed wall-clock (killed
    after ``timeout`` seconds: then it is reported as such, not timed)."""
    from sparsegap.report.reproduction import launch

    folder = out / f"{name}-k{jobs}"
    shutil.rmtree(folder, ignore_errors=True)  # skip_completed would skip a rerun's jobs
    command = [sys.executable, "-m", "sparsegap", "-m", *overrides, *launch("cuda", jobs),
               f"hydra.sweep.dir={folder}", *([] if wandb else ["logger=none"])]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, check=False, timeout=timeout
        )
        code, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired as expired:
        code, stderr = -1, f"killed after {timeout:.0f} s: {expired.stderr!r:.2000}"
    seconds = time.perf_counter() - start
    summaries = [json.loads(p.read_text()) for p in folder.glob("*/summary.json")]
    done = sum(s.get("status") == "completed" for s in summaries)
    row = {"sweep": name, "jobs_per_gpu": jobs, "seconds": seconds, "completed": done,
           "jobs": len(summaries), "exit": code}  # fmt: skip
    if code != 0:
        row["stderr_tail"] = stderr[-2000:]
    print(f"sweep  {name:16s} k={jobs}: {seconds:.1f} s, {done}/{len(summaries)} jobs completed")
    return row


def project(measured: dict[str, float]) -> list[dict[str, Any]]:
    """Seconds of every preset of ``make paper DEVICE=cuda``: measured where ``measured`` has
    the preset (``regimes``: its K = 3 slice × 3), else the ``unknown`` preset's seconds per job
    and step scaled by the preset's jobs × steps (evaluation cost scales with steps too, at the
    same ``eval_every`` for most presets — a projection, not a measurement)."""
    from sparsegap.report.reproduction import PRESETS

    by_name = {p.name: p for p in PRESETS}
    unknown = by_name["unknown"]
    rate = measured["unknown"] / (unknown.jobs * unknown.steps)
    rows = []
    for preset in PRESETS:
        if preset.name == "regimes" and "regimes_k3" in measured:
            seconds, how = 3 * measured["regimes_k3"], "measured K = 3 slice × 3"
        elif preset.name in measured:
            seconds, how = measured[preset.name], "measured"
        else:
            seconds, how = rate * preset.jobs * preset.steps, "unknown's rate × jobs × steps"
        rows.append({"preset": preset.name, "seconds": seconds, "how": how})
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown tables for docs/RESULTS.md."""
    lines = [f"Device: {result['device']}; torch {result['torch']}.", ""]
    if result.get("check"):
        lines += ["| check: captured vs uncaptured | max rel diff | equal |", "|---|---|---|"]
        lines += [f"| {r['case']} | {r['max_rel_diff']:.1e} | {'yes' if r['equal'] else '**no**'} |"
                  for r in result["check"]]  # fmt: skip
        lines.append("")
    if result.get("steps"):
        lines += ["| encoder (unknown, 5 replicas) | ms/step uncaptured | ms/step captured | ×"
                  " | capture s | one evaluation s, uncaptured → captured |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['encoder']} | {r['ms_per_step_off']:.3f} | {r['ms_per_step_on']:.3f} | "
                  f"{r['speedup']:.1f} | {r['capture_s']:.2f} | "
                  f"{r['eval_s_off']:.3f} → {r['eval_s_on']:.3f} |"
                  for r in result["steps"]]  # fmt: skip
        lines.append("")
    if result.get("sweeps"):
        lines += ["| sweep | jobs per GPU | wall s | completed |", "|---|---|---|---|"]
        lines += [f"| {r['sweep']} | {r['jobs_per_gpu']} | {r['seconds']:.1f} | "
                  f"{r['completed']}/{r['jobs']} |" for r in result["sweeps"]]  # fmt: skip
        lines.append("")
    if result.get("projection"):
        total = sum(r["seconds"] for r in result["projection"])
        lines += ["| preset | s | how |", "|---|---|---|"]
        lines += [f"| {r['preset']} | {r['seconds']:.0f} | {r['how']} |"
                  for r in result["projection"]]  # fmt: skip
        lines += [f"| **make paper DEVICE=cuda** | **{total:.0f}** ({total / 60:.1f} min) | |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsegap.bench.paper_gpu",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--check-steps", type=int, default=230, help="steps of each check run")
    parser.add_argument("--time-steps", type=int, default=2000, help="timed steps per encoder")
    parser.add_argument("--unknown-steps", type=int, default=40_000, help="unknown's steps")
    parser.add_argument("--regimes-steps", type=int, default=30_000, help="regimes' steps")
    parser.add_argument("--jobs", default="4,8", help="jobs per GPU to time the sweeps with")
    parser.add_argument("--skip", default="", help="parts to leave out: check,steps,sweeps")
    parser.add_argument("--wandb", action="store_true", help="sweeps log to W&B offline too")
    parser.add_argument("--budget", type=float, default=480, help="seconds; then stop starting")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-paper-gpu"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("paper_gpu: needs a CUDA GPU (torch sees none here)", file=sys.stderr)
        return 2
    started, skip = time.perf_counter(), set(args.skip.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def left(what: str) -> float:
        seconds = args.budget - (time.perf_counter() - started)
        if seconds <= 0:
            print(f"budget spent: {what} not started")
        return seconds

    if "check" not in skip:
        result["check"] = check(args.check_steps)
    if "steps" not in skip and left("steps") > 0:
        result["steps"] = step_times(UNKNOWN_ENCODERS, args.time_steps)
    measured: dict[str, float] = {}
    if "sweeps" not in skip:
        result["sweeps"] = []
        unknown = ["+experiment=unknown", f"steps={args.unknown_steps}"]
        regimes = ["+experiment=regimes", "data.K=3", f"steps={args.regimes_steps}"]
        plan = [("unknown", unknown, len(UNKNOWN_ENCODERS))]
        plan += [("regimes_k3", regimes, int(k)) for k in args.jobs.split(",")]
        full = args.unknown_steps == 40_000 and args.regimes_steps == 30_000
        for name, overrides, k in plan:
            seconds = left(f"{name} k={k}")
            if seconds > 0:
                row = sweep(name, overrides, k, args.out, args.wandb, max(seconds, 60))
                result["sweeps"].append(row)
                if row["exit"] == 0 and full:  # the paper's lengths: they project the paper
                    measured[name] = min(measured.get(name, math.inf), row["seconds"])
    if "unknown" in measured:
        result["projection"] = project(measured)
        total = sum(r["seconds"] for r in result["projection"])
        print(f"projected make paper DEVICE=cuda: {total:.0f} s ({total / 60:.1f} min)")
    result["seconds"] = time.perf_counter() - started
    (args.out / "paper_gpu.json").write_text(json.dumps(result, indent=1))
    (args.out / "paper_gpu.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'paper_gpu.json'} and paper_gpu.md in {result['seconds']:.0f} s")
    checks_ok = all(r["equal"] for r in result.get("check", []))
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
