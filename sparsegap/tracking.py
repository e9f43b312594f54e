"""Where results go: ``metrics.jsonl`` + ``summary.json`` in the run folder, and a W&B run.

The two files are the source of truth (tests and the report read them); W&B mirrors them for
dashboards. ``metrics.jsonl`` gets one complete line per evaluation, flushed as written;
``summary.json`` is replaced atomically, is ``running`` from the start, and ends ``completed`` or
``failed`` with the error, so a crash or kill never leaves a half-written file or a run that looks
finished.

A run folder holds one run at a time: a run holds the folder's lock (``hold``) while it writes,
and a run that does not continue the folder's earlier run removes that run's outputs first
(``clear_outputs``). ``holder`` tells a live run from one killed without a chance to say so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsegap.errors import RunRefused

Value = float | list[float]
Record = dict[str, Value]


LOCK_FILE = ".run.lock"
# What a run writes into its folder; a run that does not continue the folder's earlier run
# removes them first. ("checkpoint" is checkpoint.FOLDER.)
OUTPUTS = (
    "summary.json", "metrics.jsonl", "model.pt", "checkpoint", ".hydra", "wandb",
    ".summary.json.reserve",
)  # fmt: skip
# What W&B's summary keeps of a metric besides its last value: the best over training (a run's
# MCC can peak before its last evaluation). Matched on the key's start; keys not listed keep
# their last value only.
SUMMARIES = {
    "latent_mcc": "max,last",
    "dictionary_mcc": "max,last",
    "normalised_mse": "min,last",
    "loss/": "min,last",
}
# Room kept on disk for the final summary, so a full disk can still record why the run failed.
_SUMMARY_RESERVE_BYTES = 256 * 1024


class FolderInUse(RunRefused):
    """Another live process holds the run folder's lock."""


_held: dict[str, list[int]] = {}  # folder → [lock file descriptor, depth] held by this process


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (re-entrant within a process); raises
    ``FolderInUse`` when another process holds it.

    An ``flock`` on ``.run.lock``: the kernel drops it when the process ends, however it ends
    (``kill -9`` included), so a killed run never leaves its folder stuck. The holder's pid is
    written into the file for the error message."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    for _ in range(25):  # rides out holder()'s brief shared lock (a report reading the folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.02)
    else:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(
            f"hydra.run.dir={str(run_dir)!r} is in use by another run (pid {pid}); wait for it"
            " to finish, or choose another folder (hydra.run.dir=... or hydra.sweep.dir=...)"
        )
    with contextlib.suppress(OSError):  # the pid is informative only (the disk may be full)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            os.close(fd)  # releases the lock


