"""Where results go: ``metrics.jsonl`` + ``summary.json`` in the run folder, and a W&B run.

The two files are the source of truth (tests and the report read them); W&B mirrors them for
dashboards. ``metrics.jsonl`` gets one complete line per evaluation, flushed as written;
``summary.json`` is replaced atomically, is ``running`` from the start, and ends ``completed`` or
``failed`` with the error, so a crash or kill never leaves a half-written file or a run that looks
finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

Value = float | list[float]
Record = dict[str, Value]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one, never
    a partial write (a temporary file in the same folder, fsynced, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    return str(value)


def aggregate(values: list[float]) -> dict[str, Any]:
    """mean, std (sample, 0 for one replica) and the per-replica values of a metric."""
    finite = all(math.isfinite(v) for v in values)
    mean = statistics.fmean(values) if finite else float("nan")
    std = statistics.stdev(values) if finite and len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "replicas": values}


def summarise(record: Record) -> dict[str, Any]:
    """The JSON form of one evaluation: per-replica metrics become {mean, std, replicas}."""
    return {k: aggregate(v) if isinstance(v, list) else v for k, v in record.items()}


class Tracker:
    """One run's outputs. Use as a context manager: it always finishes, marking the run failed
    (and re-raising) when the body raises."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        logger: dict[str, Any] | None = None,
        group: str | None = None,
        name: str | None = None,
        resumed: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.started = time.time()
        self.last: dict[str, Any] | None = None
        self.best: dict[str, float] = {}
        self.wandb_info: dict[str, Any] | None = None
        # A resumed run appends to the lines logged before its checkpoint (see checkpoint.py);
        # any other run in a used folder starts its metrics afresh (no steps logged twice).
        if resumed:
            for line in _lines(self.run_dir / "metrics.jsonl"):
                self._remember(json.loads(line))
        mode = "a" if resumed else "w"
        self._metrics = open(self.run_dir / "metrics.jsonl", mode)  # noqa: SIM115 (closed in finish)
        self._write_summary("running")
        self.wandb_run = self._start_wandb(logger, group, name) if logger else None
        if self.wandb_run is not None:
            self.wandb_info = {
                "id": self.wandb_run.id,
                "group": self.wandb_run.group,
                "name": self.wandb_run.name,
                "mode": logger["mode"],
                "dir": self.wandb_run.dir,
            }
            self._write_summary("running")

    def _start_wandb(self, logger: dict[str, Any], group: str | None, name: str | None) -> Any:
        import wandb

        run = wandb.init(
            project=logger["project"],
            entity=logger.get("entity"),
            group=logger.get("group") or group,
            name=name,
            tags=list(logger.get("tags") or []),
            mode=logger["mode"],
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config=self.config,
            reinit="finish_previous",
        )
        # MCC, loss and L0 plot against both the step and cumulative training compute.
        run.define_metric("step")
        run.define_metric("flops/train_cumulative")
        run.define_metric("*", step_metric="step")
        run.define_metric("vs_flops/*", step_metric="flops/train_cumulative")
        return run

    def log(self, record: Record) -> None:
        entry = summarise(record)
        self._metrics.write(json.dumps(entry) + "\n")
        self._metrics.flush()
        self._remember(entry)
        if self.wandb_run is not None:
            self.wandb_run.log(self._wandb_row(entry))

    def _remember(self, entry: dict[str, Any]) -> None:
        self.last = entry
        for key, value in entry.items():
            mean = value["mean"] if isinstance(value, dict) else value
            if "mcc" in key and isinstance(mean, float) and math.isfinite(mean):
                self.best[key] = max(self.best.get(key, -math.inf), mean)

    def log_histogram(self, key: str, values: Any, step: int) -> None:
        """A distribution (e.g. feature densities, replica 0) to W&B only, on log10 scale
        (zeros at 1e-10); metrics.jsonl keeps scalars."""
        if self.wandb_run is None:
            return
        import numpy as np
        import wandb

        array = np.asarray(values.detach().float().cpu() if hasattr(values, "detach") else values)
        log10 = np.log10(np.maximum(array.reshape(array.shape[0], -1)[0], 1e-10))
        self.wandb_run.log({f"{key}_log10": wandb.Histogram(log10), "step": step})

    @staticmethod
    def _wandb_row(entry: dict[str, Any]) -> dict[str, float]:
        row: dict[str, float] = {}
        for key, value in entry.items():
            if isinstance(value, dict):
                row[key] = value["mean"]
                row[f"{key}_std"] = value["std"]
                for i, v in enumerate(value["replicas"]):
                    row[f"replicas/{key}/{i}"] = v
                if key.startswith(("latent_mcc", "dictionary_mcc", "loss", "l0")):
                    row[f"vs_flops/{key}"] = value["mean"]
            else:
                row[key] = value
        return row

    def _write_summary(self, status: str, error: str | None = None) -> None:
        write_json_atomic(
            self.run_dir / "summary.json",
            {
                "status": status,
                "error": error,
                "wall_time_s": time.time() - self.started,
                "final": self.last,
                "best": self.best,
                "config": self.config,
                "wandb": self.wandb_info,
            },
        )

    def finish(self, error: BaseException | None = None) -> None:
        self._metrics.close()
        status = "completed" if error is None else "failed"
        message = None if error is None else f"{type(error).__name__}: {error}"
        self._write_summary(status, message)
        if self.wandb_run is not None:
            if self.last is not None:
                for key, value in self._wandb_row(self.last).items():
                    self.wandb_run.summary[key] = value
            self.wandb_run.summary["status"] = status
            self.wandb_run.finish(exit_code=0 if error is None else 1)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc)
