"""Triton kernels for a fused SAE training step on a GPU: ``step.Step`` runs ``SAETrainer``
for the SAE's hand-written step (``encoder.fast_step``) on CUDA with ``device.autocast=bf16``, and
``sparsegap.bench.gpu`` measures the kernels (its ``FusedSAEStep`` adds a CUDA graph, persistent
bf16 weight copies and a second stream).

Why: at the paper's LM shape (768 → 24,576 latents, 4,096-token batches) a plain step spends
almost half its time in memory-bound passes over the 4,096 × 24,576 code matrix and the 37.7 M
fp32 parameters, not in its five GEMMs. These kernels fold those passes into work that happens
anyway:

- ``forward_residual`` (here): the ReLU in the encoder GEMM's cuBLASLt epilogue, the MSE scale
  and ``−x`` in the decoder GEMM's alpha and beta.
- ``masked_grad`` (``code_grad``): the code gradient GEMM ``r·D`` with the L1 constant, the ReLU
  mask (read from the codes), the cast to bf16 and the train statistics (each latent's sum of
  codes, for L1 and dead-latent tracking, and the count of active codes, for L0) in its
  epilogue — one read of the codes instead of three extra passes.
- ``adam_``, ``adam_atoms_`` (``adam``): Adam in fp32 (exactly ``torch.optim.Adam``'s update)
  that writes the parameter's bf16 copy in the same pass; for the decoder, adds up the atoms'
  squared norms for ``renormalise_`` (or, for atoms in rows, renormalises them in the same pass,
  ``adam_atoms_``). The step count lives on the device (CUDA-graph safe).

Layout: token-major (one row per token), as cuBLAS and the activation cache prefer: codes and
their gradient (B, L), the encoder weight (L, d), the decoder (d, L) with one atom per column.
Importing this package needs ``triton`` (CUDA builds of torch bring it; ``train`` imports it only
where it applies). ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (slowly; fp32 only:
the interpreter's bf16 ``tl.dot`` is wrong), which is how tests/test_fused.py checks them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegap.accel.fused.adam import adam_, adam_atoms_, renormalise_
from sparsegap.accel.fused.code_grad import autotune_timings, masked_grad, persistent_choices

__all__ = [
    "SAETrainer",
    "adam_",
    "adam_atoms_",
    "autotune_timings",
    "forward_residual",
    "masked_grad",
    "persistent_choices",
    "renormalise_",
    "residual_mse",
    "tma_ok",
]


def forward_residual(
    x: Tensor, encoder_low: Tensor, atoms_low: Tensor, zero_bias: Tensor
) -> tuple[Tensor, Tensor, float]:
    """The SAE's forward pass and the scaled residual, token-major, with the elementwise work in
    cuBLASLt epilogues: codes = ReLU(x·Wᵀ) (B, L), and residual = scale·(codes·Dᵀ − x) (B, d)
    where scale = 2/(d·B) makes it ∂mse/∂(codes·Dᵀ). Returns (codes, residual, scale)."""
    batch, dim = x.shape
    codes = torch._addmm_activation(zero_bias, x, encoder_low.T)
    scale = 2.0 / (dim * batch)
    residual = torch.addmm(x, codes, atoms_low.T, beta=-scale, alpha=scale)
    return codes, residual, scale


def residual_mse(residual: Tensor, scale: float) -> Tensor:
    """mean((codes·Dᵀ − x)²) from ``forward_residual``'s scaled residual (one small pass)."""
    return residual.float().square().sum() / (scale * scale * residual.numel())


