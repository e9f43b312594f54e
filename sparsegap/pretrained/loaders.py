"""Read trained SAEs from disk (SAELens, sparsify, sparsegap) into ``PretrainedSAE``.

Formats, as their libraries write them:

* SAELens: ``cfg.json`` (``architecture``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``,
  ``normalize_activations``, topk's ``k``; model and hook under ``metadata`` since 6.0, at the
  top level before) and ``sae_weights.safetensors`` (W_enc (d, L), W_dec (L, d), b_dec, b_enc or
  the gated b_gate/b_mag/r_mag, jumprelu's threshold; an optional ``scaling_factor`` (L,) that
  multiplies the codes before decoding, folded into W_dec here).
* sparsify: one folder per hook point named after the module (``layers.6``) with ``cfg.json``
  (``k``, ``activation``, ``d_in``, ...) and ``sae.safetensors`` (``encoder.weight`` (L, d),
  ``encoder.bias`` (L), ``W_dec`` (L, d), ``b_dec`` (d)). sparsify encodes TopK(ReLU((x - b_dec)·
  W_encᵀ + b)), i.e. SAELens's topk with ``apply_b_dec_to_input``.
* sparsegap: a ``data=lm`` run folder (or its ``checkpoint/``): ``config.json`` and
  ``model.safetensors`` with a replica axis. The run trained on activations × ``input_scale``
  with a bias-free decoder: the scale is folded into W_enc and W_dec.

Every problem with a folder is a ``ConfigError`` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sparsegap.config import ConfigError
from sparsegap.pretrained.sae import PretrainedSAE

SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CONFIG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
FORMATS = ("auto", "saelens", "sparsify", "sparsegap")
# sparsegap encoders with a SAELens architecture (batch_topk infers with a threshold: jumprelu).
SPARSEGAP_ARCHITECTURES = {
    "sae": "standard",
    "topk": "topk",
    "batch_topk": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}
# sparsify hook folders are module paths of the Hugging Face model: a block's output is the
# residual stream after it; its .mlp / .attn the block's MLP / attention output.
_SPARSIFY_HOOK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.(mlp|attn|self_attn))?$")


def detect_format(folder: Path) -> str:
    if (folder / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (folder / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    if (folder / "checkpoint" / "model.safetensors").is_file() or (
        folder / "model.safetensors"
    ).is_file():
        return "sparsegap"
    raise ConfigError(
        f"sae.path={str(folder)!r} is invalid: no {SAELENS_WEIGHTS} (SAELens), {SPARSIFY_WEIGHTS}"
        " (sparsify) or checkpoint/model.safetensors (a sparsegap data=lm run) there"
    )


def load_sae(path: str | Path, format: str = "auto", replica: int = 0) -> PretrainedSAE:
    """The SAE in folder ``path`` (``format`` auto-detected from the files present)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"sae.path={str(path)!r} is invalid: no such folder")
    if format not in FORMATS:
        raise ConfigError(f"sae.format={format!r} is invalid; allowed: {', '.join(FORMATS)}")
    format = detect_format(folder) if format == "auto" else format
    if format == "saelens":
        return load_saelens(folder)
    if format == "sparsify":
        return load_sparsify(folder)
    return load_sparsegap(folder, replica)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"sae.path={str(path.parent)!r} is invalid: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"sae.path={str(path.parent)!r} is invalid: {path.name} is missing")
    try:
        return {k: v.float() for k, v in load_file(path).items()}
    except Exception as error:  # safetensors raises its own error types
        raise ConfigError(f"{path} cannot be read: {error}") from None


def load_saelens(folder: Path) -> PretrainedSAE:
    cfg = _json(folder / SAELENS_CONFIG)
    weights = _tensors(folder / SAELENS_WEIGHTS)
    meta = dict(cfg.get("metadata") or {})
    # Before SAELens 6.0 the model and hook sat at the top level ("hook_point" before "hook_name")
    # and a TopK SAE was a standard one with activation_fn "topk".
    architecture = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk":
        architecture, k = "topk", k or (cfg.get("activation_fn_kwargs") or {}).get("k")
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool) or normalize is None:
        normalize = "expected_average_only_in" if normalize else "none"
    if cfg.get("reshape_activations", "none") != "none":
        raise ConfigError(
            f"{folder / SAELENS_CONFIG}: reshape_activations={cfg['reshape_activations']!r}"
            " (attention hook_z SAEs) is not supported; allowed: none"
        )
    scale = weights.pop("scaling_factor", None)
    if scale is not None:  # finetuning scaling: codes × scale before W_dec
        weights["W_dec"] = weights["W_dec"] * scale[:, None]
    for name in ("d_in", "d_sae"):
        if name in cfg and "W_enc" in weights:
            actual = weights["W_enc"].shape[0 if name == "d_in" else 1]
            if cfg[name] != actual:
                raise ConfigError(
                    f"{folder}: cfg.json says {name}={cfg[name]} but W_enc has {actual}"
                )
    return PretrainedSAE(
        architecture=architecture,
        weights=weights,
        k=k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        model=meta.get("model_name", cfg.get("model_name")),
        hook=meta.get("hook_name", cfg.get("hook_name", cfg.get("hook_point"))),
        source=f"SAELens folder {folder}",
        metadata=meta,
    )


def sparsify_hook(name: str) -> str | None:
    """The transformer-lens hook of a sparsify hook folder name (None when not recognised)."""
    match = _SPARSIFY_HOOK.search(name)
    if match is None:
        return None
    layer, part = match.groups()
    suffix = {None: "hook_resid_post", "mlp": "hook_mlp_out"}.get(part, "hook_attn_out")
    return f"blocks.{layer}.{suffix}"


