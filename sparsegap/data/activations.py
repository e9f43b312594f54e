"""Language-model activations (``data=lm``): model, text stream, shuffling buffer, disk cache.

text (Hugging Face ``datasets`` streamed, or local .txt/.jsonl files) → documents packed into
contexts of ``data.context`` tokens (BOS first) → the transformer (transformer-lens
``TransformerBridge``) up to ``data.hook`` → one activation row per kept position (BOS, EOS and
pad positions dropped with ``data.exclude_special``) → the first ``data.test_tokens +
data.tokens`` rows → a shuffling buffer → the evaluation set (the first ``data.test_tokens`` rows)
and column batches (d, ``data.batch_tokens``) for training.

The rows before the shuffling buffer are what an activation cache (``+cache=build``) stores, in
the same order, so training from a float32 cache sees exactly the batches a run on the model
would. Everything is deterministic given the config: a resumed run replays the stream to its
position (a cache replays as memory copies; a model reruns its forwards, not the encoder).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.config import ConfigError
from sparsegap.runtime import resolve_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DEFAULT_TOKENS = 100_000_000
MANIFEST = "manifest.json"
ROWS_FILE = "activations.bin"
CACHE_FORMAT = 1
# The keys that decide which activations a stream produces (a cache records them).
SOURCE_KEYS = (
    "model",
    "model_path",
    "hook",
    "dtype",
    "dataset",
    "dataset_split",
    "text_column",
    "text_files",
    "context",
    "prepend_bos",
    "exclude_special",
)
_LAYER = re.compile(r"^blocks\.(\d+)\.")
_PROBE_TIMEOUT_S = 3.0
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_LOCAL_HINT = (
    "use a local checkpoint with data.model_path=/path/to/model (a transformers save_pretrained"
    " folder with its tokenizer) and local text with data.text_files='corpus/*.txt' (one"
    " document per line) or 'corpus/*.jsonl' (a \"text\" field per line)"
)


# ---------------------------------------------------------------- availability (fails fast)
def _hub_offline() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} is unreachable ({error.__class__.__name__})"
    return None


def check_available(d: DictConfig) -> None:
    """Raise ConfigError (within seconds) when the model or the text cannot be reached, saying
    how to use local files instead. Hub names are fine offline when already in the local cache."""
    check_model(d)
    if d.text_files is not None:
        if not text_paths(d):
            raise ConfigError(f"data.text_files={d.text_files!r} is invalid: it matches no file")
    else:
        reason = "HF_DATASETS_OFFLINE=1" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else None
        reason = reason or _hub_offline()
        if reason is not None:
            raise ConfigError(
                f"data.dataset={d.dataset!r} cannot be streamed: {reason}; {_LOCAL_HINT}"
            )


def check_model(d: DictConfig) -> None:
    """The model half of ``check_available``, with ``data.hook``'s block checked against the
    model's ``config.json`` when it is on disk (before any weights load)."""
    if d.model_path is not None:
        if not (Path(d.model_path) / "config.json").is_file():
            raise ConfigError(
                f"data.model_path={d.model_path!r} is invalid: no config.json there; it must be"
                " a transformers save_pretrained folder (model and tokenizer)"
            )
        check_hook_block(d, Path(d.model_path) / "config.json")
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(d.model, "config.json")
    if isinstance(cached, str):
        check_hook_block(d, Path(cached))
        return
    reason = _hub_offline()
    if reason is not None:
        raise ConfigError(
            f"data.model={d.model!r} cannot be downloaded: {reason}, and it is not in the local"
            f" Hugging Face cache; {_LOCAL_HINT}"
        )


# Where transformers' config.json files state the number of blocks (GPT-2, Llama/Gemma/…, others).
_LAYER_COUNT_KEYS = ("n_layer", "num_hidden_layers", "n_layers", "num_layers")


def check_hook_block(d: DictConfig, config_json: Path) -> None:
    """Raise ConfigError when ``data.hook`` names a block (``blocks.<i>.``) the model does not
    have. Other hook names are checked once the model is loaded (``load_transformer``): only it
    knows every hook point."""
    match = _LAYER.match(d.hook)
    if match is None:
        return
    try:
        config = json.loads(config_json.read_text())
    except (OSError, json.JSONDecodeError):
        return
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    layers = next((config[k] for k in _LAYER_COUNT_KEYS if isinstance(config.get(k), int)), None)
    if layers is not None and int(match.group(1)) >= layers:
        raise ConfigError(
            f"data.hook={d.hook!r} is invalid: the model has {layers} blocks, blocks.0 …"
            f" blocks.{layers - 1}; e.g. blocks.{layers - 1}.hook_resid_post"
        )


