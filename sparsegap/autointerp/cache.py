"""On-disk cache of LLM responses, so reruns are free and reproducible.

The key is the SHA-256 of the request — model, messages and sampling parameters, as canonical
JSON — and each entry is one small JSON file written atomically (``<key[:2]>/<key>.json``), so
concurrent workers and killed runs never leave a half-written entry. Only successful replies
that parse are stored (see ``LLMClient.complete``); failures are asked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sparsegap.tracking import write_text_atomic


def request_key(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_text_atomic(self._path(key), json.dumps(entry, ensure_ascii=False))