def holder(run_dir: Path) -> int | None:
    """The pid of the live process holding ``run_dir``'s lock (-1 when unknown), or None when
    no process holds it: a ``running`` summary then belongs to a run that was killed."""
    run_dir = Path(run_dir)
    if str(run_dir.resolve()) in _held:
        return os.getpid()
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def clear_outputs(run_dir: Path) -> None:
    """Remove an earlier run's outputs from ``run_dir`` (only the names in ``OUTPUTS``: the
    folder may be one the user also keeps other files in)."""
    for name in OUTPUTS:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def holds_outputs(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's outputs."""
    return any((Path(run_dir) / name).exists() for name in OUTPUTS)


class _Lines:
    """An append-only file of whole lines: a line that cannot be written completely (a full
    disk) is cut back off, so every line on disk is whole. Unbuffered: nothing is left to
    flush (or to fail) at close."""

    def __init__(self, path: Path, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self.fd: int | None = os.open(path, flags, 0o644)

    def write(self, line: str) -> None:
        assert self.fd is not None
        data = line.encode()
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)  # frees blocks: possible on a full disk
            raise

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _reserve(path: Path) -> int | None:
    """Preallocate ``path`` (the next summary's temporary file); None where the file system
    cannot (then the final summary is written like any other)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, _SUMMARY_RESERVE_BYTES)
        return fd
    except (OSError, AttributeError):
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None


def _write_reserved(fd: int, tmp: Path, path: Path, data: bytes) -> None:
    """Write ``data`` into the preallocated ``tmp`` and rename it to ``path``: atomic, and
    within the reserve it needs no new disk space."""
    try:
        view, offset = memoryview(data), 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=_jsonable))


def write_text_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one, never
    a partial write (a temporary file in the same folder, fsynced, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Not mkstemp: its 0600 would make the replaced file private; this honours the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    (and re-raising) when the body raises.

    It holds the folder's lock from start to finish. A run that does not continue the folder's
    earlier run (``resumed``) removes that run's outputs before writing; ``files`` (path relative
    to the folder → text, e.g. Hydra's ``.hydra/*.yaml``) are written after that, so every file
    in the folder describes this run."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        logger: dict[str, Any] | None = None,
        group: str | None = None,
        name: str | None = None,
        resumed: bool = False,
        files: Mapping[str, str] | None = None,
        job_type: str = "train",
        tags: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.started = time.time()
        self.last: dict[str, Any] | None = None
        self.best: dict[str, float] = {}
        self.wandb_info: dict[str, Any] | None = None
        self.wandb_run: Any = None
        self._summarised: set[str] = set()  # keys with a W&B summary rule (SUMMARIES)
        self._metrics: _Lines | None = None
        self._reserve: int | None = None
        self._finished = False
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(hold(self.run_dir))
        try:
            if not resumed:
                clear_outputs(self.run_dir)
            for relative, text in (files or {}).items():
                write_text_atomic(self.run_dir / relative, text)
            # A resumed run appends to the lines logged before its checkpoint (see
            # checkpoint.py); any other run starts its metrics afresh (no steps logged twice).
            if resumed:
                for line in _lines(self.run_dir / "metrics.jsonl"):
                    self._remember(json.loads(line))
            self._metrics = _Lines(self.run_dir / "metrics.jsonl", append=resumed)
            self._write_summary("running")
            self._reserve = _reserve(self.run_dir / ".summary.json.reserve")
        except BaseException:
            if self._metrics is not None:
                self._metrics.close()
            self._lock.close()
            raise
        try:
            if logger:
                self.wandb_run = self._start_wandb(logger, group, name, job_type, tags)
            if self.wandb_run is not None:
                self.wandb_info = {
                    "id": self.wandb_run.id,
                    "group": self.wandb_run.group,
                    "name": self.wandb_run.name,
                    "mode": logger["mode"],  # type: ignore[index]
                    "dir": self.wandb_run.dir,
                }
                self._write_summary("running")
        except BaseException as error:
            self.finish(error)  # the summary says why: it must not stay "running"
            raise

    def _start_wandb(
        self,
        logger: dict[str, Any],
        group: str | None,
        name: str | None,
        job_type: str,
        tags: Sequence[str],
    ) -> Any:
        import wandb

        try:
            run = wandb.init(
                project=logger["project"],
                entity=logger.get("entity"),
                group=logger.get("group") or group,
                name=name,
                tags=list(dict.fromkeys([*tags, *(logger.get("tags") or [])])),
                job_type=job_type,
                mode=logger["mode"],
                dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
                config=self.config,
                reinit="finish_previous",
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as error:
            # Online without credentials: one line before any training, not W&B's traceback.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "no W&B login"
            raise RunRefused(
                f"logger.mode={logger['mode']} is invalid here: {reason} Log in (`wandb login`"
                " or WANDB_API_KEY), or use logger.mode=offline and `wandb sync` later"
            ) from None
        # MCC, loss and L0 plot against both the step and cumulative training compute.
        run.define_metric("step")
        run.define_metric("flops/train_cumulative")
        run.define_metric("*", step_metric="step")
        run.define_metric("vs_flops/*", step_metric="flops/train_cumulative")
        return run

    def log(self, record: Record) -> None:
        assert self._metrics is not None
        entry = summarise(record)
        self._metrics.write(json.dumps(entry) + "\n")
        self._remember(entry)
        if self.wandb_run is not None:
            row = self._wandb_row(entry)
            self._define_summaries(row)
            self.wandb_run.log(row)

    def _define_summaries(self, row: Mapping[str, Any]) -> None:
        """Give each new key its summary rule (SUMMARIES). W&B applies a summary rule only to a
        metric defined by its full name (a glob's rule is ignored), hence one per key."""
        for key in row:
            if key.endswith("_std"):  # the spread across replicas has no best
                continue
            rule = next((r for start, r in SUMMARIES.items() if key.startswith(start)), None)
            if rule is not None and key not in self._summarised:
                self.wandb_run.define_metric(key, step_metric="step", summary=rule)
                self._summarised.add(key)

    def log_artifact(self, paths: Sequence[Path], kind: str = "model") -> None:
        """The files ``paths`` as one W&B artifact of the run, ``<kind>-<run id>`` (offline runs
        keep it for ``wandb sync``); nothing without a W&B run."""
        if self.wandb_run is None:
            return
        import wandb

        artifact = wandb.Artifact(f"{kind}-{self.wandb_run.id}", type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self.wandb_run.log_artifact(artifact)

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

    def _summary(self, status: str, error: str | None, full: bool = True) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "status": status,
            "error": error,
            "wall_time_s": time.time() - self.started,
        }
        if full:
            summary |= {
                "final": self.last,
                "best": self.best,
                "config": self.config,
                "wandb": self.wandb_info,
            }
        return summary

    def _write_summary(self, status: str, error: str | None = None) -> None:
        write_json_atomic(self.run_dir / "summary.json", self._summary(status, error))

    def _write_final_summary(self, status: str, error: str | None) -> None:
        """The last summary, into the space reserved at the start, so a full disk still records
        how the run ended (if it outgrew the reserve: in the reserve's freed space, without the
        config and metrics when even that fails)."""
        fd, self._reserve = self._reserve, None
        reserve = self.run_dir / ".summary.json.reserve"
        data = json.dumps(self._summary(status, error), indent=2, default=_jsonable).encode()
        if fd is not None and len(data) <= _SUMMARY_RESERVE_BYTES:
            _write_reserved(fd, reserve, self.run_dir / "summary.json", data)
            return
        if fd is not None:
            os.close(fd)
            reserve.unlink()
        try:
            self._write_summary(status, error)
        except OSError as failure:
            if failure.errno != errno.ENOSPC:
                raise
            write_json_atomic(self.run_dir / "summary.json", self._summary(status, error, False))

    def finish(self, error: BaseException | None = None) -> None:
        """Close the metrics, write the final summary, finish the W&B run and release the
        folder, each step attempted whatever the others did; the first failure of a run that
        was otherwise fine is raised (and recorded in the summary when possible)."""
        if self._finished:
            return
        self._finished = True
        failure: BaseException | None = None
        try:
            try:
                if self._metrics is not None:
                    self._metrics.close()
            except OSError as e:
                failure = e
            problem = error or failure
            status = "completed" if problem is None else "failed"
            message = None if problem is None else f"{type(problem).__name__}: {problem}"
            try:
                self._write_final_summary(status, message)
            except OSError as e:
                failure = failure or e
            if self.wandb_run is not None:
                try:
                    if self.last is not None:
                        for key, value in self._wandb_row(self.last).items():
                            if key not in self._summarised:  # W&B keeps {max|min, last}
                                self.wandb_run.summary[key] = value
                    self.wandb_run.summary["status"] = status
                    self.wandb_run.finish(exit_code=0 if problem is None else 1)
                except Exception as e:  # the files above are the record; W&B mirrors them
                    failure = failure or e
        finally:
            if self._reserve is not None:
                os.close(self._reserve)
            self._lock.close()
        if failure is not None and error is None:
            raise failure

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc)
