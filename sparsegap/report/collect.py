"""Read run folders (``metrics.jsonl`` + ``summary.json``) into jobs and tidy rows.

A *job* is one run folder: a single run, or one numbered folder of a multirun. Every job is kept,
whatever its state: ``completed``, ``failed`` (with its error), ``running`` (a live process holds
the folder's lock), ``interrupted`` (its summary says ``running`` but no process holds the folder:
killed without a chance to say so, e.g. ``kill -9`` or a lost node) and ``no summary`` (stopped
before tracking started, e.g. an invalid configuration in a multirun; its config then comes from
Hydra's ``.hydra/`` files).

A *row* is one job × replica × evaluation, with every per-replica metric as a column
(``latent_mcc/test`` → ``latent_mcc_test``). A job without any evaluation still gets one row, so
it shows up in ``results.csv`` with its status.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsegap.tracking import LOCK_FILE, holder

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sparsegap.encoders import Encoder

# label_of names a method's inference algorithm unless it is the paper's Adam on log-codes.
UNNAMED_INFERENCE = "adam_log"
# Folders that are never jobs and never contain jobs.
SKIP_DIRS = {"report", "wandb", ".submitit", ".hydra", "__pycache__"}

# Fixed leading CSV columns; further metric columns follow in sorted order.
ID_COLUMNS = [
    "job", "status", "scenario", "encoder", "label", "N", "M", "K", "l1_coeff", "lr", "seed",
    "replica", "step",
]  # fmt: skip
LEADING_METRICS = [
    "flops_train", "flops_total", "flops_inference_test", "latent_mcc_test", "latent_mcc_train",
    "dictionary_mcc", "loss_total_train", "loss_total_test", "loss_mse_test", "l0_test", "l1_test",
    "wall_time_s",
]  # fmt: skip
RENAMED = {"flops/train_cumulative": "flops_train"}


def column_of(key: str) -> str:
    """CSV column of a metrics.jsonl key: ``latent_mcc/test`` → ``latent_mcc_test``."""
    return RENAMED.get(key, key.replace("/", "_"))


@dataclass
class Job:
    """One run folder."""

    path: Path
    name: str  # path relative to the report root ("." for a single run)
    status: str  # completed | failed | running | interrupted | no summary
    error: str | None
    config: dict[str, Any]
    overrides: list[str]
    wall_time_s: float | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    label_suffix: str = ""  # set by load_jobs when same-method jobs differ in other keys

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @property
    def scenario(self) -> str | None:
        return _get(self.config, "scenario.name")

    @property
    def encoder(self) -> str | None:
        return _get(self.config, "encoder.name")

    @property
    def label(self) -> str:
        return label_of(self.config) + self.label_suffix

    @property
    def regime(self) -> tuple[Any, Any, Any]:
        return (
            _get(self.config, "data.N"),
            _get(self.config, "data.M"),
            _get(self.config, "data.K"),
        )

    @property
    def l1_coeff(self) -> Any:
        return self.config.get("l1_coeff")


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def label_of(config: dict[str, Any]) -> str:
    """Short name of the method a config trains: ``sae``, ``mlp-256``, ``sae_ito-scratch``,
    ``sparse_coding-fista``… (the default inference algorithm, ``adam_log``, is not named)."""
    encoder = config.get("encoder") or {}
    label = str(encoder.get("name", "?"))
    if "hidden" in encoder:
        label += f"-{encoder['hidden']}"
    if encoder.get("init") == "scratch":
        label += "-scratch"
    inference = encoder.get("inference") or {}
    if inference.get("name") not in (None, UNNAMED_INFERENCE):
        label += f"-{inference['name']}"
    latents = encoder.get("latents")
    if latents is not None and latents != _get(config, "data.N"):
        label += f"-L{latents}"
    return label


def method_of(label: str) -> tuple[type[Encoder], DictConfig, list[str]] | None:
    """The encoder class a method label names, its config as far as the label tells (the
    schema's defaults otherwise) and the label's parts it does not parse (``L24``); None for an
    encoder that is not registered. The inverse of ``label_of``."""
    from omegaconf import OmegaConf

    from sparsegap.encoders import ENCODERS
    from sparsegap.inference import INFERENCE

    name, *parts = label.partition(" ")[0].split("-")
    cls = ENCODERS.get(name)
    if cls is None:
        return None
    encoder = OmegaConf.structured(cls.config)
    if "inference" in encoder:  # label_of names every inference but the paper's
        encoder.inference.name = UNNAMED_INFERENCE
    rest = []
    for part in parts:
        if part.isdigit() and "hidden" in encoder:
            encoder.hidden = int(part)
        elif part == "scratch" and "init" in encoder:
            encoder.init = part
        elif part in INFERENCE and "inference" in encoder:
            encoder.inference.name = part
        else:
            rest.append(part)
    return cls, encoder, rest


def display(label: str) -> str:
    """Figure and table name of a method label, from the encoder's declaration
    (``Encoder.describe``): ``mlp-256 lr=0.1`` → ``MLP (hidden 256) lr=0.1``, ``topk`` →
    ``TopK SAE``; the label itself for an encoder that is not registered."""
    method = method_of(label)
    if method is None:
        return label
    cls, encoder, rest = method
    _, _, suffix = label.partition(" ")
    return " ".join([cls.describe(encoder), *rest, *([suffix] if suffix else [])])


def is_iterative(encoder: str | None) -> bool:
    """Whether an encoder's test codes come from an optimisation per sample (its ``kind``)."""
    from sparsegap.encoders import ENCODERS

    cls = ENCODERS.get(str(encoder))
    return cls is not None and cls.kind == "iterative"


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a broken or half-written file must not stop the report
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``metrics.jsonl`` (a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _why_no_summary(path: Path) -> str:
    """A job without summary.json stopped before tracking started: most often an invalid
    configuration, whose message went to the sweep's console. Re-check the job's config to
    recover the message."""
    fallback = "stopped before training started (see the multirun's console output)"
    config_file = path / ".hydra" / "config.yaml"
    if not config_file.exists():
        return fallback
    try:
        from omegaconf import OmegaConf

        from sparsegap.config import ConfigError
        from sparsegap.validate import validate

        validate(OmegaConf.load(config_file))
    except ConfigError as error:
        return f"invalid configuration: {error}"
    except Exception:  # a config from another version of the code: no reason to give
        return fallback
    return fallback


def is_job_dir(path: Path) -> bool:
    return any((path / f).exists() for f in ("summary.json", "metrics.jsonl", ".hydra/config.yaml"))


def find_job_dirs(root: Path) -> list[Path]:
    """Every job folder under ``root`` (``root`` itself when it is a run folder), sorted
    naturally (``2`` before ``10``). Job folders are not searched further."""
    if is_job_dir(root):
        return [root]
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        found.extend(find_job_dirs(child))
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root)))


