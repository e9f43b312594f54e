"""Laws of the sparse codes beyond the paper's fixed-K support: Bernoulli firings with uniform or
Zipf frequencies, a low-rank Gaussian copula between firings, parent/child hierarchies, and
per-feature magnitudes. Everything here works on *sparse* (sample, feature) lists so that large
problems (N = 4,096) cost O(active entries) per sample, not O(N).

**Firing probabilities.** Feature weights w_i are 1 (``frequencies=uniform``) or (i + 1)^−a
(``zipf``, a = ``zipf_exponent``); each feature's own draw fires with probability p_i = c·w_i.
Without a hierarchy c = K / Σw, so E[L0] = Σp = K exactly. With a hierarchy c is found by
bisection so that the expected L0 *after* gating is K (exact for independent draws).

**Hierarchy** (``hierarchy_depth`` d > 0, ``hierarchy_branching`` b). Features form consecutive
trees of T = 1 + b + … + b^d features (the last one possibly truncated), numbered breadth-first:
in a tree starting at feature r, local index j > 0 has parent r + (j − 1) // b. Roots are the
features with i mod T = 0; a *parent* is any feature with at least one child (depths 0 … d − 1).
A child fires only if its own draw fires **and** its parent fires. With ``hierarchy_exclusive``,
of the children of one parent whose draws fire, only the lowest-index one is kept, so siblings
never fire together (the kept child's descendants are then gated by it). Sampling draws the roots
first and then, level by level, only the children of fired parents (same law, cost ∝ fired
parents × branching).

**Correlation** (``correlation_rank`` r > 0, ``correlation_scale`` s ∈ (0, 1)). Gaussian copula
with loadings F (N × r) where feature i loads √s on factor i mod r: z = F·u + √(1 − s)·e with
u ~ N(0, I_r), e ~ N(0, I_N); feature i's draw fires where Φ(z_i) < p_i, so every draw keeps its
probability p_i (under a hierarchy the gated marginals, and E[L0] = K, are exact only for
independent draws, as a child's latent may share its parent's factor). Latent correlation is s
for two features sharing a factor, 0 otherwise; ``implied_firing_correlation`` gives the implied
correlation of the firing indicators. Sampling is exact and sparse: samples are grouped by the
level ⌊u/δ⌋ of each factor, candidates are drawn at the level's upper-bound firing
probability by geometric skipping, then accepted with probability P(fire | u) / bound (thinning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsegap.data.magnitudes import MagnitudeLaw

LEVEL_WIDTH = 0.125  # δ of the copula thinning (bound/true probability ratio ≈ exp(|a|·√s·δ/σ))
LEVELS_PER_SIDE = 48  # factor values below −6 use the bound 1 (exact, just slower)


# ---------------------------------------------------------------------------------------------
# Structure: weights, hierarchy, probabilities


def feature_weights(n: int, frequencies: str, zipf_exponent: float) -> Tensor:
    if frequencies == "uniform":
        return torch.ones(n, dtype=torch.float64)
    if frequencies == "zipf":
        return torch.arange(1, n + 1, dtype=torch.float64).pow(-zipf_exponent)
    raise ValueError(f"unknown frequencies {frequencies!r}")


def hierarchy(n: int, depth: int, branching: int) -> tuple[Tensor, Tensor]:
    """(parent, level) of each feature; parent −1 for roots (and everything when depth = 0)."""
    if depth <= 0:
        return torch.full((n,), -1, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    tree = sum(branching**level for level in range(depth + 1))
    idx = torch.arange(n)
    local = idx % tree
    parent = torch.where(local > 0, idx - local + (local - 1) // branching, -1)
    level = torch.zeros(n, dtype=torch.long)
    bound = 1
    for lv in range(1, depth + 1):  # local indices [bound, bound + b^lv) are at level lv
        width = branching**lv
        level[(local >= bound) & (local < bound + width)] = lv
        bound += width
    return parent, level


def _marginals(p: Tensor, parent: Tensor, level: Tensor, exclusive: bool) -> Tensor:
    """P(feature fires) for independent draws with probabilities p under hierarchy gating."""
    m = p.clone()
    if exclusive:  # P(kept | parent fires) = p_j · Π_{earlier siblings k} (1 − p_k)
        has_parent = parent >= 0
        idx = torch.arange(len(p))
        log_miss = torch.log1p(-p.clamp(max=1 - 1e-12))
        group = torch.where(has_parent, parent, -1 - idx)  # siblings share a group, contiguous
        first = torch.ones_like(has_parent)
        first[1:] = group[1:] != group[:-1]
        excl = torch.cumsum(log_miss, 0) - log_miss  # Σ log(1 − p) over everything before i
        start = torch.cummax(torch.where(first, idx, 0), 0).values
        before = excl - excl[start]
        m = torch.where(has_parent, p * before.exp(), p)
    for lv in range(1, int(level.max()) + 1):
        at = level == lv
        m[at] = m[at] * m[parent[at]]
    return m


def firing_probabilities(cfg) -> tuple[Tensor, Tensor]:
    """(p, marginal): each feature's own firing probability and its marginal after gating
    (float64, shape (N,)). ``p`` may exceed 1 when the configuration is infeasible: ``validate``
    reports it."""
    w = feature_weights(cfg.N, cfg.frequencies, cfg.zipf_exponent)
    parent, level = hierarchy(cfg.N, cfg.hierarchy_depth, cfg.hierarchy_branching)
    if cfg.hierarchy_depth <= 0:
        p = cfg.K * w / w.sum()
        return p, p
    exclusive = bool(cfg.hierarchy_exclusive)
    lo, hi = 0.0, 1.0 / w.max().item()
    top = _marginals(w * hi, parent, level, exclusive).sum().item()
    if top < cfg.K - 1e-9:  # infeasible: report p scaled beyond 1
        p = w * hi * cfg.K / top
        return p, _marginals(p.clamp(max=1), parent, level, exclusive)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _marginals(w * mid, parent, level, exclusive).sum().item() < cfg.K:
            lo = mid
        else:
            hi = mid
    p = w * 0.5 * (lo + hi)
    return p, _marginals(p, parent, level, exclusive)


def max_expected_l0(cfg) -> float:
    """The largest expected L0 the hierarchy allows (every draw's probability capped at 1)."""
    w = feature_weights(cfg.N, cfg.frequencies, cfg.zipf_exponent)
    parent, level = hierarchy(cfg.N, cfg.hierarchy_depth, cfg.hierarchy_branching)
    return _marginals(w / w.max(), parent, level, bool(cfg.hierarchy_exclusive)).sum().item()


def implied_firing_correlation(p_i: float, p_j: float, rho: float) -> float:
    """Pearson correlation of the firing indicators of two features with marginals p_i, p_j whose
    copula latents have correlation rho: (Φ₂(a_i, a_j; ρ) − p_i p_j) / √(p_i q_i p_j q_j)."""
    from scipy.stats import multivariate_normal, norm

    a = [norm.ppf(p_i), norm.ppf(p_j)]
    both = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf(a)
    return (both - p_i * p_j) / math.sqrt(p_i * (1 - p_i) * p_j * (1 - p_j))


# ---------------------------------------------------------------------------------------------
# Sparse sampling


def bernoulli_process(q: Tensor, n: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """For independent rows r = 0 … R−1 of n_r Bernoulli(q_r) trials, the (row, position) of every
    success, by geometric skipping: cost O(R + successes), not O(Σn)."""
    rows_out, pos_out = [], []
    start = torch.zeros(len(q), dtype=torch.long)
    rows = torch.nonzero((q > 0) & (n > 0)).squeeze(1)
    while rows.numel():
        qr, nr, sr = q[rows], n[rows], start[rows]
        remaining = nr - sr
        mean = remaining.double() * qr.double()
        # draws for ~98 % of rows in one round; the rest continue in a (small) next round
        k = torch.minimum((mean + 2 * mean.sqrt() + 1).ceil().long(), remaining + 1)
        rep = torch.repeat_interleave(torch.arange(len(rows)), k)
        u = 1.0 - torch.rand(len(rep), generator=g)  # (0, 1]
        log_miss = torch.log1p(-qr.float())  # −inf for q = 1: every trial succeeds
        gaps = torch.floor(u.log() / log_miss[rep]).nan_to_num_(0.0)
        steps = gaps.clamp_(max=float(nr.max()) + 1).long() + 1
        csum = torch.cumsum(steps, 0)
        ends = torch.cumsum(k, 0)
        before = torch.zeros_like(k)
        before[1:] = csum[ends[:-1] - 1]
        pos = sr[rep] + csum - before[rep] - 1
        keep = pos < nr[rep]
        rows_out.append(rows[rep[keep]])
        pos_out.append(pos[keep])
        last = pos[ends - 1]
        more = last < nr
        start[rows[more]] = last[more] + 1
        rows = rows[more]
    if not rows_out:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(rows_out), torch.cat(pos_out)


@dataclass(frozen=True)
class CodeLaw:
    """Everything needed to draw code columns, fixed once per data set (from ``data.seed``)."""

    n: int
    k: int
    support: str
    p: Tensor  # (N,) float64: each feature's own firing probability
    marginal: Tensor  # (N,) float64: P(feature fires) after hierarchy gating
    parent: Tensor  # (N,) long, −1 for roots
    level: Tensor  # (N,) long, depth in its tree (0 = root)
    first_child: Tensor  # (N,) long: index of the first child (children are contiguous)
    child_count: Tensor  # (N,) long: number of children (0 for leaves)
    exclusive: bool
    rank: int
    scale: float
    magnitudes: MagnitudeLaw

    @property
    def correlated(self) -> bool:
        return self.rank > 0 and self.scale > 0

    def __post_init__(self) -> None:
        # float32 copies for the per-batch work: probabilities and copula thresholds Φ⁻¹(p_i)
        set_ = object.__setattr__
        set_(self, "p32", self.p.clamp(max=1.0).float())
        set_(self, "threshold", torch.special.ndtri(self.p.clamp(max=1.0)).float())
        set_(self, "root", math.sqrt(self.scale))
        set_(self, "sigma", math.sqrt(1.0 - self.scale))

    def draw(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(sample, feature, value) of the active entries of ``batch`` code columns, sorted by
        sample then feature."""
        if self.support == "fixed_k":
            # K distinct positions per sample, uniformly: the K smallest of N i.i.d. uniforms.
            support = torch.rand(batch, self.n, generator=g).argsort(dim=1)[:, : self.k]
            values = self.magnitudes.sample((batch, self.k), g)
            feature, order = support.sort(dim=1)
            values = values.gather(1, order)
            sample = torch.arange(batch).repeat_interleave(self.k)
            feature = feature.reshape(-1)
            return sample, feature, self.magnitudes.per_feature(values.reshape(-1), feature)
        sample, feature = self._firings(batch, g)
        values = self.magnitudes.sample((len(sample),), g)
        return sample, feature, self.magnitudes.per_feature(values, feature)

    def _firings(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Roots (every feature when flat) by geometric skipping, with copula thinning when
        correlated; then each level's children by enumerating the children of the fired parents
        (a child's draw only matters where its parent fires, so this is the same law, at a cost
        proportional to fired parents × branching)."""
        n = self.n
        roots = torch.nonzero(self.level == 0).squeeze(1)
        u = None
        if self.correlated:
            u = torch.randn(self.rank, batch, generator=g)
            sample, feature = self._copula_roots(roots, u, g)
        else:
            row, sample = bernoulli_process(self.p32[roots], torch.full((len(roots),), batch), g)
            feature = roots[row]
        samples, features = [sample], [feature]
        for _ in range(1, int(self.level.max()) + 1):
            sample, feature = self._children(sample, feature, u, g)
            samples.append(sample)
            features.append(feature)
        key = torch.cat(samples) * n + torch.cat(features)
        key = key.sort().values
        return key // n, key % n

    def _children(
        self, sample: Tensor, parent: Tensor, u: Tensor | None, g: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Fired children of the fired (sample, parent) entries; exclusive: lowest index only."""
        width = int(self.child_count.max())
        count = self.child_count[parent]
        child = self.first_child[parent][:, None] + torch.arange(width)
        valid = torch.arange(width) < count[:, None]
        entry = torch.arange(len(parent))[:, None].expand(-1, width)
        if not bool(valid.all()):
            child, entry = child[valid], entry[valid]
        child, entry = child.reshape(-1), entry.reshape(-1)
        sample = sample[entry]
        if u is None:
            prob = self.p32[child]
        else:
            z_mean = self.root * u[child % self.rank, sample]
            prob = torch.special.ndtr((self.threshold[child] - z_mean) / self.sigma)
        fire = torch.rand(len(child), generator=g) < prob
        if self.exclusive:  # keep the first fired child of each parent entry
            fired_entry = entry[fire]
            dup = torch.zeros(len(fired_entry), dtype=torch.bool)
            dup[1:] = fired_entry[1:] == fired_entry[:-1]
            keep = torch.nonzero(fire).squeeze(1)[~dup]
            return sample[keep], child[keep]
        return sample[fire], child[fire]

    def _copula_roots(self, roots: Tensor, u: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Exact sparse draws of the root features under the copula, by thinning: samples are
        grouped by the level ⌊u_c/δ⌋ of each factor c; within a (factor, level) group a feature's
        firing probability is at most its value at the level's lower edge, so candidates are drawn
        at that bound by geometric skipping and accepted with probability P(fire | u) / bound."""
        r, s = self.rank, self.scale
        batch = u.shape[1]
        sigma, root = math.sqrt(1.0 - s), math.sqrt(s)
        side = LEVELS_PER_SIDE
        lev = torch.floor(u / LEVEL_WIDTH).clamp_(-side, side - 1).long() + side  # 0 … 2·side−1
        key = (torch.arange(r)[:, None] * (2 * side) + lev).reshape(-1)
        order = torch.argsort(key, stable=True)
        sorted_sample = order % batch
        counts = torch.bincount(key, minlength=r * 2 * side)
        offsets = torch.cumsum(counts, 0) - counts
        groups = torch.nonzero(counts).squeeze(1)
        factor, glev = groups // (2 * side), groups % (2 * side)
        # rows: (occupied group, root feature of the group's factor)
        root_factor = roots % r
        per_factor = torch.bincount(root_factor, minlength=r)
        by_factor = roots[torch.argsort(root_factor, stable=True)]
        factor_start = torch.cumsum(per_factor, 0) - per_factor
        row_group = torch.repeat_interleave(torch.arange(len(groups)), per_factor[factor])
        first = torch.cumsum(per_factor[factor], 0) - per_factor[factor]
        within = torch.arange(len(row_group)) - first[row_group]
        feature = by_factor[factor_start[factor[row_group]] + within]
        lower = (glev - side).double() * LEVEL_WIDTH
        lower[glev == 0] = -math.inf
        threshold = self.threshold[feature]
        bound = torch.special.ndtr((threshold - root * lower[row_group].float()) / sigma)
        row, pos = bernoulli_process(bound, counts[groups][row_group], g)
        cand_feature = feature[row]
        cand_sample = sorted_sample[offsets[groups][row_group[row]] + pos]
        z_mean = root * u[cand_feature % r, cand_sample]
        prob = torch.special.ndtr((threshold[row] - z_mean) / sigma)
        accept = torch.rand(len(row), generator=g) * bound[row] < prob
        return cand_sample[accept], cand_feature[accept]


def code_law(cfg, generator: torch.Generator) -> CodeLaw:
    """Fix the law of the codes for ``cfg`` (draws from ``generator`` only for per-feature
    magnitude scales, and only when ``magnitude_heterogeneity`` > 0)."""
    p, marginal = firing_probabilities(cfg)
    parent, level = hierarchy(cfg.N, cfg.hierarchy_depth, cfg.hierarchy_branching)
    child_count = torch.bincount(parent[parent >= 0], minlength=cfg.N)
    first_child = torch.full((cfg.N,), cfg.N, dtype=torch.long)
    has = parent >= 0  # children are numbered in increasing parent order: the first is the min
    first_child.scatter_reduce_(0, parent[has], torch.nonzero(has).squeeze(1), "amin")
    return CodeLaw(
        n=cfg.N,
        k=cfg.K,
        support=cfg.support,
        p=p,
        marginal=marginal,
        parent=parent,
        level=level,
        first_child=first_child,
        child_count=child_count,
        exclusive=bool(cfg.hierarchy_exclusive),
        rank=cfg.correlation_rank,
        scale=float(cfg.correlation_scale),
        magnitudes=MagnitudeLaw.from_config(cfg, generator),
    )
