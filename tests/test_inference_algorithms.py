"""ISTA/FISTA, MP/OMP and gradient pursuit against brute force on small problems.

The reference is an exhaustive search over every K-subset of atoms with non-negative least squares
(scipy.optimize.nnls) on it, for K ≤ 3 and N ≤ 12: the exact optimum of the K-sparse non-negative
problem. Problems have R = 2 replicas with different dictionaries and a shared x.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch.utils.flop_counter import FlopCounterMode

from sparsegap.config import DataConfig, InferenceConfig
from sparsegap.data import make_synthetic
from sparsegap.inference import INFERENCE, build_inference
from sparsegap.metrics import latent_mcc

PURSUITS = ("mp", "omp", "gp")
ALGORITHMS = ("ista", "fista", *PURSUITS)
M, N, K, B = 8, 12, 3, 20


pytestmark = pytest.mark.usefixtures("one_thread")


def infer(name: str, x, atoms, init=None, l1: float = 0.0, **fields):
    return build_inference(InferenceConfig(name=name, **fields), l1)(x, atoms, init)


def unit_dictionary(generator: torch.Generator, dim: int = M, atoms: int = N, tries: int = 1):
    """Unit-norm Gaussian dictionary; with ``tries`` > 1 the least coherent of that many draws."""
    best = None
    for _ in range(tries):
        d = torch.randn(dim, atoms, generator=generator, dtype=torch.float64)
        d /= d.norm(dim=0)
        coherence = (d.T @ d - torch.eye(atoms, dtype=torch.float64)).abs().max()
        if best is None or coherence < best[0]:
            best = (coherence, d)
    return best[1]


def sparse_codes(generator: torch.Generator, samples: int = B, atoms: int = N, k: int = K):
    """Exactly k-sparse non-negative codes (atoms, samples), values |N(0,1)| + 0.1."""
    support = torch.rand(samples, atoms, generator=generator).argsort(dim=1)[:, :k]
    values = torch.randn(samples, k, generator=generator, dtype=torch.float64).abs() + 0.1
    return torch.zeros(samples, atoms, dtype=torch.float64).scatter_(1, support, values).T


def exact_problem(seed: int):
    """Noise-free K-sparse x in a well-conditioned dictionary; replica 1's dictionary is replica
    0's with its atoms permuted, so x is exactly K-sparse for both. Returns x, atoms, true codes."""
    g = torch.Generator().manual_seed(seed)
    d = unit_dictionary(g, tries=200)
    perm = torch.randperm(N, generator=g)
    codes = sparse_codes(g)
    atoms = torch.stack([d, d[:, perm]])
    return d @ codes, atoms, torch.stack([codes, codes[perm]])


