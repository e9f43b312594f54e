"""Evaluation metrics: mean correlation coefficient (MCC) of codes and dictionaries, sparsity.

All functions take column batches (one column per sample) with a leading replica axis on the
learned side and return one value per replica.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def pearson_matrix(true: Tensor, learned: Tensor) -> Tensor:
    """|Pearson correlation| between every true row (N, B) and every learned row (R, L, B),
    computed over the B columns: shape (R, N, L). Rows with zero variance correlate 0."""
    a = true.double() - true.double().mean(dim=-1, keepdim=True)
    b = learned.double() - learned.double().mean(dim=-1, keepdim=True)
    return _normalised_abs_products(a, b)


def cosine_matrix(true: Tensor, learned: Tensor) -> Tensor:
    """|cosine similarity| between rows, uncentred: shape (R, N, L); zero rows give 0."""
    return _normalised_abs_products(true.double(), learned.double())


def _normalised_abs_products(a: Tensor, b: Tensor) -> Tensor:
    na = a.norm(dim=-1, keepdim=True)
    nb = b.norm(dim=-1, keepdim=True)
    a = torch.where(na > 0, a / na.clamp_min(1e-300), 0.0)
    b = torch.where(nb > 0, b / nb.clamp_min(1e-300), 0.0)
    return (a @ b.transpose(-1, -2)).abs()


def matched_mean(similarity: Tensor) -> Tensor:
    """Mean similarity over the optimal one-to-one matching (Hungarian / rectangular
    ``linear_sum_assignment``) of each replica's (N, L) matrix; min(N, L) pairs are matched."""
    sims = similarity.detach().cpu().numpy()
    out = np.empty(sims.shape[0])
    for r, sim in enumerate(sims):
        rows, cols = linear_sum_assignment(sim, maximize=True)
        out[r] = sim[rows, cols].mean()
    return torch.from_numpy(out)


def latent_mcc(true_codes: Tensor, codes: Tensor) -> Tensor:
    """MCC between true codes (N, B) and inferred codes (R, L, B): (R,)."""
    return matched_mean(pearson_matrix(true_codes, codes))


def dictionary_mcc(true_dictionary: Tensor, atoms: Tensor, similarity: str = "pearson") -> Tensor:
    """MCC between true atoms (M, N) and learned atoms (R, M, L), matched like latents. The
    authors' ``pearson`` centres each atom over its M coordinates; ``cosine`` does not."""
    if similarity not in ("pearson", "cosine"):
        raise ValueError(f"similarity must be 'pearson' or 'cosine', not {similarity!r}")
    fn = pearson_matrix if similarity == "pearson" else cosine_matrix
    return matched_mean(fn(true_dictionary.T, atoms.transpose(1, 2)))


def l0(codes: Tensor) -> Tensor:
    """Mean number of non-zero codes per sample: (R,)."""
    return (codes != 0).sum(dim=1).double().mean(dim=1)


# Relative size below which l0_thresholded does not count a code as active.
L0_THRESHOLD = 1e-3


def l0_thresholded(codes: Tensor, relative: float = L0_THRESHOLD) -> Tensor:
    """Mean number of codes per sample above ``relative`` × that sample's largest |code|: (R,).
    Iterative inference (sparse coding on log-codes) leaves tiny non-zero codes everywhere, so
    its exact L0 is N whatever its sparsity; this count says how many codes matter."""
    size = codes.abs()
    largest = size.amax(dim=1, keepdim=True)
    return ((size > relative * largest) & (size > 0)).sum(dim=1).double().mean(dim=1)


def l1(codes: Tensor) -> Tensor:
    """Mean L1 norm of the codes per sample: (R,)."""
    return codes.abs().sum(dim=1).double().mean(dim=1)


def dead_latents(codes: Tensor) -> Tensor:
    """Latents that are zero on every sample of the batch: (R,) counts."""
    return (codes == 0).all(dim=2).sum(dim=1).double()


def normalised_mse(x: Tensor, reconstruction: Tensor) -> Tensor:
    """MSE of the reconstructions (R, M, B) of x (M, B), divided by the MSE of predicting every
    sample by the mean sample (so 1 = no better than the mean, 0 = exact): (R,)."""
    x = x.double()
    baseline = (x - x.mean(dim=1, keepdim=True)).square().sum()
    return (reconstruction.double() - x).square().sum(dim=(1, 2)) / baseline


def explained_variance(x: Tensor, reconstruction: Tensor) -> Tensor:
    """1 − Var(x − x̂) / Var(x), variances summed over the M dimensions (a constant offset of
    the reconstruction is not penalised, unlike in the normalised MSE): (R,)."""
    x = x.double()
    residual = x - reconstruction.double()
    residual = residual - residual.mean(dim=2, keepdim=True)
    total = (x - x.mean(dim=1, keepdim=True)).square().sum()
    return 1 - residual.square().sum(dim=(1, 2)) / total


def dead_in_window(last_fired: Tensor, samples: int, window: int) -> Tensor:
    """Latents that have not fired in the last ``window`` training samples, from the sample
    count at which each last fired (R, L; 0 = never): (R,) counts. Before ``window`` samples
    are seen, those that never fired."""
    return (last_fired <= max(samples - window, 0)).sum(dim=1).double()