def load_sparsify(folder: Path) -> PretrainedSAE:
    cfg = _json(folder / SPARSIFY_CONFIG)
    weights = _tensors(folder / SPARSIFY_WEIGHTS)
    where = f"{folder / SPARSIFY_CONFIG}"
    if cfg.get("activation", "topk") != "topk":
        raise ConfigError(
            f"{where}: activation={cfg['activation']!r} is not supported; allowed: topk"
        )
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag):
            raise ConfigError(
                f"{where}: {flag}=true (not an autoencoder of one hook) is not supported"
            )
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in weights]
    if missing:
        raise ConfigError(f"{folder / SPARSIFY_WEIGHTS} lacks {', '.join(missing)}")
    encoder = weights["encoder.weight"]
    if "d_in" in cfg and encoder.shape[1] != cfg["d_in"]:
        raise ConfigError(
            f"{where}: d_in={cfg['d_in']} but encoder.weight is {tuple(encoder.shape)}"
        )
    parent = folder.parent / "config.json"  # sparsify's run-level config names the model
    model = json.loads(parent.read_text()).get("model") if parent.is_file() else None
    return PretrainedSAE(
        architecture="topk",
        weights={
            "W_enc": encoder.T.contiguous(),
            "b_enc": weights["encoder.bias"],
            "W_dec": weights["W_dec"],
            "b_dec": weights["b_dec"],
        },
        k=int(cfg.get("k", 32)),
        apply_b_dec_to_input=True,
        model=model,
        hook=sparsify_hook(folder.name),
        source=f"sparsify folder {folder}",
        metadata={"sparsify_hookpoint": folder.name},
    )


def load_sparsegap(path: Path, replica: int = 0) -> PretrainedSAE:
    folder = path / "checkpoint" if (path / "checkpoint").is_dir() else path
    cfg = _json(folder / "config.json")
    state = _tensors(folder / "model.safetensors")
    data, encoder = cfg.get("data") or {}, cfg.get("encoder") or {}
    name = encoder.get("name")
    if data.get("source") != "lm":
        raise ConfigError(f"{folder}: not a data=lm run (data.source={data.get('source')!r})")
    if name not in SPARSEGAP_ARCHITECTURES:
        raise ConfigError(
            f"{folder}: encoder={name} has no SAELens-style equivalent (its codes do not come"
            " from one linear map and a threshold); supported:"
            f" {', '.join(SPARSEGAP_ARCHITECTURES)}"
        )
    replicas = state["decoder.weight"].shape[0]
    if not 0 <= replica < replicas:
        raise ConfigError(f"sae.replica={replica} is invalid: the run has {replicas} replica(s)")
    scale = float(data.get("input_scale") or 1.0)
    atoms = state["decoder.weight"][replica]  # (d, L), the run's training scale
    d, latents = atoms.shape
    w_enc = (state["encoder.linear.weight"][replica].T * scale).contiguous()  # (d, L)
    zeros = torch.zeros(latents)

    def per_latent(key: str) -> torch.Tensor:
        return state[key][replica].reshape(latents) if key in state else zeros.clone()

    weights = {"W_enc": w_enc, "W_dec": (atoms.T / scale).contiguous(), "b_dec": torch.zeros(d)}
    if name == "gated":
        weights |= {k: per_latent(f"encoder.{k}") for k in ("b_gate", "b_mag", "r_mag")}
    else:
        weights["b_enc"] = per_latent("encoder.linear.bias")
    if name == "jumprelu":
        weights["threshold"] = per_latent("encoder.log_threshold").exp()
    if name == "batch_topk":  # ReLU(z)·[ReLU(z) > θ] = ReLU(z)·[z > θ] for θ ≥ 0
        weights["threshold"] = (
            state["encoder.threshold"][replica].reshape(1).expand(latents).clone()
        )
    return PretrainedSAE(
        architecture=SPARSEGAP_ARCHITECTURES[name],
        weights=weights,
        k=encoder.get("k") if name == "topk" else None,
        apply_b_dec_to_input=False,
        model=data.get("model_path") or data.get("model"),
        hook=data.get("hook"),
        source=f"sparsegap run {path} (encoder={name}, replica {replica})",
        metadata={
            "sparsegap_encoder": name,
            "context_size": data.get("context"),
            "prepend_bos": data.get("prepend_bos"),
            "exclude_special_tokens": data.get("exclude_special"),
            "dataset_path": data.get("text_files") or data.get("dataset"),
        },
    )


def load_release(release: str, sae_id: str, device: str = "cpu") -> PretrainedSAE:
    """An SAE by SAELens release and id, through SAELens's own loader (network, ``sae-lens``)."""
    try:
        from sae_lens import SAE
    except ImportError as error:
        raise ConfigError(
            f"sae.release={release!r} needs the sae-lens package ({error}); install it with"
            " `pip install sae-lens`, or give a local folder with sae.path"
        ) from None
    sae = SAE.from_pretrained(release, sae_id, device=device)
    sae = sae[0] if isinstance(sae, tuple) else sae  # older versions return (sae, cfg, sparsity)
    state = {k: v.detach().float().cpu() for k, v in sae.state_dict().items()}
    if "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").exp()
    cfg = sae.cfg.to_dict()
    meta = dict(cfg.get("metadata") or {})
    return PretrainedSAE(
        architecture=cfg["architecture"],
        weights={k: v for k, v in state.items() if not k.startswith("hook")},
        k=cfg.get("k"),
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        normalize_activations=cfg.get("normalize_activations", "none"),
        rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm", False),
        model=meta.get("model_name"),
        hook=meta.get("hook_name"),
        source=f"SAELens release {release} / {sae_id}",
        metadata=meta,
    )