def noisy_problem(seed: int):
    """x = D₀·S + noise with two independent random dictionaries (so x is sparse in neither)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.stack([unit_dictionary(g), unit_dictionary(g)])
    x = atoms[0] @ sparse_codes(g) + 0.1 * torch.randn(M, B, generator=g, dtype=torch.float64)
    return x, atoms


def brute_force(x, atoms, k: int = K):
    """Best k-sparse non-negative codes by exhaustive support search: (codes (R, N, B), residual
    norms (R, B)). K-subsets suffice: NNLS on a superset can zero coefficients."""
    x, atoms = x.double().numpy(), atoms.double().numpy()
    replicas, _, latents = atoms.shape
    codes = np.zeros((replicas, latents, x.shape[1]))
    residual = np.full((replicas, x.shape[1]), np.inf)
    for r, b in itertools.product(range(replicas), range(x.shape[1])):
        for support in itertools.combinations(range(latents), k):
            coef, norm = nnls(atoms[r][:, support], x[:, b])
            if norm < residual[r, b]:
                residual[r, b] = norm
                codes[r, :, b] = 0
                codes[r, list(support), b] = coef
    return torch.from_numpy(codes), torch.from_numpy(residual)


def residual_norms(x, atoms, codes):
    return (atoms.double() @ codes.double() - x.double()).norm(dim=1)


def objective(x, atoms, codes, l1):
    """The inference objective per replica: ||D·S - X||²/(M·B) + l1·mean|S|."""
    x, atoms, codes = x.double(), atoms.double(), codes.double()
    mse = (atoms @ codes - x).square().mean(dim=(1, 2))
    return mse + l1 * codes.abs().mean(dim=(1, 2))


def correlation(a, b):
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


# --- interface -------------------------------------------------------------------------------


def test_registered():
    assert set(ALGORITHMS) <= set(INFERENCE)


@pytest.mark.parametrize("name", PURSUITS)
def test_pursuits_need_k(name):
    x, atoms = noisy_problem(0)
    with pytest.raises(ValueError, match=r"encoder\.inference\.k"):
        infer(name, x.float(), atoms.float())
    with pytest.raises(ValueError, match=r"encoder\.inference\.k"):
        build_inference(InferenceConfig(name=name), 0.0).flops(B, N, M)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("nonnegative", [True, False])
def test_shapes_signs_and_batch_independence(name, nonnegative):
    """(R, L, B) codes; non-negative when asked; each column depends on its own sample only."""
    x, atoms = noisy_problem(1)
    x, atoms = x.float(), atoms.float()
    fields = dict(k=K, iterations=50, nonnegative=nonnegative)
    codes = infer(name, x, atoms, l1=0.01, **fields)
    assert codes.shape == (2, N, B) and codes.dtype == torch.float32
    assert torch.isfinite(codes).all()
    if nonnegative:
        assert (codes >= 0).all()
    else:
        assert (codes < 0).any()
    if name in PURSUITS:
        assert ((codes != 0).sum(dim=1) <= K).all()
    part = infer(name, x[:, 3:8].contiguous(), atoms, l1=0.01, **fields)
    torch.testing.assert_close(part, codes[:, :, 3:8], atol=1e-5, rtol=1e-4)


# --- pursuits against brute force -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nonnegative_omp_recovers_exact_sparse_codes(seed):
    """Noise-free K-sparse data, well-conditioned dictionary (least coherent of 200 draws):
    brute force recovers every code; NN-OMP recovers the exact support and codes for most
    samples (measured 32/40, 32/40, 38/40 for seeds 0, 1, 2; 344/400 = 86% over seeds 0-9),
    and wherever it finds the support its codes are the brute-force ones."""
    x, atoms, truth = exact_problem(seed)
    best, _ = brute_force(x, atoms)
    torch.testing.assert_close(best, truth, atol=1e-6, rtol=1e-6)
    codes = infer("omp", x.float(), atoms.float(), k=K).double()
    found = ((codes != 0) == (truth != 0)).all(dim=1)
    exact = (codes - best).abs().amax(dim=1) < 1e-4
    assert (exact == found).all()
    assert found.double().mean() >= 0.75, f"OMP recovered {found.double().mean():.0%} of samples"


@pytest.mark.parametrize("nonnegative", [True, False])
def test_omp_codes_are_least_squares_on_their_support(nonnegative):
    """Whatever support OMP selects, its coefficients are the (non-negative) least-squares fit on
    that support: this checks the batched Lawson–Hanson solver against scipy's NNLS."""
    x, atoms = noisy_problem(3)
    codes = infer("omp", x, atoms, k=K, nonnegative=nonnegative)  # float64
    assert ((codes != 0).sum(dim=1) <= K).all()
    for r, b in itertools.product(range(2), range(B)):
        support = codes[r, :, b].nonzero().flatten().tolist()  # (NNLS may zero a selected atom)
        d = atoms[r][:, support].numpy()
        if nonnegative:
            expected, _ = nnls(d, x[:, b].numpy())
        else:
            expected = np.linalg.lstsq(d, x[:, b].numpy(), rcond=None)[0]
        np.testing.assert_allclose(codes[r, support, b].numpy(), expected, atol=1e-8, rtol=1e-7)
    # The residual is orthogonal to the support atoms with non-zero coefficient.
    corr = atoms.transpose(1, 2) @ (x - atoms @ codes)
    assert corr[codes != 0].abs().max() < 1e-8


