"""A trained SAE in one common form, whichever library trained it.

Rows are tokens, as in SAELens and sparsify: ``encode`` maps activations (..., d) to codes
(..., L), ``decode`` maps codes back. The weights follow SAELens's names and shapes (W_enc (d, L),
W_dec (L, d)), so export writes them as they are. What differs between libraries is folded in
at load time (sparsify's TopK is SAELens's with ``apply_b_dec_to_input``; sparsegap's training
scale goes into the weights), so one encode serves all four architectures:

    y  = normalise(x) - b_dec·apply_b_dec_to_input
    standard:  ReLU(y·W_enc + b_enc)
    topk:      TopK_k(y·W_enc + b_enc) with ReLU on the kept values (pre-activations × ‖W_dec row‖
               first when ``rescale_acts_by_decoder_norm``)
    jumprelu:  ReLU(z)·[z > θ],  z = y·W_enc + b_enc
    gated:     [y·W_enc + b_gate > 0] · ReLU(y·(W_enc ⊙ exp(r_mag)) + b_mag)
    decode:    denormalise(codes·W_dec + b_dec)

The decoder is linear in the codes (in the normalised space), which is what lets iterative
inference run on the SAE's own dictionary: ``atoms`` is that dictionary as columns (d, L) and
``target`` the point the codes should reconstruct (normalise(x) - b_dec).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from sparsegap.config import ConfigError

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
# SAELens's ``normalize_activations``. "expected_average_only_in" is a constant factor that
# SAELens folds into the weights when it knows it (from_pretrained) and otherwise ignores
# (load_from_disk): the same here, with ``scaling_factor`` as the way to give it.
NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_WEIGHTS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"),
}


@dataclass
class PretrainedSAE:
    """Weights (float32 by default, any device) and conventions of one SAE."""

    architecture: str
    weights: dict[str, Tensor]
    k: int | None = None  # topk: active latents per token
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False  # topk: rank by pre-activation × ‖W_dec row‖
    model: str | None = None  # the transformer it was trained on (hub name or local folder)
    hook: str | None = None  # its transformer-lens hook point
    source: str = ""  # where it was loaded from, for reports
    metadata: dict[str, Any] = field(default_factory=dict)  # kept and written back on export

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture={self.architecture!r} is not supported ({self.source}); allowed:"
                f" {', '.join(ARCHITECTURES)}"
            )
        if self.normalize_activations not in NORMALISATIONS:
            raise ConfigError(
                f"normalize_activations={self.normalize_activations!r} is not supported"
                f" ({self.source}); allowed: {', '.join(NORMALISATIONS)}"
            )
        missing = [name for name in _WEIGHTS[self.architecture] if name not in self.weights]
        if missing:
            raise ConfigError(
                f"{self.source}: the {self.architecture} weights lack {', '.join(missing)}"
            )
        d, latents = self.weights["W_enc"].shape
        expected = {"W_dec": (latents, d), "b_dec": (d,)}
        expected |= {
            name: (latents,) for name in ("b_enc", "threshold", "b_gate", "b_mag", "r_mag")
        }
        for name, tensor in self.weights.items():
            if name in expected and tuple(tensor.shape) != expected[name]:
                raise ConfigError(
                    f"{self.source}: {name} has shape {tuple(tensor.shape)}, expected"
                    f" {expected[name]} for W_enc {(d, latents)}"
                )
        if self.architecture == "topk" and not (self.k and 0 < self.k <= latents):
            raise ConfigError(f"{self.source}: topk needs 1 <= k <= {latents}, got k={self.k}")

    @property
    def dim(self) -> int:
        return self.weights["W_enc"].shape[0]

    @property
    def latents(self) -> int:
        return self.weights["W_enc"].shape[1]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        weights = {k: v.to(device=device, dtype=dtype) for k, v in self.weights.items()}
        return replace(self, weights=weights)

    def fold_scaling_factor(self, factor: float) -> PretrainedSAE:
        """The SAE for activations that are *not* pre-multiplied by ``factor`` (SAELens's
        ``fold_activation_norm_scaling_factor``): W_enc·factor, W_dec/factor, b_dec/factor."""
        w = dict(self.weights)
        w["W_enc"], w["W_dec"], w["b_dec"] = (
            w["W_enc"] * factor,
            w["W_dec"] / factor,
            w["b_dec"] / factor,
        )
        return replace(self, weights=w, normalize_activations="none")

    # ------------------------------------------------------------ normalisation (per token)
    def normalise(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x in the SAE's input space, and what ``denormalise`` needs to undo it."""
        if self.normalize_activations == "constant_norm_rescale":
            coeff = self.dim**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff, torch.zeros_like(coeff))
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + 1e-5), (1 / std, mu)  # SAELens undoes it with std, not std+ε
        return x, None

    @staticmethod
    def denormalise(y: Tensor, state: tuple[Tensor, Tensor] | None) -> Tensor:
        if state is None:
            return y
        scale, shift = state
        return y / scale + shift

    # ------------------------------------------------------------ encode / decode
    def pre_activation(self, y: Tensor) -> Tensor:
        """W_enc-side pre-activation of normalised inputs y (the gate's, for gated)."""
        w = self.weights
        y = y - w["b_dec"] if self.apply_b_dec_to_input else y
        bias = w["b_gate"] if self.architecture == "gated" else w["b_enc"]
        return y @ w["W_enc"] + bias

    def encode_normalised(self, y: Tensor) -> Tensor:
        w = self.weights
        pre = self.pre_activation(y)
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > w["threshold"])
        if self.architecture == "gated":
            centred = y - w["b_dec"] if self.apply_b_dec_to_input else y
            magnitude = centred @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
            return (pre > 0).to(y.dtype) * magnitude.relu()
        if self.rescale_acts_by_decoder_norm:
            pre = pre * w["W_dec"].norm(dim=-1)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def encode(self, x: Tensor) -> Tensor:
        """Codes (..., L) of activations x (..., d), as the library that trained it encodes."""
        return self.encode_normalised(self.normalise(x)[0])

    def atoms(self) -> Tensor:
        """The dictionary D (d, L) with decode_normalised(s) = D·s + b_dec (columns = atoms)."""
        w_dec = self.weights["W_dec"]
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        return w_dec.T

    def decode_normalised(self, codes: Tensor) -> Tensor:
        w_dec = self.weights["W_dec"]
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            codes = codes * (1 / w_dec.norm(dim=-1))  # SAELens's order of operations: same bits
        return codes @ w_dec + self.weights["b_dec"]

    def decode(self, codes: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstructions (..., d) of codes (..., L). Per-token normalisations need the
        activations x the codes were encoded from (SAELens keeps them from its last encode)."""
        if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ValueError(
                    f"decode needs x for normalize_activations={self.normalize_activations}"
                )
            return self.denormalise(self.decode_normalised(codes), self.normalise(x)[1])
        return self.decode_normalised(codes)

    def reconstruct(self, x: Tensor) -> Tensor:
        y, state = self.normalise(x)
        return self.denormalise(self.decode_normalised(self.encode_normalised(y)), state)

    def target(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """What D·s must reconstruct for x: normalise(x) - b_dec, and the normalisation state."""
        y, state = self.normalise(x)
        return y - self.weights["b_dec"], state

    def nominal_l0(self) -> int | None:
        """The L0 the architecture fixes (TopK's k), None when the data decides."""
        return self.k if self.architecture == "topk" else None

    def encode_flops_per_token(self) -> int:
        """Multiply-adds ×2 of the encoder's matmul(s) plus its elementwise work, per token."""
        matmuls = 2 if self.architecture == "gated" else 1
        return matmuls * 2 * self.dim * self.latents + 4 * self.latents + 2 * self.dim
