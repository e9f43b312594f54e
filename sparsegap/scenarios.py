"""What is known, what is learned, and the training loss (paper §3.5).

- ``known_codes``: the true codes are given; the encoder regresses them (no decoder).
- ``known_dictionary``: the decoder is frozen at the true dictionary; the encoder learns to infer.
- ``unknown``: codes and dictionary are both learned from X alone.

Losses are computed per replica and summed over replicas, so each replica's gradient is exactly
the gradient it would get if trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Losses:
    """Per-replica loss terms (each of shape (R,)); ``total`` is what is minimised.

    ``auxiliary`` holds the encoder's own weighted terms (``Encoder.auxiliary_losses``), already
    included in ``total`` and logged as ``loss/<name>``.
    """

    total: Tensor
    mse: Tensor | None = None
    l1: Tensor | None = None
    cosine: Tensor | None = None
    auxiliary: dict[str, Tensor] = field(default_factory=dict)

    def named(self) -> dict[str, Tensor]:
        names = {"loss/total": self.total, "loss/mse": self.mse, "loss/l1": self.l1}
        names["loss/cosine"] = self.cosine
        for name, value in self.auxiliary.items():
            if f"loss/{name}" in names:
                raise ValueError(f"auxiliary loss {name!r} shadows a scenario loss term")
            names[f"loss/{name}"] = value
        return {k: v for k, v in names.items() if v is not None}


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: int  # the paper's number of training steps (scenario.steps of scenario=<name>)
    why_not: str  # shown when an encoder that does not apply (Encoder.scenarios) is asked for
    decoder: str  # "none" | "fixed" (the true dictionary) | "learned"
    needs_matching_latents: bool = False

    def loss(
        self,
        codes: Tensor,
        x: Tensor,
        true_codes: Tensor,
        atoms: Tensor | None,
        l1_coeff: float,
        *,
        l1_penalty: bool = True,
        auxiliary: dict[str, Tensor] | None = None,
        importance: Tensor | None = None,
        cosine: str = "latent",
    ) -> Losses:
        """codes (R, L, B); x (M, B); true_codes (N, B); atoms: the decoder (R, M, L) or None.
        ``l1_penalty=False`` leaves the L1 term out of the total (it is still returned);
        ``auxiliary`` terms (R,) are added to the total. ``cosine`` (known codes): each cosine
        similarity runs over one latent's samples (``latent``) or one sample's latents
        (``sample``).

        ``importance`` (N,): feature importance weights w (``SyntheticData.importance``; None =
        unweighted, the paper's loss bit for bit). They weight the per-feature terms of the loss
        where latent i *is* true feature i, as a weighted mean Σ w_i·term_i / Σ w_i (so all-ones
        weights give the unweighted value up to rounding):

        - ``known_codes``: the cosine term of each code row (feature).
        - ``known_dictionary``: the L1 term of each latent, mean_b S_ib. The reconstruction error
          stays unweighted: Elhage et al. (2022) weight the error per feature because their
          toy model reconstructs the features themselves, but here the error lives in X-space,
          where the atoms superpose; splitting it per feature would need the true codes, which
          this scenario does not give the encoder.
        - ``unknown``: the learned latents match the features only up to an unknown permutation,
          so there is no per-feature term to weight; ``importance`` is ignored.
        """
        auxiliary = auxiliary or {}
        extra = sum(auxiliary.values()) if auxiliary else None
        if not self.needs_matching_latents:
            importance = None
        if self.decoder == "none":
            # Negative mean cosine similarity between true and predicted codes (the authors found
            # it more stable than MSE for this regression), per latent row or per sample column.
            per_sample = cosine == "sample"
            terms = F.cosine_similarity(codes, true_codes.unsqueeze(0), dim=1 if per_sample else 2)
            if importance is None or per_sample:
                similarity = terms.mean(dim=1)
            else:
                similarity = _weighted_mean(terms, importance)
            total = -similarity if extra is None else extra - similarity
            return Losses(total=total, cosine=similarity, auxiliary=auxiliary)
        assert atoms is not None
        mse, l1 = reconstruction(codes, atoms, x)
        if importance is not None:  # codes are non-negative: |S| = S (see _Reconstruction)
            l1 = _weighted_mean(codes.mean(dim=2), importance)
        total = mse + l1_coeff * l1 if l1_penalty else mse
        if extra is not None:
            total = total + extra
        return Losses(total=total, mse=mse, l1=l1, auxiliary=auxiliary)


def _weighted_mean(terms: Tensor, weights: Tensor) -> Tensor:
    """Σ_i w_i·terms[:, i] / Σ_i w_i per replica: terms (R, N), weights (N,)."""
    return terms @ weights / weights.sum()


class _Reconstruction(torch.autograd.Function):
    """Per replica: mean((D·S - X)²) and mean(S), with a hand-written backward.

    Codes are non-negative for every encoder (ReLU or exp outputs), so mean|S| = mean(S) and its
    gradient is a constant; at S = 0 that constant is masked by the encoder's own ReLU, which
    makes the gradients identical to autograd's through ``abs`` (tests/test_scenarios.py checks
    both). Five kernels instead of about twenty: at the paper's problem size a training step is
    dominated by per-kernel overhead, not arithmetic.
    """

    @staticmethod
    def forward(ctx, codes: Tensor, atoms: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        residual = torch.baddbmm(x.expand(atoms.shape[0], *x.shape), atoms, codes, beta=-1)
        mse = residual.float().square().mean(dim=(1, 2))
        l1 = codes.float().mean(dim=(1, 2))
        ctx.save_for_backward(codes, atoms, residual)
        return mse, l1

    @staticmethod
    def backward(ctx, grad_mse: Tensor, grad_l1: Tensor) -> tuple[Tensor | None, ...]:
        codes, atoms, residual = ctx.saved_tensors
        dim, samples = residual.shape[1:]
        # Under autocast (device.autocast=bf16) the residual is bfloat16: the matmuls run in
        # its dtype and the gradients return in their inputs' dtypes.
        low = residual.dtype
        scale = (grad_mse * (2.0 / (dim * samples))).view(-1, 1, 1).to(low)
        grad_codes = grad_atoms = None
        if ctx.needs_input_grad[0]:
            l1_scale = (grad_l1 / codes[0].numel()).view(-1, 1, 1).to(low)
            grad_codes = torch.bmm(atoms.to(low).transpose(1, 2), residual)
            grad_codes = grad_codes.mul_(scale).add_(l1_scale).to(codes.dtype)
        if ctx.needs_input_grad[1]:
            grad_atoms = torch.bmm(residual, codes.to(low).transpose(1, 2))
            grad_atoms = grad_atoms.mul_(scale).to(atoms.dtype)
        return grad_codes, grad_atoms, None


def reconstruction(codes: Tensor, atoms: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(mse, mean(codes)) per replica: non-negative codes (R, L, B), atoms (R, M, L), x (M, B)."""
    return _Reconstruction.apply(codes, atoms, x)