def tma_ok(device: torch.device, *row_bytes: int) -> bool:
    """Whether the TMA kernel applies: a Hopper-or-later GPU and rows of 16-byte multiples
    (freshly allocated tensors start aligned)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        return False
    return all(n % 16 == 0 for n in row_bytes)


class SAETrainer:
    """``step.Step``'s hand-written SAE step (``encoder.fast_step``) as fused kernels, for a
    ReLU SAE without encoder bias on a GPU with ``device.autocast=bf16``: bf16 GEMMs on copies of
    the fp32 weights that this module's Adam rewrites as it updates them, the code gradient and
    the train statistics from ``masked_grad``, and the Adam update on the framework optimiser's
    own moments and step counts (so checkpoints and resumption are unchanged).

    It keeps a normalised decoder's atoms at unit norm itself (``adam_`` adds up the updated
    atoms' squared norms, ``renormalise_`` divides by them and writes the copy, so the caller
    must not renormalise before each step; not ``adam_atoms_``' single pass, which is for atoms
    in rows). When the weights change outside it (a checkpoint loaded, an evaluation's
    ``renormalise_``: torch counts in-place writes in ``Tensor._version``, its kernels' writes are
    not counted), the next step first renormalises and refreshes the copies. It takes the same
    steps as the framework's autograd step (tests/test_fused.py checks it in fp32 through
    Triton's interpreter); ``low`` is the GEMMs' dtype."""

    def __init__(self, weight: Tensor, decoder, optimiser, low: torch.dtype) -> None:
        # decoder: sparsegap.decoder.Decoder (weight (R, d, L), learned, normalise, renormalise_)
        self.weight, self.decoder, self.low, self.optimiser = weight, decoder, low, optimiser
        self.atoms = decoder.weight
        self.learned = decoder.learned
        self.normalised = decoder.learned and decoder.normalise
        index = {id(p): i for i, p in enumerate(optimiser.params)}
        self.slots = [index[id(weight)]] + ([index[id(self.atoms)]] if self.learned else [])
        replicas, latents, _ = weight.shape
        self.weight_low = torch.empty_like(weight, dtype=low)
        self.atoms_low = torch.empty_like(self.atoms, dtype=low)
        self.seen: tuple[int, int] | None = None  # the weights' versions the copies match
        self.zero_bias = torch.zeros(latents, device=weight.device, dtype=low)
        self.count = torch.zeros(replicas, 1, device=weight.device, dtype=torch.int32)
        self.sums = torch.zeros(replicas, latents, device=weight.device)
        # The atoms' squared norms, from the decoder's Adam pass to its renormalisation
        norms = torch.zeros(replicas, latents, device=weight.device)
        self.sumsq = norms if self.normalised else None
        size = torch.finfo(low).bits // 8
        self.tma = tma_ok(weight.device, weight.shape[2] * size, latents * size)
        # masked_grad's TMA kernel or its persistent form: None times both once (per shape)
        self.persistent: bool | None = None

    def _refresh(self) -> None:
        """Renormalise and copy the weights where they changed since this trainer last wrote."""
        versions = (self.weight._version, self.atoms._version)
        if versions == self.seen:
            return
        self.decoder.renormalise_()
        self.weight_low.copy_(self.weight)
        self.atoms_low.copy_(self.atoms)
        self.seen = (self.weight._version, self.atoms._version)

    @torch.no_grad()
    def __call__(
        self, x: Tensor, l1_coeff: float, track: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """One Adam step of every replica on the batch ``x`` (d, B). With ``track``, returns per
        replica (mse, mean code, mean L0) and which latents fired (R, L)."""
        self._refresh()
        opt = self.optimiser
        opt.t += 1
        torch._foreach_add_(opt.steps, 1)
        betas, eps = (opt.beta1, opt.beta2), opt.eps
        xt = x.T.to(self.low).contiguous()  # (B, d)
        batch = xt.shape[0]
        replicas, latents, _ = self.weight.shape
        constant = l1_coeff / (latents * batch)
        mse = torch.zeros(replicas, device=xt.device) if track else None
        if track:
            self.count.zero_()
            self.sums.zero_()
        for r in range(replicas):
            encoder_low, atoms_low = self.weight_low[r], self.atoms_low[r]
            codes, residual, scale = forward_residual(xt, encoder_low, atoms_low, self.zero_bias)
            stats = (self.count[r], self.sums[r]) if track else None
            grad_pre = masked_grad(
                residual, atoms_low, codes, constant, stats=stats, tma=self.tma,
                persistent=self.persistent,
            )  # fmt: skip
            # The atoms' update last: it rewrites atoms_low, which the code gradient reads.
            i = self.slots[0]
            moments = opt.exp_avg[i][r], opt.exp_avg_sq[i][r]
            adam_(self.weight[r], grad_pre.T @ xt, *moments, opt.steps[i], opt.lr, betas, eps,
                  low=encoder_low)  # fmt: skip
            if self.learned:
                i = self.slots[1]
                sumsq = self.sumsq[r].zero_() if self.sumsq is not None else None
                # A normalised decoder's bf16 copy is written by the renormalisation, not Adam.
                copy = atoms_low if sumsq is None else None
                adam_(self.atoms[r], residual.T @ codes, opt.exp_avg[i][r], opt.exp_avg_sq[i][r],
                      opt.steps[i], opt.lr, betas, eps, low=copy, sumsq=sumsq)  # fmt: skip
                if sumsq is not None:
                    renormalise_(self.atoms[r], atoms_low, sumsq)
            if mse is not None:
                mse[r] = residual_mse(residual, scale)
        if mse is None:
            return None
        l1 = self.sums.sum(dim=1) / (latents * batch)
        l0 = self.count[:, 0].float() / batch
        return mse, l1, l0, self.sums > 0