def _natural_key(path: Path) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def load_job(path: Path, root: Path) -> Job:
    name = str(path.relative_to(root)) if path != root else path.name
    summary: dict[str, Any] | None = None
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    if summary is not None:
        status = str(summary.get("status", "running"))
        if status == "running" and (path / LOCK_FILE).exists() and holder(path) is None:
            status = "interrupted"
        error = summary.get("error")
        config = summary.get("config") or {}
        wall = summary.get("wall_time_s")
    else:
        status, error, wall = "no summary", _why_no_summary(path), None
        config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    return Job(
        path=path,
        name=name,
        status=status,
        error=error,
        config=config,
        overrides=[str(o) for o in overrides],
        wall_time_s=wall,
        evaluations=_read_metrics(path / "metrics.jsonl"),
    )


# Keys along which jobs of one method are pooled rather than told apart (replicas are pooled too).
POOLED = (
    "seed", "data.seed", "replicas", "eval_every", "progress", "compile", "logger.", "device.",
)  # fmt: skip
# Keys that already name a setting or a method.
NAMED = ("scenario.", "data.N", "data.M", "data.K", "l1_coeff", "encoder.name")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def distinguish(jobs: list[Job]) -> None:
    """Jobs of the same method and setting that differ in another key (``lr``, ``steps``,
    ``encoder.inference.iterations``…) get that key in their label: ``sae lr=0.1``. Seeds and
    replica counts do not: their replicas are pooled."""
    groups: dict[tuple[Any, ...], list[tuple[Job, dict[str, Any]]]] = {}
    for job in jobs:
        key = (job.scenario, *job.regime, job.l1_coeff, label_of(job.config))
        groups.setdefault(key, []).append((job, _flatten(job.config)))
    for members in groups.values():
        # Keys some configs lack (written by an older version of the schema) tell nothing apart.
        keys = set.intersection(*(set(flat) for _, flat in members))
        varying = sorted(
            k
            for k in keys
            if not k.startswith(POOLED + NAMED)
            and len({repr(flat.get(k)) for _, flat in members}) > 1
        )
        for job, flat in members:
            parts = [f"{k.split('.')[-1]}={flat.get(k)}" for k in varying]
            job.label_suffix = f" {','.join(parts)}" if parts else ""


def load_jobs(root: Path) -> list[Job]:
    """Every job under ``root`` (call ``distinguish`` on those to be compared)."""
    root = Path(root)
    return [load_job(p, root) for p in find_job_dirs(root)]


def job_columns(job: Job) -> dict[str, Any]:
    c = job.config
    return {
        "job": job.name,
        "status": job.status,
        "scenario": job.scenario,
        "encoder": job.encoder,
        "label": job.label,
        "N": _get(c, "data.N"),
        "M": _get(c, "data.M"),
        "K": _get(c, "data.K"),
        "l1_coeff": c.get("l1_coeff"),
        "lr": c.get("lr"),
        "seed": c.get("seed"),
        "error": job.error,
    }


def rows_of(job: Job) -> list[dict[str, Any]]:
    """One row per replica × evaluation; a job without evaluations gets one row of its own."""
    base = job_columns(job)
    rows: list[dict[str, Any]] = []
    for entry in job.evaluations:
        scalars = {column_of(k): v for k, v in entry.items() if not isinstance(v, dict)}
        per_replica = {column_of(k): v["replicas"] for k, v in entry.items() if isinstance(v, dict)}
        replicas = max((len(v) for v in per_replica.values()), default=1)
        for r in range(replicas):
            row = {**base, "replica": r, **scalars}
            for column, values in per_replica.items():
                row[column] = values[r] if r < len(values) else None
            rows.append(row)
    if not rows:
        rows.append({**base, "replica": None, "step": None})
    return rows


def all_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    return [row for job in jobs for row in rows_of(job)]


def write_csv(rows: list[dict[str, Any]], path: Path) -> list[str]:
    """Write ``rows`` with a union of their columns (fixed ones first); returns the header."""
    seen = {key for row in rows for key in row}
    header = [c for c in ID_COLUMNS if c in seen or c in ("replica", "step")]
    header += [c for c in LEADING_METRICS if c in seen]
    header += [*sorted(seen - set(header) - {"error"}), "error"]  # the long text last
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in header})
    return header


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
