"""The MLP encoder's fused CPU training step (``mlp_step.cpp``), with the buffers it reuses."""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor

from sparsegap.accel.native.build import NativeUnavailable, library

_P, _I = ctypes.c_void_p, ctypes.c_int
_warned = False
# Above this many latents BLAS's GEMMs are wide enough to beat the kernel: measured on one core
# (1 replica, hidden 256, M = 8 and 32), the kernel's step costs 0.55–0.91 of the torch step's
# at N = 16–64 and 1.07–1.33 of it at N = 128 and 256.
MAX_LATENTS = 64


def _load() -> ctypes.CDLL:
    lib = library("mlp_step")
    lib.mlp_step.argtypes = [_I] * 6 + [_P] * 6 + [ctypes.c_float] + [_P] * 9
    lib.mlp_step.restype = None
    lib.mlp_step_scratch.argtypes = [_I] * 5
    lib.mlp_step_scratch.restype = ctypes.c_long
    return lib


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeMLPStep:
    """Forward, loss and backward of one MLP training step in one call of the C++ kernel.

    ``applies`` says whether the kernel can take a step (CPU, float32, a shared column batch
    whose sample count and hidden width are multiples of 8, at most ``MAX_LATENTS`` latents, a
    compiler); ``__call__`` takes it, writing the parameters' gradients into buffers kept from
    step to step. With ``required`` a kernel that cannot be built raises; otherwise the encoder
    falls back to its torch step and one line on stderr says why.
    """

    def __init__(self, required: bool = False) -> None:
        self.required = required
        self._lib: ctypes.CDLL | None = None
        self._failed = False
        self._buffers: dict[str, Tensor] = {}

    # A copied or pickled encoder (copy.deepcopy, multiprocessing) reloads the library lazily:
    # ctypes handles do not copy.
    def __getstate__(self) -> dict[str, bool]:
        return {"required": self.required}

    def __setstate__(self, state: dict[str, bool]) -> None:
        self.__init__(**state)

    def applies(self, x: Tensor, w1: Tensor, atoms: Tensor) -> bool:
        shapes_ok = (
            x.device.type == "cpu"
            and x.dtype == w1.dtype == atoms.dtype == torch.float32
            and x.dim() == 2
            and x.shape[1] % 8 == 0
            and w1.shape[1] % 8 == 0
            and atoms.shape[2] <= MAX_LATENTS
        )
        return shapes_ok and self._library() is not None

    def _library(self) -> ctypes.CDLL | None:
        global _warned
        if self._lib is None and not self._failed:
            try:
                self._lib = _load()
            except NativeUnavailable as error:
                if self.required:
                    raise
                self._failed = True
                if not _warned:
                    _warned = True
                    print(
                        f"sparsegap: the fused MLP step is unavailable ({error}); using the torch"
                        " step (set encoder.native=false to silence this)",
                        file=sys.stderr,
                    )
        return self._lib

    def _buffer(self, name: str, shape: tuple[int, ...]) -> Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = self._buffers[name] = torch.empty(shape)
        return buffer

    @torch.no_grad()
    def __call__(
        self,
        x: Tensor,
        hidden: torch.nn.Module,
        out: torch.nn.Module,
        atoms: Tensor,
        l1_coeff: float | Tensor,
        atoms_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(mse, mean(codes)) per replica, the codes and the atoms' gradient (None unless
        ``atoms_grad``); sets the ``.grad`` of ``hidden``'s and ``out``'s parameters."""
        assert self._lib is not None, "call applies() first"
        replicas, h, m = hidden.weight.shape
        n, b = out.weight.shape[1], x.shape[1]
        threads = torch.get_num_threads()
        x, atoms = x.contiguous(), atoms.contiguous()
        grads = {
            "w1": self._buffer("w1", (replicas, h, m)),
            "b1": self._buffer("b1", (replicas, h, 1)) if hidden.bias is not None else None,
            "w2": self._buffer("w2", (replicas, n, h)),
            "b2": self._buffer("b2", (replicas, n, 1)) if out.bias is not None else None,
        }
        grad_atoms = self._buffer("atoms", (replicas, m, n)) if atoms_grad else None
        codes = self._buffer("codes", (replicas, n, b))
        mse, mean_codes = torch.empty(replicas), torch.empty(replicas)
        scratch = self._buffer("scratch", (self._lib.mlp_step_scratch(replicas, m, h, n, threads),))
        self._lib.mlp_step(
            replicas, m, h, n, b, threads,
            x.data_ptr(),
            hidden.weight.data_ptr(), _pointer(hidden.bias),
            out.weight.data_ptr(), _pointer(out.bias),
            atoms.data_ptr(), float(l1_coeff),
            codes.data_ptr(),
            grads["w1"].data_ptr(), _pointer(grads["b1"]),
            grads["w2"].data_ptr(), _pointer(grads["b2"]),
            _pointer(grad_atoms), mse.data_ptr(), mean_codes.data_ptr(), scratch.data_ptr(),
        )  # fmt: skip
        hidden.weight.grad, out.weight.grad = grads["w1"], grads["w2"]
        if hidden.bias is not None:
            hidden.bias.grad = grads["b1"]
        if out.bias is not None:
            out.bias.grad = grads["b2"]
        return mse, mean_codes, codes, grad_atoms
