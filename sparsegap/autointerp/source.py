"""The glue from a trained language-model run folder to a ``FeatureSource`` and held-out text.

Everything run-specific lives here: ``sparsegap.checkpoint.load_model(run_dir)`` (the trained
encoder and decoder, weights with a leading replica axis: decoder (R, d_model, L); codes
(R, L, B) for activations (d_model, B) in the training scale, i.e. multiplied by
``data.input_scale``) and ``sparsegap.data.activations`` (the run's ``TransformerBridge`` and
its text). The rest of autointerp works on plain tensors.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sparsegap.autointerp.pipeline import FeatureSource
from sparsegap.config import ConfigError
from sparsegap.runtime import resolve_device


def bridge_source(
    bridge: Any,
    hook: str,
    encode: Callable[[Tensor], Tensor],
    directions: Tensor,
    label: str,
    device: torch.device,
) -> FeatureSource:
    """A feature source from a ``TransformerBridge`` and an encoder.

    encode: activations (d_model, B) as the model gives them → codes (L, B) of one replica;
    directions: (d_model, L). Each context runs after a BOS token (when the tokenizer has one),
    whose position is dropped; the model stops after the hook's block. Special tokens (end of
    text between documents) get zero activations, as training never showed them to the encoder.
    """
    from sparsegap.data.activations import stop_layer

    tokenizer = bridge.tokenizer
    bos = tokenizer.bos_token_id
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    unembed = bridge.W_U.detach().float()
    vocab = tokenizer.batch_decode([[i] for i in range(unembed.shape[1])])

    @torch.no_grad()
    def activations(tokens: Tensor) -> Tensor:
        tokens = tokens.to(device)
        if bos is not None:
            tokens = torch.cat([torch.full_like(tokens[:, :1], bos), tokens], dim=1)
        _, cache = bridge.run_with_cache(
            tokens, names_filter=hook, stop_at_layer=stop_layer(hook), return_cache_object=False
        )
        x = cache[hook].flatten(2)
        if bos is not None:
            x, tokens = x[:, 1:], tokens[:, 1:]
        b, t, d = x.shape
        codes = encode(x.reshape(b * t, d).T.float()).T.reshape(b, t, -1)
        return codes * ~torch.isin(tokens, special.to(tokens.device))[..., None]

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    return FeatureSource(
        activations, directions.detach().float(), unembed, vocab, tokenize,
        tokenizer.eos_token_id, label,
    )  # fmt: skip


def documents_of(cfg: DictConfig, data: DictConfig) -> tuple[Iterator[str], int]:
    """The held-out text and how many of its tokens to skip: ``corpus.path`` (nothing skipped by
    default), else the run's own text (``data.text_files`` or ``data.dataset``) after the
    ``data.test_tokens + data.tokens`` tokens the run consumed."""
    from sparsegap.data.activations import documents

    if cfg.corpus.path:
        if not glob.glob(cfg.corpus.path, recursive=True):
            raise ConfigError(f"corpus.path={cfg.corpus.path!r} is invalid: no file matches it")
        text = OmegaConf.create({"text_files": cfg.corpus.path, "text_column": data.text_column})
        skip = cfg.corpus.skip_tokens or 0
        return documents(text), skip
    if not (data.get("text_files") or data.get("dataset")):
        raise ConfigError(
            "corpus.path=None is invalid: the run names no text (data.text_files, data.dataset);"
            " set corpus.path to a .txt or .jsonl file or a glob"
        )
    consumed = (data.get("test_tokens") or 0) + (data.get("tokens") or 0)
    skip = consumed if cfg.corpus.skip_tokens is None else cfg.corpus.skip_tokens
    return documents(data), skip


def load(cfg: DictConfig) -> tuple[FeatureSource, Iterable[str], int]:
    """The feature source of the run folder ``cfg.run``, its held-out documents and the number
    of their tokens to skip."""
    run = Path(cfg.run)
    if not run.is_dir():
        raise ConfigError(f"run={cfg.run!r} is invalid: not a folder")
    from sparsegap.checkpoint import load_model
    from sparsegap.config import to_container
    from sparsegap.data.activations import load_transformer
    from sparsegap.report.collect import label_of

    device = resolve_device(cfg.device.name)
    try:
        model, run_cfg = load_model(run, device)
    except FileNotFoundError as error:
        raise ConfigError(f"run={cfg.run!r} is invalid: {error}") from error
    data = run_cfg.data
    if "hook" not in data:
        raise ConfigError(
            f"run={cfg.run!r} is invalid: it was not trained on language-model activations"
            " (data=lm)"
        )
    hook = data.hook
    atoms = model.decoder.weight.detach()
    replicas = atoms.shape[0]
    if cfg.replica >= replicas:
        raise ConfigError(
            f"replica={cfg.replica} is invalid: the run has {replicas} replicas, 0…{replicas - 1}"
        )
    scale = float(data.get("input_scale") or 1.0)

    def encode(x: Tensor) -> Tensor:
        return model.encoder.infer(x * scale, atoms)[cfg.replica]

    bridge = load_transformer(data, device)
    label = cfg.label or label_of(to_container(run_cfg))
    source = bridge_source(bridge, hook, encode, atoms[cfg.replica], label, device)
    documents, skip = documents_of(cfg, data)
    return source, documents, skip
