"""Synthetic sparse data with known codes and dictionary (paper §3.2, authors' code defaults).

Layout convention used across sparsegap: a batch is a matrix with **one column per sample**, as in
the sparse-coding literature (X = D·S). X is (M, B), codes are (N, B), the dictionary is (M, N)
with unit-norm columns (atoms). Besides matching the maths, this keeps the batch as the long,
contiguous dimension of every matmul output, which CPU BLAS kernels handle several times faster
than outputs only 8 or 16 wide.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import InitVar, dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from sparsegap.config import DataConfig
from sparsegap.data.authors import draw as authors_draw
from sparsegap.data.dictionaries import make_dictionary
from sparsegap.data.laws import CodeLaw, code_law
from sparsegap.data.magnitudes import sample_magnitudes

__all__ = [
    "StreamBatch",
    "SyntheticData",
    "SyntheticStream",
    "importance_weights",
    "make_streamed",
    "make_synthetic",
    "sample_magnitudes",
]

SNR_CALIBRATION_SAMPLES = 16_384  # streams: signal power measured on one calibration batch
HELD_OUT_INDEX = -2  # streamed training: the test set is this batch of the stream


@dataclass(frozen=True)
class SyntheticData:
    """Train/test split of one synthetic problem.

    Shapes: x (M, B), codes (N, B), dictionary (M, N); ``importance`` (N,) holds the feature
    importance weights (ones unless ``data.importance=decay``). It is an attribute, not a
    dataclass field, so ``dataclasses.fields`` lists only the five data tensors.
    """

    x_train: Tensor
    x_test: Tensor
    codes_train: Tensor
    codes_test: Tensor
    dictionary: Tensor
    importance: InitVar[Tensor | None] = None

    def __post_init__(self, importance: Tensor | None) -> None:
        if importance is None or not isinstance(importance, Tensor):
            importance = torch.ones(self.dictionary.shape[1])
        object.__setattr__(self, "importance", importance)

    def to(self, device: torch.device) -> SyntheticData:
        return SyntheticData(
            *(
                t.to(device)
                for t in (
                    self.x_train,
                    self.x_test,
                    self.codes_train,
                    self.codes_test,
                    self.dictionary,
                )
            ),
            importance=self.importance.to(device),
        )


def importance_weights(cfg) -> Tensor:
    """Feature importance weights (N,): ones, or r^i for ``importance=decay`` (Elhage et al.
    2022, "Toy Models of Superposition"). Meant to weight per-feature loss terms."""
    if getattr(cfg, "importance", "none") == "decay":
        return (
            torch.tensor(float(cfg.importance_decay), dtype=torch.float64)
            .pow(torch.arange(cfg.N, dtype=torch.float64))
            .float()
        )
    return torch.ones(cfg.N)


def _noise_std(cfg, signal_power: float) -> float:
    """``noise_std``, or the std giving ``snr_db`` = 10·log10(mean(clean²) / std²)."""
    snr_db = getattr(cfg, "snr_db", None)
    if snr_db is None:
        return float(cfg.noise_std)
    return math.sqrt(signal_power / 10 ** (float(snr_db) / 10))


def make_synthetic(cfg: DataConfig) -> SyntheticData:
    """Generate the dictionary, train and test sets together (as the authors do), then split.

    Deterministic for a given ``cfg.seed`` and independent of global RNG state; generated on the
    CPU so a seed gives the same data on every device. Draw order from the one generator: the
    dictionary, per-feature magnitude scales (only if heterogeneous), the supports, the values,
    the noise. ``data.draw=authors`` draws the authors' own values instead (``data/authors.py``).
    """
    if cfg.draw == "authors":
        dictionary, codes, x = authors_draw(cfg)
        return _split(cfg, dictionary, codes, x)
    g = torch.Generator().manual_seed(cfg.seed)
    dictionary = make_dictionary(cfg, g)
    law = code_law(cfg, g)

    total = cfg.train_samples + cfg.test_samples
    if law.support == "fixed_k":
        # K distinct positions per sample, uniformly: the K smallest of N i.i.d. uniforms.
        support = torch.rand(total, cfg.N, generator=g).argsort(dim=1)[:, : cfg.K]
        values = law.magnitudes.sample((total, cfg.K), g)
        values = law.magnitudes.per_feature(values, support)
        codes = torch.zeros(total, cfg.N).scatter_(1, support, values).T.contiguous()
    else:
        sample, feature, values = law.draw(total, g)
        codes = torch.zeros(cfg.N, total)
        codes[feature, sample] = values

    x = dictionary @ codes
    std = _noise_std(cfg, x.double().square().mean().item())
    if std > 0:
        x += std * torch.randn(x.shape, generator=g)
    return _split(cfg, dictionary, codes, x)


def _split(cfg: DataConfig, dictionary: Tensor, codes: Tensor, x: Tensor) -> SyntheticData:
    """The first ``train_samples`` columns train, the rest test (drawn together, as the authors)."""
    n = cfg.train_samples
    return SyntheticData(
        x_train=x[:, :n].contiguous(),
        x_test=x[:, n:].contiguous(),
        codes_train=codes[:, :n].contiguous(),
        codes_test=codes[:, n:].contiguous(),
        dictionary=dictionary,
        importance=importance_weights(cfg),
    )


@dataclass(frozen=True)
class StreamBatch:
    """One streamed batch: x (M, B) and codes (N, B), sparse CSC (one compressed column per
    sample) unless the stream was asked for dense codes."""

    x: Tensor
    codes: Tensor


def _batch_seed(seed: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` of data seed ``seed`` (SeedSequence mixing)."""
    entropy = [seed % 2**64, index % 2**64]  # index −1: the SNR calibration batch
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SyntheticStream:
    """Code columns drawn on the fly: batch i (samples i·B … (i+1)·B − 1) is generated from
    (``data.seed``, i) alone, so batches can be drawn in any order, twice, or in parallel, and
    memory stays bounded by one batch. The dictionary and the law (probabilities, hierarchy,
    magnitude scales) are those of ``make_synthetic`` for the same config; the samples are other
    draws than ``make_synthetic``'s (which draws its whole set from one generator).

    ``samples`` bounds iteration (the last batch may be shorter; null: endless). With ``snr_db``,
    the noise std is fixed from the signal power of one calibration batch.
    """

    def __init__(
        self, cfg, batch_size: int, samples: int | None = None, dense_codes: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.cfg, self.batch_size, self.samples, self.dense_codes = (
            cfg,
            batch_size,
            samples,
            dense_codes,
        )
        g = torch.Generator().manual_seed(cfg.seed)
        self.dictionary = make_dictionary(cfg, g)
        self.law: CodeLaw = code_law(cfg, g)
        self.importance = importance_weights(cfg)
        self._atoms = self.dictionary.T.contiguous()  # (N, M): one row per atom, for the gather
        self.noise_std = float(cfg.noise_std)
        if getattr(cfg, "snr_db", None) is not None:
            clean = self._clean(SNR_CALIBRATION_SAMPLES, -1)[0]
            self.noise_std = _noise_std(cfg, clean.double().square().mean().item())

    def __len__(self) -> int:
        if self.samples is None:
            raise TypeError("an endless stream has no length")
        return -(-self.samples // self.batch_size)

    def _clean(self, size: int, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(_batch_seed(self.cfg.seed, index))
        sample, feature, values = self.law.draw(size, g)
        counts = torch.bincount(sample, minlength=size)
        offsets = torch.zeros(size + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=offsets[1:])
        # D·S as a weighted gather of the active atoms per sample: O(L0·M), never O(N·M).
        xt = F.embedding_bag(
            feature, self._atoms, offsets[:-1], mode="sum", per_sample_weights=values.float()
        )
        return xt.T, sample, feature, values, offsets

    def batch(self, index: int) -> StreamBatch:
        size = self.batch_size
        if self.samples is not None:
            size = min(size, self.samples - index * self.batch_size)
            if size <= 0:
                raise IndexError(f"batch {index} is past the end ({self.samples} samples)")
        return self._assemble(size, index)

    def held_out(self, size: int) -> StreamBatch:
        """``size`` samples drawn apart from every training batch (a streamed run's test set)."""
        return self._assemble(size, HELD_OUT_INDEX)

    def _assemble(self, size: int, index: int) -> StreamBatch:
        x, sample, feature, values, offsets = self._clean(size, index)
        if self.noise_std > 0:
            g = torch.Generator().manual_seed(_batch_seed(self.cfg.seed, index) ^ 0x5EED)
            x = x + self.noise_std * torch.randn(x.shape, generator=g)
        n = self.cfg.N
        if self.dense_codes:
            codes = torch.zeros(n, size)
            codes[feature, sample] = values.float()
        else:
            with warnings.catch_warnings():  # "sparse CSC support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                codes = torch.sparse_csc_tensor(
                    offsets, feature, values.float(), (n, size), check_invariants=False
                )
        return StreamBatch(x=x, codes=codes)

    def __iter__(self) -> Iterator[StreamBatch]:
        return self.batches()

    def batches(self, workers: int = 1) -> Iterator[StreamBatch]:
        """The batches in order. ``workers`` > 1 draws the next ones in that many threads (torch
        releases the GIL; results are identical), holding at most ``workers`` batches ahead."""
        indices = itertools.count()
        if self.samples is not None:
            indices = iter(range(len(self)))
        if workers <= 1:
            yield from map(self.batch, indices)
            return
        with ThreadPoolExecutor(workers) as pool:
            pending = deque(pool.submit(self.batch, i) for i in itertools.islice(indices, workers))
            while pending:
                done = pending.popleft().result()
                for i in itertools.islice(indices, 1):
                    pending.append(pool.submit(self.batch, i))
                yield done


def make_streamed(cfg) -> tuple[SyntheticData, Iterator[StreamBatch]]:
    """Training batches of ``cfg.stream_batch`` samples drawn on the fly, epoch after epoch
    (``cfg.train_samples`` per epoch, the same batches each epoch), and a ``SyntheticData`` that
    holds only what evaluation needs: the first training batch (train-split metrics) and a
    held-out test set of ``cfg.test_samples``. The dictionary and laws are ``make_synthetic``'s;
    the samples are other draws (see ``SyntheticStream``)."""
    stream = SyntheticStream(cfg, cfg.stream_batch, samples=cfg.train_samples, dense_codes=True)
    first, test = stream.batch(0), stream.held_out(cfg.test_samples)
    data = SyntheticData(
        x_train=first.x,
        x_test=test.x,
        codes_train=first.codes,
        codes_test=test.codes,
        dictionary=stream.dictionary,
        importance=stream.importance,
    )
    return data, itertools.chain.from_iterable(map(iter, itertools.repeat(stream)))
