"""One small adapter over transformer-lens's two model classes.

transformer-lens 4.x wraps a Hugging Face model in ``TransformerBridge``; 3.x (what SAELens 6
requires) has ``HookedTransformer``, which 4.x removed. Both expose what the activation pipeline
and the downstream-loss measurement use — ``run_with_cache``, ``run_with_hooks``, ``hook_dict``,
``tokenizer``, ``cfg.n_layers``/``cfg.device`` — so the adapter only differs in how a model is
loaded, and everything else talks to the object it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def transformer_lens_major() -> int:
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0])


def load_language_model(name_or_path: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    """The transformer ``name_or_path`` (hub name or local ``save_pretrained`` folder with its
    tokenizer) as a hooked transformer-lens model in eval mode."""
    if transformer_lens_major() >= 4:
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(name_or_path, device=device, dtype=dtype)
    else:
        model = _hooked_transformer(name_or_path, device, dtype)
    model.eval()
    return model


def _hooked_transformer(name_or_path: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    from transformer_lens import HookedTransformer

    if not Path(name_or_path).is_dir():
        return HookedTransformer.from_pretrained_no_processing(
            name_or_path, device=device, dtype=dtype
        )
    # A local folder: HookedTransformer derives configs from official hub names (and 3.x's GPT-2
    # conversion reads config fields transformers 5 renamed), so the config is built here from
    # the folder's own and the weights converted by transformer-lens's GPT-2 converter.
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    hf = hf_model.config
    if hf.model_type != "gpt2":
        raise ValueError(
            f"transformer-lens {transformer_lens_major()}.x: local folders of GPT-2-type models"
            f" only (got {hf.model_type}); use a hub name"
        )
    cfg = HookedTransformerConfig(
        d_model=hf.n_embd,
        d_head=hf.n_embd // hf.n_head,
        n_heads=hf.n_head,
        d_mlp=hf.n_inner or 4 * hf.n_embd,
        n_layers=hf.n_layer,
        n_ctx=hf.n_positions,
        eps=hf.layer_norm_epsilon,
        d_vocab=hf.vocab_size,
        act_fn=hf.activation_function,
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        scale_attn_by_inverse_layer_idx=hf.scale_attn_by_inverse_layer_idx,
        device=str(device),
        dtype=dtype,
    )
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(name_or_path))
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.to(device)