@torch.no_grad()
def reconstruction_backward(
    codes: Tensor,
    atoms: Tensor,
    x: Tensor,
    l1_coeff: float | Tensor,
    atoms_grad: bool,
    losses: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor | None]:
    """``reconstruction`` and its backward by hand, for encoders' ``fast_step``: per replica
    (mse, mean(codes)) in fp32 (None, None unless ``losses``: a step that nobody logs skips
    four kernels), the gradient of mse + l1_coeff·mean(codes) with respect to the
    codes (R, L, B; the L1 constant not yet masked by the encoder's ReLU), and with respect to the
    atoms (R, M, L) when ``atoms_grad``. x and atoms come in the codes' dtype (the loop casts them
    once); the MSE's scale is folded into the small residual, so no pass over the codes is spent
    on it."""
    replicas, dim, latents = atoms.shape
    samples = x.shape[1]
    residual = torch.baddbmm(x.expand(replicas, dim, samples), atoms, codes, beta=-1)
    mse = l1 = None
    if losses:
        mse = residual.float().square().mean(dim=(1, 2))
        l1 = codes.float().mean(dim=(1, 2))
    residual.mul_(2.0 / (dim * samples))
    grad_codes = torch.bmm(atoms.transpose(1, 2), residual).add_(l1_coeff / (latents * samples))
    grad_atoms = torch.bmm(residual, codes.transpose(1, 2)) if atoms_grad else None
    return mse, l1, grad_codes, grad_atoms


def relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """The gradient through ``output = ReLU(·)``, in place in ``grad``."""
    return torch.ops.aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="known_codes",
            steps=20_000,
            why_not=(
                "with the true codes known the task is latent regression, which only an amortised"
                " encoder can learn; sparse coding and SAE+ITO optimise codes against a dictionary"
                " and have nothing to fit here (paper §3.5)."
            ),
            decoder="none",
            needs_matching_latents=True,
        ),
        Scenario(
            name="known_dictionary",
            steps=20_000,
            why_not=(
                "with the dictionary fixed, sparse coding reduces to SAE+ITO (inference against"
                " the known dictionary), so use encoder=sae_ito (paper §3.5)."
            ),
            decoder="fixed",
            needs_matching_latents=True,
        ),
        Scenario(
            name="unknown",
            steps=40_000,
            why_not="",
            decoder="learned",
        ),
    )
}
