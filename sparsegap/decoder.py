"""The linear decoder X̂ = D·S shared by every encoder: learned with unit-norm atoms, or fixed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparsegap.encoders.layers import AuthorsGenerator, authors_decoder_weight, per_replica
from sparsegap.flops import Flops, renormalise_columns


class Decoder(nn.Module):
    """Dictionary of shape (R, M, L): one column (atom) per latent, one dictionary per replica.

    Learned atoms start Gaussian (the authors' code, for every encoder), i.e. uniformly random
    directions once normalised. ``fixed`` replaces learning with a given (M, L) dictionary
    shared by all replicas (the known-dictionary scenario).
    """

    def __init__(
        self,
        dim: int,
        latents: int,
        generators: Sequence[torch.Generator],
        normalise: bool = True,
        fixed: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.normalise = normalise
        self.learned = fixed is None
        if fixed is not None:
            self.register_buffer("weight", fixed.expand(len(generators), *fixed.shape).clone())
        else:
            weight = per_replica(
                generators,
                lambda g: (
                    authors_decoder_weight(g, dim, latents)
                    if isinstance(g, AuthorsGenerator)
                    else torch.randn(dim, latents, generator=g)
                ),
            )
            self.weight = nn.Parameter(weight)
        self.renormalise_()

    @torch.no_grad()
    def renormalise_(self) -> None:
        """Rescale learned atoms to unit norm in place (before every forward pass, as the authors
        do), so the L1 penalty cannot be dodged by growing the atoms."""
        if self.learned and self.normalise:
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min_(1e-12))

    def forward(self, codes: Tensor) -> Tensor:
        return torch.bmm(self.weight, codes)

    def step_flops(self) -> Flops:
        dim, latents = self.weight.shape[1:]
        return renormalise_columns(dim, latents) if self.learned and self.normalise else Flops()
