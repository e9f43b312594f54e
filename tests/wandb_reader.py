"""A reader of W&B's offline run file, for tests that check what a run sent to W&B.

An offline run writes every record (run, history rows, summary updates, artifacts, exit) to
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


def key_of(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def history(records: list[Any]) -> list[dict[str, Any]]:
    """The logged rows (``run.log``), W&B's own keys (``_step``, ``_timestamp``…) left out."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {key_of(i): json.loads(i.value_json) for i in record.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def summary(records: list[Any]) -> dict[str, Any]:
    """The run's final summary: every summary update applied in order."""
    result: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                result[key_of(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                result.pop(key_of(item), None)
    return result


def the_run(records: list[Any]) -> Any:
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def run_file(tracker: Tracker) -> Path:
    """The offline run's file (next to its ``files`` folder)."""
    info = tracker.wandb_info
    assert info is not None and info["mode"] == "offline"
    return Path(info["dir"]).parent / f"run-{info['id']}.wandb"


def records_of(records: list[Any], kind: str) -> list[Any]:
    """The payloads of the records of one type (``"artifact"``, ``"exit"``…)."""
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]