def reference_pursuit(name, x, d, k, nonnegative):
    """One sample at a time, straight from the papers, in NumPy: MP, OMP (NNLS or least squares
    on the support) or GP (one exact line-search gradient step on the support per atom)."""
    coef = np.zeros(d.shape[1])
    floor = 1e3 * np.finfo(np.float64).eps * np.linalg.norm(x)
    support: list[int] = []
    for _ in range(k):
        corr = d.T @ (x - d @ coef)
        score = corr.copy() if nonnegative else np.abs(corr)
        if name == "omp":
            score[support] = -np.inf
        pick = int(np.argmax(score))
        if score[pick] > floor and pick not in support:
            support.append(pick)
        if name == "mp":
            if score[pick] > floor:
                coef[pick] += corr[pick]
        elif name == "omp":
            if score[pick] <= floor:
                break
            sub = d[:, support]
            fit = nnls(sub, x)[0] if nonnegative else np.linalg.lstsq(sub, x, rcond=None)[0]
            coef[:] = 0
            coef[support] = fit
        else:
            direction = np.zeros_like(coef)
            direction[support] = corr[support]
            if nonnegative:
                direction[(coef <= 0) & (direction < 0)] = 0
            curvature = np.sum((d @ direction) ** 2)
            step = direction @ direction / curvature if curvature > 0 else 0.0
            if nonnegative and (direction < 0).any():
                shrinking = direction < 0
                step = min(step, np.min(coef[shrinking] / -direction[shrinking]))
            coef = coef + step * direction
            coef = np.maximum(coef, 0) if nonnegative else coef
    return coef