# ---------------------------------------------------------------- model
def load_transformer(
    data_cfg: DictConfig, device: str | torch.device | None = None
) -> TransformerBridge:
    """The transformer of ``data_cfg`` (``data.model_path`` if set, else the hub name
    ``data.model``) as a hooked transformer-lens model (``lm_model``: 4.x ``TransformerBridge``,
    3.x ``HookedTransformer``) in eval mode, on ``device``
    (default ``data.model_device``, else CUDA when available). Checks the hook point exists."""
    from sparsegap.data.lm_model import load_language_model

    check_model(data_cfg)
    device = resolve_device(str(device or data_cfg.model_device or "auto"))
    bridge = load_language_model(
        data_cfg.model_path or data_cfg.model, device=device, dtype=getattr(torch, data_cfg.dtype)
    )
    if data_cfg.hook not in bridge.hook_dict:
        last = bridge.cfg.n_layers - 1
        raise ConfigError(
            f"data.hook={data_cfg.hook!r} is invalid: the model has no such hook point; e.g."
            f" blocks.0.hook_resid_pre … blocks.{last}.hook_resid_post, blocks.<i>.hook_mlp_out"
        )
    return bridge


def stop_layer(hook: str) -> int | None:
    """Blocks to run for ``hook``: those up to and including its own (None: the whole model)."""
    match = _LAYER.match(hook)
    return int(match.group(1)) + 1 if match else None


@torch.no_grad()
def activations_of(bridge: TransformerBridge, tokens: Tensor, d: DictConfig) -> Tensor:
    """Rows (kept positions, d) of ``data.hook`` for a batch of contexts (n, context), float32,
    on the model's device, in context-major order."""
    tokens = tokens.to(bridge.cfg.device)
    _, cache = bridge.run_with_cache(
        tokens, names_filter=d.hook, stop_at_layer=stop_layer(d.hook), return_cache_object=False
    )
    acts = cache[d.hook].flatten(2)  # heads × d_head hooks become one axis
    if d.exclude_special:
        special = torch.tensor(sorted(_special_ids(bridge)), device=tokens.device)
        return acts[~torch.isin(tokens, special)].float()
    return acts.reshape(-1, acts.shape[-1]).float()


def _special_ids(bridge: TransformerBridge) -> set[int]:
    tok = bridge.tokenizer
    ids = set(tok.all_special_ids)
    for value in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        if value is not None:
            ids.add(value)
    return ids


# ---------------------------------------------------------------- text
def text_paths(d: DictConfig) -> list[str]:
    return sorted(glob.glob(d.text_files, recursive=True)) if d.text_files else []


def documents(d: DictConfig) -> Iterator[str]:
    """Documents in a fixed order: local files (sorted; .jsonl: the ``data.text_column`` of each
    line; otherwise one document per non-empty line), or the streamed dataset's rows."""
    if d.text_files is not None:
        for path in text_paths(d):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    if path.endswith(".jsonl"):
                        yield json.loads(line)[d.text_column]
                    else:
                        yield line.rstrip("\n")
        return
    import datasets

    rows = datasets.load_dataset(d.dataset, split=d.dataset_split, streaming=True)
    for row in rows:
        yield row[d.text_column]


