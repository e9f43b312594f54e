"""The SAE's model: its held-out activations, and its loss when a reconstruction replaces them.

Harvesting goes through the activation pipeline (``data.activations``: the same contexts, hook
and kept positions as training), keeping the tokens and which positions were kept, so a
reconstruction of the kept rows can be put back at the hook. The downstream numbers, over the
next-token predictions of the first ``gap.lm_contexts`` contexts:

* ``ce_loss``: cross-entropy with the reconstruction at the hook (kept positions; BOS and EOS
  keep their own activations, as in training);
* ``kl``: KL(clean ‖ patched) of the next-token distributions, mean per prediction;
* ``ce_recovered``: (CE_zero − CE) / (CE_zero − CE_clean), with CE_zero the loss when the kept
  positions are zero-ablated (1 = as good as the clean model, 0 = as bad as ablation).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from sparsegap.data import activations


@torch.no_grad()
def harvest(model: Any, d: DictConfig, tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """Whole contexts until at least ``tokens`` kept rows: (contexts (n, ctx) int64, rows
    (T, d) float32 in context-major order, kept mask (n, ctx))."""
    batches, rows, masks, total = [], [], [], 0
    special = torch.tensor(sorted(activations._special_ids(model)))
    for batch in activations.contexts(d, model.tokenizer):
        rows.append(activations.activations_of(model, batch, d).cpu())
        keep = (
            ~torch.isin(batch, special)
            if d.exclude_special
            else torch.ones_like(batch, dtype=torch.bool)
        )
        batches.append(batch)
        masks.append(keep)
        total += rows[-1].shape[0]
        if total >= tokens:
            break
    if total < tokens:
        from sparsegap.config import ConfigError

        raise ConfigError(
            f"data.tokens={tokens} is invalid: the text gives only {total} activation tokens;"
            " add text or lower data.tokens"
        )
    return torch.cat(batches), torch.cat(rows), torch.cat(masks)


def _patch(hook: str, mask: Tensor, rows: Tensor | None) -> list[tuple[str, Any]]:
    def replace(activation: Tensor, hook: Any = None) -> Tensor:
        out = activation.clone()
        flat = out.view(*out.shape[:2], -1)  # heads × d_head hooks as one axis, like harvesting
        flat[mask] = 0.0 if rows is None else rows.to(out.dtype)
        return out

    return [(hook, replace)]


def _next_token_logprobs(model: Any, tokens: Tensor, hooks: list[tuple[str, Any]]) -> Tensor:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
    return logits[:, :-1].float().log_softmax(dim=-1)


@torch.no_grad()
def downstream(
    model: Any, hook: str, tokens: Tensor, mask: Tensor, reconstructions: dict[str, Tensor]
) -> dict[str, dict[str, float]]:
    """Per method: ce_loss, kl and ce_recovered with its reconstruction rows (of ``mask``'s kept
    positions, context-major) at ``hook``; plus the clean and zero-ablated CE under "clean" and
    "zero_ablation"."""
    device = next(model.parameters()).device
    tokens, mask = tokens.to(device), mask.to(device)
    targets = tokens[:, 1:]

    def ce(logprobs: Tensor) -> float:
        return float(-logprobs.gather(-1, targets[..., None]).mean())

    clean = _next_token_logprobs(model, tokens, [])
    zero = _next_token_logprobs(model, tokens, _patch(hook, mask, None))
    ce_clean, ce_zero = ce(clean), ce(zero)
    out = {"clean": {"ce_loss": ce_clean}, "zero_ablation": {"ce_loss": ce_zero}}
    for method, rows in reconstructions.items():
        patched = _next_token_logprobs(model, tokens, _patch(hook, mask, rows.to(device)))
        ce_patched = ce(patched)
        kl = float((clean.exp() * (clean - patched)).sum(-1).mean())
        recovered = (
            (ce_zero - ce_patched) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan")
        )
        out[method] = {"ce_loss": ce_patched, "kl": kl, "ce_recovered": recovered}
    return out
