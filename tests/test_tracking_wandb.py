"""What the tracker sends to W&B, read back from the offline run's own file.

An offline run writes every record (run, history rows, summary updates, exit) to
``run-<id>.wandb``: W&B's LevelDB-style log of ``wandb.proto`` ``Record`` messages. wandb 0.31
ships no Python reader for it (its reader lives in the Go core), so the few lines that undo the
framing are below; the records themselves are parsed by wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import compose_config, read_metrics, read_summary

from sparsegap.__main__ import run
from sparsegap.tracking import Tracker

# The log's framing: a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte
# header (CRC-32 of type and payload, payload length, type); a record too long for the rest of
# its block is split into FIRST, MIDDLE… and LAST chunks.
FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK, CHUNK_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every record of an offline run file, in order, as ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(FILE_HEADER), data[:7]
    records, pending, pos = [], b"", len(FILE_HEADER)
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += -pos % BLOCK
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"corrupt at {pos}"
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_finished_run(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of a finished run. W&B's core process writes the file behind the run's
    ``finish``: wait for its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path) if path.exists() else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {path} after {timeout} s"
        time.sleep(0.2)


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def history(records: list[Any]) -> list[dict[str, Any]]:
    """The logged rows (``run.log``), W&B's own keys (``_step``, ``_timestamp``…) left out."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def summary(records: list[Any]) -> dict[str, Any]:
    """The run's final summary: every summary update applied in order."""
    result: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                result[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                result.pop(_key(item), None)
    return result


def the_run(records: list[Any]) -> Any:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def run_file(tracker: Tracker) -> Path:
    """The offline run's file (next to its ``files`` folder)."""
    info = tracker.wandb_info
    assert info is not None and info["mode"] == "offline"
    return Path(info["dir"]).parent / f"run-{info['id']}.wandb"


LOGGER = {"project": "sparsegap-test", "mode": "offline", "tags": ["read-back"]}
RECORDS = [
    {"step": 0, "loss/total/train": [1.0, 3.0], "flops/train_cumulative": 0, "note": 2.5},
    {"step": 10, "loss/total/train": [0.5, 1.5], "flops/train_cumulative": 640, "note": 1.25},
]


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "wandb"
    path.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(path))
    return path


def test_the_tracker_logs_every_record_and_the_summary_to_wandb(tmp_path, wandb_dir):
    with Tracker(tmp_path / "run", {"lr": 0.5}, LOGGER, group="g1", name="n1") as tracker:
        for record in RECORDS:
            tracker.log(record)
    records = read_finished_run(run_file(tracker))

    run_record = the_run(records)
    assert (run_record.run_group, run_record.display_name) == ("g1", "n1")
    assert list(run_record.tags) == ["read-back"]
    config = {_key(i): json.loads(i.value_json) for i in run_record.config.update}
    assert config["lr"] == 0.5

    rows = history(records)
    assert [r["step"] for r in rows] == [0, 10]
    # per-replica metrics: mean, sample std, each replica, and the mean against compute
    assert rows[1]["loss/total/train"] == 1.0
    assert rows[1]["loss/total/train_std"] == pytest.approx(0.5**0.5)
    assert (rows[1]["replicas/loss/total/train/0"], rows[1]["replicas/loss/total/train/1"]) == (
        0.5,
        1.5,
    )
    assert rows[1]["vs_flops/loss/total/train"] == 1.0
    assert [r["note"] for r in rows] == [2.5, 1.25]  # scalars as they are
    assert [r["flops/train_cumulative"] for r in rows] == [0, 640]

    final = summary(records)
    assert final["status"] == "completed"
    for key, value in rows[-1].items():
        assert final[key] == pytest.approx(value), key
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [0]


def test_a_failed_run_is_marked_failed_in_wandb(tmp_path, wandb_dir):
    with pytest.raises(RuntimeError), Tracker(tmp_path / "run", {}, LOGGER) as tracker:
        tracker.log(RECORDS[0])
        raise RuntimeError("boom")
    records = read_finished_run(run_file(tracker))
    assert [r["step"] for r in history(records)] == [0]
    assert summary(records)["status"] == "failed"
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]


def test_a_training_run_mirrors_its_metrics_in_wandb(tmp_path, wandb_dir):
    run(compose_config(["logger=wandb", "steps=20", "eval_every=10"]), tmp_path / "run")
    files = list(wandb_dir.rglob("run-*.wandb"))
    assert len(files) == 1, files
    records = read_finished_run(files[0])
    logged, rows = read_metrics(tmp_path / "run"), history(records)
    rows = [r for r in rows if "latent_mcc/test" in r]  # not the feature-density histograms
    assert [r["step"] for r in rows] == [r["step"] for r in logged] == [0, 10, 20]
    for line, row in zip(logged, rows, strict=True):
        for key in ("loss/total/train", "latent_mcc/test", "dictionary_mcc", "l0/test"):
            assert row[key] == pytest.approx(line[key]["mean"]), key
            assert row[f"replicas/{key}/1"] == pytest.approx(line[key]["replicas"][1]), key
        assert row["flops/total"] == line["flops/total"]
    final = summary(records)
    assert final["status"] == "completed"
    last = read_summary(tmp_path / "run")["final"]
    assert final["latent_mcc/test"] == pytest.approx(last["latent_mcc/test"]["mean"])
    assert final["step"] == last["step"] == 20
