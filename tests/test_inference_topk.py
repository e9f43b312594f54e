"""Top-k sparse coding (iterative hard thresholding, App. F.2) against brute force.

The reference is test_inference_algorithms' exhaustive search over every K-subset of atoms with
non-negative least squares: the exact optimum of the K-sparse non-negative problem.
"""

from __future__ import annotations

import pytest
import torch
from test_inference_algorithms import (
    B,
    K,
    M,
    N,
    brute_force,
    counted_matmul_flops,
    exact_problem,
    infer,
    noisy_problem,
    residual_norms,
)

from sparsegap.config import InferenceConfig
from sparsegap.inference import INFERENCE, build_inference
from sparsegap.inference.topk import MAX_BACKTRACKS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_and_needs_a_budget():
    assert "topk" in INFERENCE
    x, atoms = noisy_problem(0)
    with pytest.raises(ValueError, match=r"encoder\.inference\.k"):
        infer("topk", x.float(), atoms.float())


@pytest.mark.parametrize("nonnegative", [True, False])
def test_at_most_k_nonzeros_per_sample(nonnegative):
    x, atoms = noisy_problem(1)
    codes = infer("topk", x.float(), atoms.float(), k=2, iterations=50, nonnegative=nonnegative)
    assert codes.shape == (2, N, B)
    assert ((codes != 0).sum(dim=1) <= 2).all()
    if nonnegative:
        assert (codes >= 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_exact_sparse_codes_like_brute_force(seed):
    """Noise-free K-sparse data in a well-conditioned dictionary: brute force recovers every
    code; NIHT with 500 iterations finds the same codes for most samples (measured 90 %, 70 %,
    75 % for seeds 0, 1, 2 with two replicas of 20 samples; 80 % over seeds 0-9; NN-OMP 80-95 %)."""
    x, atoms, truth = exact_problem(seed)
    best, _ = brute_force(x, atoms)
    torch.testing.assert_close(best, truth, atol=1e-6, rtol=1e-6)
    codes = infer("topk", x, atoms, k=K, iterations=500)
    exact = (codes - best).abs().amax(dim=1) < 1e-4
    assert exact.double().mean() >= 0.65, f"top-k recovered {exact.double().mean():.0%}"


def test_never_beats_brute_force_and_is_close_on_noisy_data():
    """No K-sparse non-negative solution beats the exhaustive optimum; IHT stays near it."""
    x, atoms = noisy_problem(4)
    _, best = brute_force(x, atoms)
    codes = infer("topk", x, atoms, k=K, iterations=500)
    residual = residual_norms(x, atoms, codes)
    assert (residual >= best - 1e-6).all()
    assert (residual <= best + 1e-4).double().mean() >= 0.6
    assert residual.mean() < 1.2 * best.mean()


def test_warm_start_from_the_answer_stays_there():
    x, atoms, truth = exact_problem(0)
    codes = infer("topk", x, atoms, init=truth, k=K, iterations=20)
    torch.testing.assert_close(codes, truth, atol=1e-9, rtol=1e-9)


def test_l1_only_shrinks_within_the_budget():
    x, atoms = noisy_problem(6)
    free = infer("topk", x, atoms, k=K, iterations=200)
    shrunk = infer("topk", x, atoms, l1=1.0, k=K, iterations=200)
    assert shrunk.sum() < free.sum()
    assert ((shrunk != 0).sum(dim=1) <= K).all()


def test_matmul_flops_match_the_counter():
    """The declared count is a typical iteration (two step-size tries); the counter sees between
    one try (four matmuls) and MAX_BACKTRACKS + 1 tries per iteration."""
    x, atoms = noisy_problem(12)
    x, atoms = x.float(), atoms.float()
    counts = {n: counted_matmul_flops("topk", n, x, atoms) for n in (1, 2, 3)}
    declared = build_inference(InferenceConfig(name="topk", iterations=1, k=K), 0.01)
    assert declared.flops(B, N, M).matmul == pytest.approx(counts[1], rel=0.1)
    matmul = 2 * M * N * B
    for n in (2, 3):
        assert 4 * matmul <= counts[n] - counts[n - 1] <= (4 + MAX_BACKTRACKS) * matmul