@pytest.mark.parametrize("name", PURSUITS)
@pytest.mark.parametrize("nonnegative", [True, False])
def test_pursuits_match_a_per_sample_reference(name, nonnegative):
    """The batched pursuits equal a per-sample NumPy transcription of each algorithm (float64)."""
    x, atoms = noisy_problem(2)
    codes = infer(name, x, atoms, k=K, nonnegative=nonnegative)
    for r, b in itertools.product(range(2), range(B)):
        expected = reference_pursuit(name, x[:, b].numpy(), atoms[r].numpy(), K, nonnegative)
        np.testing.assert_allclose(codes[r, :, b].numpy(), expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", PURSUITS)
def test_pursuits_never_beat_brute_force(name):
    """On noisy data no K-sparse non-negative solution can beat the exhaustive optimum."""
    x, atoms = noisy_problem(4)
    _, best = brute_force(x, atoms)
    codes = infer(name, x.float(), atoms.float(), k=K)
    assert (codes >= 0).all() and ((codes != 0).sum(dim=1) <= K).all()
    residual = residual_norms(x, atoms, codes)
    assert (residual >= best - 1e-4).all()
    # ... and the pursuits do reduce the residual: never above ||x||, on average well below.
    assert (residual <= x.norm(dim=0) + 1e-5).all()
    assert residual.mean() < 0.6 * x.norm(dim=0).mean()


def test_pursuit_quality_order():
    """Mean residual on noisy data: OMP (exact refit) ≤ GP (one step per atom) ≤ MP + slack."""
    x, atoms = noisy_problem(5)
    x, atoms = x.float(), atoms.float()
    mean = {n: residual_norms(x, atoms, infer(n, x, atoms, k=K)).mean() for n in PURSUITS}
    assert mean["omp"] <= mean["gp"] + 1e-6
    assert mean["gp"] <= mean["mp"] * 1.02


@pytest.mark.parametrize("nonnegative", [True, False])
def test_pursuits_agree_on_an_orthonormal_dictionary(nonnegative):
    """With orthonormal atoms MP, OMP and GP all reduce to keeping the K largest (positive)
    coefficients of Dᵀx, which is also the brute-force optimum (non-negative case)."""
    g = torch.Generator().manual_seed(6)
    atoms = torch.stack(
        [torch.linalg.qr(torch.randn(M, M, generator=g, dtype=torch.float64))[0] for _ in range(2)]
    )
    x = torch.randn(M, B, generator=g, dtype=torch.float64)
    coef = atoms.transpose(1, 2) @ x
    score = coef.clamp_min(0) if nonnegative else coef.abs()
    keep = torch.zeros_like(coef, dtype=torch.bool).scatter_(1, score.topk(K, dim=1).indices, True)
    expected = torch.where(keep & (score > 0), coef, 0.0)
    for name in PURSUITS:
        codes = infer(name, x, atoms, k=K, nonnegative=nonnegative)
        torch.testing.assert_close(codes, expected, atol=1e-10, rtol=1e-10)
    if nonnegative:
        best, _ = brute_force(x, atoms)
        torch.testing.assert_close(expected, best, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", PURSUITS)
@pytest.mark.parametrize("nonnegative", [True, False])
def test_pursuits_with_a_budget_beyond_the_dimension(name, nonnegative):
    """k = N > M: supports become linearly dependent; codes stay finite and, for OMP, fit x."""
    x, atoms = noisy_problem(14)
    codes = infer(name, x.float(), atoms.float(), k=N, nonnegative=nonnegative)
    assert torch.isfinite(codes).all() and ((codes != 0).sum(dim=1) <= N).all()
    if name != "omp":
        return
    residual = residual_norms(x, atoms, codes)
    if nonnegative:
        # NN-OMP stops only when no correlation is positive: at the NNLS optimum over all atoms,
        # which is at least as good as the best K-sparse fit.
        _, best = brute_force(x, atoms)
        assert (residual <= best + 1e-4).all()
    else:
        assert (residual < 1e-4 * x.norm(dim=0)).all()  # M independent atoms span the space


def test_pursuit_iterations_cap_the_budget():
    x, atoms = noisy_problem(7)
    for name in PURSUITS:
        codes = infer(name, x.float(), atoms.float(), k=K, iterations=2)
        assert ((codes != 0).sum(dim=1) <= 2).all()
        assert ((codes != 0).sum(dim=1) == 2).any()


# --- ISTA / FISTA ----------------------------------------------------------------------------


def test_fista_small_l1_reaches_nnls_on_the_true_support():
    """Noise-free K-sparse data: FISTA with a small L1 weight lands on the brute-force NNLS
    solution on the true support (correlation > 0.99 per replica, measured 0.999998)."""
    x, atoms, _ = exact_problem(0)
    best, _ = brute_force(x, atoms)
    codes = infer("fista", x.float(), atoms.float(), l1=1e-3, iterations=2000).double()
    for r in range(2):
        assert correlation(codes[r], best[r]) > 0.99


def lasso_kkt_violation(x, atoms, codes, l1, nonnegative):
    """Largest violation of the lasso optimality conditions, in units of the threshold λ'."""
    latents = atoms.shape[2]
    lam = l1 * M / (2 * latents)
    grad = atoms.transpose(1, 2) @ (atoms @ codes - x)  # of ½||D·S - X||², then + λ'·sign
    if nonnegative:
        active = torch.where(codes > 0, (grad + lam).abs(), 0.0)
        inactive = torch.where(codes == 0, (-(grad + lam)).clamp_min(0), 0.0)
    else:
        active = torch.where(codes != 0, (grad + lam * codes.sign()).abs(), 0.0)
        inactive = torch.where(codes == 0, (grad.abs() - lam).clamp_min(0), 0.0)
    return float(torch.maximum(active, inactive).max() / lam)


@pytest.mark.parametrize("nonnegative", [True, False])
def test_fista_solves_the_lasso(nonnegative):
    """The threshold derived from the objective scaling is right: FISTA's codes satisfy the
    lasso optimality conditions of ||D·S - X||²/(M·B) + l1·mean|S| (float64, tight)."""
    x, atoms = noisy_problem(8)
    l1 = 0.05
    codes = infer("fista", x, atoms, l1=l1, iterations=3000, nonnegative=nonnegative)
    assert lasso_kkt_violation(x, atoms, codes, l1, nonnegative) < 1e-6
    # The objective is minimal: perturbing any code (feasibly) does not decrease it.
    base = objective(x, atoms, codes, l1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        moved = codes + 1e-3 * torch.randn(codes.shape, generator=g, dtype=codes.dtype)
        moved = moved.clamp_min(0) if nonnegative else moved
        assert (objective(x, atoms, moved, l1) >= base - 1e-12).all()


def test_fista_beats_ista_and_descends():
    """At equal iterations FISTA's objective is ≤ ISTA's; ISTA's objective never increases and
    FISTA's (with adaptive restart) is monotone up to 1e-6 relative. After 20 and 50 iterations
    FISTA's suboptimality is over 10× smaller (measured 16-47× at 20, 28-400× at 50)."""
    x, atoms = noisy_problem(9)
    l1 = 0.05
    optimum = objective(x, atoms, infer("fista", x, atoms, l1=l1, iterations=5000), l1)
    x, atoms = x.float(), atoms.float()
    budgets = [1, 2, 5, 10, 20, 50, 100, 200, 400]
    curves = {
        name: [objective(x, atoms, infer(name, x, atoms, l1=l1, iterations=n), l1) for n in budgets]
        for name in ("ista", "fista")
    }
    for ista, fista in zip(curves["ista"], curves["fista"], strict=True):
        assert (fista <= ista * (1 + 1e-6)).all()
    for name, curve in curves.items():
        for before, after in itertools.pairwise(curve):
            assert (after <= before * (1 + 1e-6)).all(), name
    for n in (20, 50):
        i = budgets.index(n)
        assert (curves["fista"][i] - optimum < 0.1 * (curves["ista"][i] - optimum)).all(), n


def test_fista_warm_start():
    """Warm-started from the solution, FISTA stays there; negative inits are projected."""
    x, atoms = noisy_problem(10)
    x, atoms = x.float(), atoms.float()
    solution = infer("fista", x, atoms, l1=0.05, iterations=1000)
    again = infer("fista", x, atoms, init=solution, l1=0.05, iterations=5)
    torch.testing.assert_close(again, solution, atol=1e-5, rtol=1e-4)
    from_negative = infer("ista", x, atoms, init=-solution - 1, l1=0.05, iterations=0)
    assert (from_negative == 0).all()


def test_tolerance_stops_early():
    x, atoms = noisy_problem(11)
    x, atoms = x.float(), atoms.float()
    full = infer("ista", x, atoms, l1=0.05, iterations=500)
    early = infer("ista", x, atoms, l1=0.05, iterations=500, tolerance=0.05)
    assert not torch.equal(early, full)
    runs = {n: infer("ista", x, atoms, l1=0.05, iterations=n) for n in range(1, 50)}
    assert any(torch.equal(early, run) for run in runs.values()), (
        "a tolerance of 5% should stop ISTA within 50 iterations"
    )
    one_atom = infer("omp", x, atoms, k=K, tolerance=1e9)
    assert ((one_atom != 0).sum(dim=1) <= 1).all()


def test_fista_on_paper_data():
    """Paper defaults (N=16, M=8, K=3, |N(0,1)| values), true dictionary, 1,024 test samples,
    R = 5 copies: latent MCC ≥ 0.99 within 300 iterations (measured 0.9947; non-negative
    LARS-lasso at alpha 1e-3, i.e. l1 = 2·L·alpha = 0.032 here, reaches 0.990)."""
    data = make_synthetic(DataConfig())
    atoms = data.dictionary.expand(5, -1, -1).contiguous()
    inference = build_inference(InferenceConfig(name="fista", iterations=300), 0.032)
    start = time.perf_counter()
    codes = inference(data.x_test, atoms)
    elapsed = time.perf_counter() - start
    mcc = latent_mcc(data.codes_test, codes)
    print(f"FISTA paper data: MCC {mcc.min():.4f}, 300 iterations, {elapsed:.3f} s on 1 CPU thread")
    assert (mcc >= 0.99).all()


# --- FLOPs -----------------------------------------------------------------------------------


def counted_matmul_flops(name: str, iterations: int, x, atoms) -> int:
    with FlopCounterMode(display=False) as counter:
        infer(name, x, atoms, l1=0.01, k=K, iterations=iterations)
    return counter.get_total_flops() // atoms.shape[0]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_matmul_flops_match_the_counter(name):
    """Declared matmul FLOPs vs FlopCounterMode, per replica. ``flops`` of a 1-iteration call
    includes the set-up: for ISTA/FISTA none is visible (the step size comes from an SVD, which
    the counter does not see), so the first iteration is like the others; the pursuits compute
    Dᵀx and DᵀD once, and their later iterations cost what ``step_flops`` says (OMP's first
    iteration has no matmul, GP's grows with the support)."""
    x, atoms = noisy_problem(12)
    x, atoms = x.float(), atoms.float()
    counts = {n: counted_matmul_flops(name, n, x, atoms) for n in (1, 2, 3)}
    for n, count in counts.items():
        declared = build_inference(InferenceConfig(name=name, iterations=n, k=K), 0.01)
        assert declared.flops(B, N, M).matmul == pytest.approx(count, rel=0.1), n
    inference = build_inference(InferenceConfig(name=name, iterations=3, k=K), 0.01)
    if name in PURSUITS:
        last = inference.step_flops(B, N, M, 3)
        assert inference.iteration_flops(B, N, M) == last
    else:
        last = inference.iteration_flops(B, N, M)
        assert counts[1] == pytest.approx(last.matmul, rel=0.1)
    assert counts[3] - counts[2] == pytest.approx(last.matmul, rel=0.1)
    assert inference.flops(B, N, M).elementwise > 0


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.gpu  # `make test-gpu` on a machine with a CUDA GPU
@pytest.mark.parametrize("name", ALGORITHMS)
def test_cuda_matches_cpu(name):
    x, atoms = noisy_problem(13)
    x, atoms = x.float(), atoms.float()
    cpu = infer(name, x, atoms, l1=0.05, k=K, iterations=100)
    gpu = infer(name, x.cuda(), atoms.cuda(), l1=0.05, k=K, iterations=100)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)