def contexts(d: DictConfig, tokenizer: Any, skip: int = 0) -> Iterator[Tensor]:
    """Batches of ``data.model_batch`` contexts (n, ``data.context``) int64: documents are
    tokenised, separated by EOS and packed; each context starts with BOS when
    ``data.prepend_bos``. The first ``skip`` contexts are dropped (tokenised, not run)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    body = d.context - 1 if d.prepend_bos else d.context
    pending: list[int] = []
    rows: list[list[int]] = []
    produced = 0
    docs = documents(d)
    while chunk := list(itertools.islice(docs, 64)):
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            pending.extend(ids)
            if eos is not None:
                pending.append(eos)
        start = 0
        while len(pending) - start >= body:
            row = pending[start : start + body]
            start += body
            produced += 1
            if produced <= skip:
                continue
            rows.append([bos, *row] if d.prepend_bos else row)
            if len(rows) == d.model_batch:
                yield torch.tensor(rows, dtype=torch.long)
                rows = []
        del pending[:start]
    if rows:
        yield torch.tensor(rows, dtype=torch.long)


def model_rows(
    d: DictConfig, bridge: TransformerBridge, skip_contexts: int = 0
) -> Iterator[tuple[Tensor, int]]:
    """(activation rows, contexts consumed) per model batch."""
    for tokens in contexts(d, bridge.tokenizer, skip=skip_contexts):
        yield activations_of(bridge, tokens, d), tokens.shape[0]


# ---------------------------------------------------------------- disk cache
def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"data.cache={str(folder)!r} is invalid: no {MANIFEST} there; build a cache with"
            " `python -m sparsegap data=lm +cache=build cache.dir=...`"
        )
    return json.loads(path.read_text())


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    from sparsegap.tracking import write_json_atomic

    write_json_atomic(folder / MANIFEST, manifest)


def default_cache_dir(d: DictConfig) -> Path:
    model = Path(d.model_path).name if d.model_path else d.model.replace("/", "_")
    return Path("outputs") / "act-cache" / f"{model}-{d.hook}"


def build_cache(cfg: DictConfig, progress: bool = False) -> dict[str, Any]:
    """Harvest ``data.test_tokens + data.tokens`` activation rows of ``cfg.data`` into
    ``cache.dir`` (``+cache=build``): a raw row-major memory map (``activations.bin``) and a
    manifest recording the source, d, the stored dtype and how many rows (and contexts) are
    complete. Resumable: the manifest is rewritten every ``cache.flush_tokens`` tokens, after
    the rows it counts are flushed, and a rerun continues after the contexts it records."""
    d, c = cfg.data, cfg.cache
    folder = Path(c.dir) if c.dir else default_cache_dir(d)
    folder.mkdir(parents=True, exist_ok=True)
    target = d.test_tokens + d.tokens
    source = {key: d[key] for key in SOURCE_KEYS}
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).exists() else {}
    if manifest and (manifest["source"] != source or manifest["dtype"] != c.dtype):
        raise ConfigError(
            f"cache.dir={str(folder)!r} is invalid: it holds activations of another source or"
            f" dtype ({manifest['source']}, {manifest['dtype']}); choose another cache.dir"
        )
    if manifest and manifest["tokens"] >= target:
        return {**manifest, "folder": str(folder), "tokens_per_s": 0.0}
    # Resume point: the rows and contexts of the last model batch that was used whole.
    written, done = manifest.get("resume_tokens", 0), manifest.get("contexts", 0)
    resumed_from = written
    bridge = load_transformer(d)
    started = time.perf_counter()
    try:
        written = _fill(cfg, folder, bridge, manifest, written, done, progress)
        if written < target:
            raise ConfigError(  # the manifest holds what was written: a rerun with more text
                f"data.tokens={d.tokens} is invalid: the text ran out after {written:,}"
                f" activation tokens (data.test_tokens={d.test_tokens} included); add text or"
                " lower data.tokens"
            )
    except BaseException:
        if not (folder / MANIFEST).exists():  # nothing usable was recorded: no orphan file
            (folder / ROWS_FILE).unlink(missing_ok=True)
        raise
    manifest = read_manifest(folder)
    manifest["folder"] = str(folder)
    manifest["tokens_per_s"] = (written - resumed_from) / max(time.perf_counter() - started, 1e-9)
    return manifest


def _fill(
    cfg: DictConfig,
    folder: Path,
    bridge: TransformerBridge,
    manifest: dict[str, Any],
    written: int,
    done: int,
    progress: bool,
) -> int:
    """``build_cache``'s loop: rows into ``activations.bin`` after ``written`` (``done``
    contexts), the manifest rewritten every ``cache.flush_tokens``. When the text runs out, the
    rows written are recorded and the file is cut to them (a rerun sizes it again). Returns the
    rows on disk."""
    d, c = cfg.data, cfg.cache
    target = d.test_tokens + d.tokens
    itemsize = np.dtype(_NUMPY_DTYPES[c.dtype]).itemsize
    dim = manifest.get("dim")
    rows_path = folder / ROWS_FILE
    store: np.memmap | None = None
    last_flush = resume_at = written

    def record() -> None:
        assert store is not None
        store.flush()
        _write_manifest(folder, {
            "format": CACHE_FORMAT, "source": {key: d[key] for key in SOURCE_KEYS}, "dim": dim,
            "dtype": c.dtype, "tokens": written, "target_tokens": target,
            "resume_tokens": resume_at, "contexts": done, "complete": written == target,
        })  # fmt: skip

    for rows, used in _prefetched(model_rows(d, bridge, skip_contexts=done), d.prefetch):
        if store is None:
            dim = rows.shape[1]
            with open(rows_path, "ab") as f:  # sized to the target, filled as rows arrive
                f.truncate(target * dim * itemsize)
            store = np.memmap(rows_path, dtype=_NUMPY_DTYPES[c.dtype], mode="r+")
            store = store.reshape(target, dim)
        take = min(rows.shape[0], target - written)
        store[written : written + take] = _to_numpy(rows[:take], c.dtype)
        written += take
        if take == rows.shape[0]:
            done += used
            resume_at = written
        if written - last_flush >= c.flush_tokens or written == target:
            record()
            last_flush = written
            if progress:
                print(f"cache: {written:,} / {target:,} tokens", flush=True)
        if written == target:
            return written
    if store is not None and written > 0:  # the text ran out: keep the rows, not the room
        record()
        del store
        os.truncate(rows_path, written * dim * itemsize)
    return written


def _to_numpy(rows: Tensor, dtype: str) -> np.ndarray:
    rows = rows.detach().to("cpu", getattr(torch, dtype))
    return rows.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else rows.numpy()


def cache_rows(folder: str | Path, chunk: int = 65_536) -> Iterator[tuple[Tensor, int]]:
    """The cached rows in order, float32, ``chunk`` at a time (memory-mapped, read-only)."""
    manifest = read_manifest(folder)
    dim, tokens, dtype = manifest["dim"], manifest["tokens"], manifest["dtype"]
    path = Path(folder) / ROWS_FILE
    store = np.memmap(path, dtype=_NUMPY_DTYPES[dtype], mode="r", shape=(tokens, dim))
    for start in range(0, tokens, chunk):
        block = torch.from_numpy(np.array(store[start : min(start + chunk, tokens)]))
        if dtype == "bfloat16":
            block = block.view(torch.bfloat16)
        yield block.float(), 0


# ---------------------------------------------------------------- the stream
def fill_lm_defaults(d: DictConfig) -> None:
    """Resolve ``data.tokens`` (null: 100 M from a model, every cached training token) and,
    when training from a cache, take the source keys and d from its manifest. A filled config
    (a checkpoint's) is left alone: its cache need not exist where the model is loaded."""
    if d.dim is not None and d.tokens is not None:
        return
    if d.cache is None:
        if d.tokens is None:
            d.tokens = DEFAULT_TOKENS
        return
    manifest = read_manifest(d.cache)
    for key, value in manifest["source"].items():
        d[key] = value
    d.dim = manifest["dim"]
    available = manifest["tokens"] - d.test_tokens
    if d.tokens is None:
        d.tokens = available - available % d.batch_tokens
    if d.tokens > available or d.tokens < d.batch_tokens:
        raise ConfigError(
            f"data.tokens={d.tokens} is invalid: the cache at data.cache={d.cache!r} holds"
            f" {manifest['tokens']:,} tokens, data.test_tokens={d.test_tokens} of them held out;"
            f" allowed: data.batch_tokens={d.batch_tokens} … {available:,}"
        )


def _truncated(
    rows: Iterator[tuple[Tensor, int]], test_tokens: int, tokens: int
) -> Iterator[Tensor]:
    """The first ``test_tokens + tokens`` rows; fewer is a ConfigError (a training run stops
    there, marked failed, with what it logged)."""
    total, seen = test_tokens + tokens, 0
    for block, _ in rows:
        if seen >= total:
            return
        block = block[: total - seen]
        seen += block.shape[0]
        yield block
    if seen < total:
        raise ConfigError(
            f"data.tokens={tokens} is invalid: the text ran out after {seen:,}"
            f" activation tokens ({total:,} asked, data.test_tokens={test_tokens} included);"
            " add text or lower data.tokens"
        )


def shuffled(
    blocks: Iterator[Tensor], capacity: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """A shuffling buffer of ``capacity`` rows: once full it is permuted and its first half
    leaves (as one block); the rest is flushed, permuted, at the end. Consecutive batches so mix
    rows from about ``capacity`` tokens of text. Permutations come from the CPU ``generator``,
    so the order does not depend on the device."""
    if capacity == 0:
        yield from blocks
        return
    buffer: Tensor | None = None
    filled = 0
    for block in blocks:
        if buffer is None:
            buffer = torch.empty(capacity, block.shape[1], dtype=block.dtype, device=block.device)
        while block.shape[0]:
            take = min(capacity - filled, block.shape[0])
            buffer[filled : filled + take] = block[:take]
            filled, block = filled + take, block[take:]
            if filled == capacity:
                order = torch.randperm(capacity, generator=generator).to(buffer.device)
                half = capacity // 2
                out = buffer[order[:half]]
                buffer[: capacity - half] = buffer[order[half:]]
                filled = capacity - half
                yield out
    if buffer is not None and filled:
        yield buffer[:filled][torch.randperm(filled, generator=generator).to(buffer.device)]


_PRODUCER_JOIN_S = 120.0  # at most one model batch's forward (or one text read) to wait for


def _prefetched(items: Iterator[Any], enabled: bool, depth: int = 4) -> Iterator[Any]:
    """``items`` produced by a background thread ``depth`` ahead (so the model forward overlaps
    the consumer), in the same order; exceptions are re-raised in the consumer."""
    if not enabled:
        yield from items
        return
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as error:  # handed to the consumer
            q.put(("error", error))

    thread = threading.Thread(target=produce, daemon=True, name="activation-prefetch")
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        # A consumer that stops early (the cache is full, the steps are done) leaves the
        # producer inside a model forward: wait for it, so it never runs torch code while the
        # interpreter shuts down (that aborts the process: "terminate called without an active
        # exception"). It checks ``stop`` after each item.
        stop.set()
        thread.join(timeout=_PRODUCER_JOIN_S)


class _ToDevice:
    """Moves batches to the training device; CPU → CUDA copies go through two pinned staging
    buffers, so they are asynchronous and never overwrite a batch still being copied."""

    def __init__(self, device: torch.device, pin: bool) -> None:
        self.device, self.pin = device, pin and device.type == "cuda"
        self.staging: list[Tensor | None] = [None, None]
        self.events: list[Any] = [None, None]
        self.slot = 0

    def __call__(self, batch: Tensor) -> Tensor:
        if batch.device == self.device:
            return batch
        if not self.pin or batch.device.type != "cpu":
            return batch.to(self.device)
        slot, self.slot = self.slot, 1 - self.slot
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        staging = self.staging[slot]
        if staging is None or staging.shape != batch.shape:
            staging = self.staging[slot] = torch.empty_like(batch, pin_memory=True)
        staging.copy_(batch)
        out = staging.to(self.device, non_blocking=True)
        self.events[slot] = torch.cuda.Event()
        self.events[slot].record()
        return out


class ActivationSource:
    """The evaluation set and the training batches of ``data`` (from the model or a cache).

    ``open(skip)`` returns the evaluation set X_test (d, ``test_tokens``) and an iterator over
    the training batches (d, ``batch_tokens``) from batch ``skip`` on, both on ``device`` and
    multiplied by ``input_scale`` (1, or the factor that makes the mean squared norm of X_test
    equal to d when ``data.normalise``). Batches are column views of row-major blocks.
    """

    def __init__(self, d: DictConfig, device: torch.device, pin_memory: bool = True) -> None:
        self.d, self.device = d, device
        self.to_device = _ToDevice(device, pin_memory)
        model_device = d.model_device or device
        self.bridge = None if d.cache is not None else load_transformer(d, model_device)
        self.input_scale = 1.0

    def _rows(self) -> Iterator[tuple[Tensor, int]]:
        if self.d.cache is not None:  # read and copied to the device ahead of the consumer
            rows = ((block.to(self.device), used) for block, used in cache_rows(self.d.cache))
            return _prefetched(rows, self.d.prefetch)
        return _prefetched(model_rows(self.d, self.bridge), self.d.prefetch)

    def open(self, skip: int = 0) -> tuple[Tensor, Iterator[Tensor]]:
        d = self.d
        generator = torch.Generator().manual_seed(d.seed)
        blocks = _truncated(self._rows(), d.test_tokens, d.tokens)
        blocks = shuffled(blocks, d.shuffle_tokens, generator)
        stream = _split(blocks, d.test_tokens, d.batch_tokens)
        test = next(stream)
        if d.normalise:
            self.input_scale = (test.shape[1] / test.square().sum(dim=1).mean()).sqrt().item()
        test = self.to_device(test).T.contiguous().mul_(self.input_scale)
        batches = (
            self.to_device(batch).T.mul(self.input_scale)
            if self.input_scale != 1.0
            else self.to_device(batch).T
            for batch in itertools.islice(stream, skip, None)
        )
        return test, batches


def _split(blocks: Iterator[Tensor], test_tokens: int, batch_tokens: int) -> Iterator[Tensor]:
    """The first ``test_tokens`` rows as one block, then blocks of ``batch_tokens`` rows."""
    first = True
    parts: list[Tensor] = []
    held = 0
    for block in blocks:
        parts.append(block)
        held += block.shape[0]
        size = test_tokens if first else batch_tokens
        while held >= size:
            joined = torch.cat(parts) if len(parts) > 1 else parts[0]
            yield joined[:size]
            rest = joined[size:]
            parts, held = ([rest] if rest.shape[0] else []), rest.shape[0]
            first = False
            size = batch_tokens
