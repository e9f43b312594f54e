"""GPU throughput of the language-model path (`make bench-gpu`, or `python -m sparsegap.bench.gpu`).

Three measurements, each variant in its own try/except so one failure does not lose the others:

1. Encoder training steps on activations already on the device, 768 → 24,576 SAE, 4,096-token
   batches (paper §5's shape):
   - (CUDA only, first) the five bf16 GEMMs of a step alone (cuBLAS: the floor of any step), then
     ``FusedSAEStep``: the same step with its memory-bound passes folded into GEMM epilogues and
     Triton kernels (``accel.fused``; the fastest variant measured), in a CUDA graph, with and
     without its train statistics; ``--profile`` prints its per-kernel times, and the rows end
     with the masked-gradient GEMM's autotuning results;
   - the framework's own ``Step`` (the code `python -m sparsegap data=lm` runs: renormalise,
     forward, loss, backward, Adam, train statistics) in fp32, TF32, bf16 autocast and bf16
     autocast + torch.compile, and with ``encoder.fast_step`` (the SAE's hand-written backward:
     five GEMMs, the ReLU mask from the codes, no autograd graph; bf16 GEMMs on copies of the fp32
     weights, fp32 Adam);
   - a bench-only prototype of the hand-written step stripped of the framework's bookkeeping (one
     replica, no train statistics), with and without a CUDA graph.
   ``--check`` (and the CPU test) verifies in fp32 that the prototype takes the framework's steps;
   on CUDA the fused step is always checked the same way, and its bf16 code-gradient kernel
   against fp32 torch at the full shape.
2. The MLP encoder (hidden 4,096) beside it, through the framework.
3. Harvesting: tokens/s through a randomly initialised GPT-2-small-shaped model (GPT2Config,
   no download) to ``blocks.9.hook_resid_pre``, through the framework's ``load_transformer`` and
   ``activations_of``, on random token ids.

Works with any Python whose torch sees CUDA: when run by a Python that lacks the framework's
pure-Python dependencies, the repository's .venv site-packages of the same Python version, and
``.bench-site`` (pure-Python distributions copied from .venv by ``make bench-gpu-site``, i.e.
``--write-site``), are appended to the path (torch, numpy and transformers stay the running
Python's). The prototype rows need torch alone, the fused rows torch and Triton (which CUDA
builds of torch bring). ``--small`` runs tiny shapes (the CPU smoke test). The whole run stops
starting new variants after ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Pure-Python distributions the framework, its GPU tests and transformer-lens import that a CUDA
# image's Python typically lacks: `make bench-gpu-site` copies them, metadata included (pytest
# plugins such as jaxtyping's look their versions up), into .bench-site.
SITE_DISTRIBUTIONS = (
    "hydra-core", "omegaconf", "antlr4-python3-runtime", "transformer-lens", "beartype",
    "fancy-einsum", "typeguard", "transformers-stream-generator", "datasets", "dill",
    "multiprocess", "hydra-joblib-launcher", "joblib",  # several jobs per GPU (bench.paper_gpu)
)  # fmt: skip


def write_site(dest: Path, names: tuple[str, ...] = SITE_DISTRIBUTIONS) -> int:
    """Copy the installed files of the distributions ``names`` (packages and their dist-info,
    no bytecode, no scripts) into a fresh ``dest``; returns the bytes copied."""
    import shutil
    from importlib import metadata

    shutil.rmtree(dest, ignore_errors=True)
    copied = 0
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or ():
            # Scripts live outside site-packages (their paths climb out with "..").
            if file.suffix == ".pyc" or ".." in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                target = dest / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied += source.stat().st_size
    return copied


def _with_repo_packages() -> None:
    """Make hydra, omegaconf, transformer-lens… importable under a foreign Python (e.g. the
    device machine's CUDA Python), without shadowing its torch."""
    needed = ("hydra", "omegaconf", "transformer_lens", "transformers", "safetensors")
    if not all(importlib.util.find_spec(name) for name in needed):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        root = Path(__file__).resolve().parents[2]
        # .bench-site: pure-Python packages copied from .venv by `make bench-gpu-site`, for a
        # machine whose Python differs from the .venv's (or that has no .venv).
        sites = [*glob.glob(str(root / ".venv" / "lib" / version / "site-packages"))]
        sites.append(str(root / ".bench-site"))
        for site in sites:
            if Path(site).is_dir() and site not in sys.path:
                sys.path.append(site)


_with_repo_packages()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on a network

import torch  # noqa: E402

FULL = {"dim": 768, "latents": 24_576, "batch": 4096, "hidden": 4096, "context": 128}
SMALL = {"dim": 64, "latents": 512, "batch": 256, "hidden": 128, "context": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    step: Callable[[], Any], device: torch.device, tokens: int, warmup: int, seconds: float
) -> tuple[float, float]:
    """(tokens/s, ms per step) over at least 3 steps and about ``seconds`` after ``warmup``."""
    for _ in range(warmup):
        step()
    _sync(device)
    n, started = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - started < seconds:
        step()
        n += 1
        if n % 10 == 0:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - started
    return tokens * n / elapsed, 1e3 * elapsed / n


# ---------------------------------------------------------------- the framework's own step
def framework_config(shape: dict[str, int], encoder: str, device: str, **options: Any) -> Any:
    """A ``data=lm`` config for an already-known d (no model, no text)."""
    from omegaconf import OmegaConf

    from sparsegap.config import (
        Config,
        DeviceConfig,
        LMDataConfig,
        LoggerConfig,
        ScenarioConfig,
    )
    from sparsegap.encoders.mlp import MLPConfig
    from sparsegap.encoders.sae import SAEConfig

    enc = SAEConfig(latents=shape["latents"], fast_step=options.get("fast_step", False))
    if encoder == "mlp":
        enc = MLPConfig(latents=shape["latents"], hidden=shape["hidden"])
    cfg = OmegaConf.structured(
        Config(
            data=LMDataConfig(dim=shape["dim"], batch_tokens=shape["batch"], tokens=10**9),
            encoder=enc,
            scenario=ScenarioConfig(name="unknown"),
            device=DeviceConfig(
                name=device,
                autocast=options.get("autocast", "none"),
                tf32=options.get("tf32", False),
            ),
            logger=LoggerConfig(name="none"),
            replicas=1,
            steps=1000,
            compile=options.get("compile", False),
            l1_coeff=options.get("l1_coeff", 1e-3),
            lr=options.get("lr", 1e-4),
        )
    )
    return cfg


def framework_step(
    shape: dict[str, int], encoder: str, device: torch.device, **options: Any
) -> tuple[Callable[[], None], Any]:
    from sparsegap.model import build
    from sparsegap.step import Step

    cfg = framework_config(shape, encoder, device.type, **options)
    model = build(cfg, device)
    gen = torch.Generator(device=device).manual_seed(0)
    # The stream's layout: a column view (d, B) of a row-major block of activations.
    x = torch.randn(shape["batch"], shape["dim"], device=device, generator=gen).T
    trainer = Step(model, itertools.repeat(x), track=True)
    return trainer, model


# ---------------------------------------------------------------- prototype fast step
class FastSAEStep:
    """Bench-only prototype of a faster SAE training step (unknown scenario, no encoder bias):
    the framework's maths (unit-norm decoder renormalised before the forward pass, loss
    mean((D·ReLU(W·x) − x)²) + l1·mean(codes), Adam) with

    - GEMMs in ``compute`` dtype (bf16) from copies refreshed once per step, fp32 master
      weights and Adam moments updated by one fused Adam kernel (``torch._fused_adam_``);
    - a hand-written backward: five GEMMs, the ReLU mask read from the codes, the MSE scale
      folded into the small residual, no autograd graph or saved activations beyond the codes.
    """

    def __init__(
        self,
        encoder_weight: torch.Tensor,
        decoder_weight: torch.Tensor,
        x: torch.Tensor,
        lr: float,
        l1_coeff: float,
        compute: torch.dtype = torch.bfloat16,
    ) -> None:
        self.W = encoder_weight.detach().clone().float()  # (L, d)
        self.D = decoder_weight.detach().clone().float()  # (d, L)
        self.params = [self.W, self.D]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), device=self.W.device) for _ in self.params]
        self.lr, self.l1_coeff, self.compute = lr, l1_coeff, compute
        self.x = x.to(compute)  # (d, B): a static input buffer (CUDA graphs copy into it)
        self.W_low = self.W.to(compute)
        self.D_low = self.D.to(compute)
        self.fused = self.W.device.type in ("cuda", "cpu")

    @torch.no_grad()
    def __call__(self) -> None:
        W, D, x = self.W, self.D, self.x
        dim, batch = x.shape
        latents = W.shape[0]
        D.div_(torch.linalg.vector_norm(D, dim=0, keepdim=True).clamp_min_(1e-12))
        self.D_low.copy_(D)
        codes = (self.W_low @ x).relu_()  # (L, B)
        residual = torch.addmm(x, self.D_low, codes, beta=-1)  # D·S − x, (d, B)
        residual.mul_(2.0 / (dim * batch))  # ∂mse/∂(D·S)
        grad_codes = self.D_low.T @ residual  # (L, B)
        grad_codes.add_(self.l1_coeff / (latents * batch))
        grad_pre = torch.ops.aten.threshold_backward(grad_codes, codes, 0)
        grad_D = (residual @ codes.T).float()
        grad_W = (grad_pre @ x.T).float()
        grads = [grad_W, grad_D]
        if self.fused:
            torch._foreach_add_(self.steps, 1)
            torch._fused_adam_(
                self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps,
                lr=self.lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                amsgrad=False, maximize=False,
            )  # fmt: skip
        self.W_low.copy_(W)


class FusedSAEStep:
    """The same SAE step in token-major layout with the memory-bound passes folded away
    (``accel.fused``), as the fastest variant measured (docs/RESULTS.md, 2026-11-27): the ReLU in
    the encoder GEMM's cuBLASLt epilogue (``torch._addmm_activation``), the MSE scale and ``−x``
    in the decoder GEMM's, the L1 constant, ReLU mask and per-latent statistics in the epilogue
    of a Triton code-gradient GEMM (``masked_grad``; with ``tma``, its persistent TMA kernel:
    one program per SM walking the tiles), bf16 weight gradients straight from their GEMMs into
    a Triton Adam that also writes the bf16 weight copies, and the decoder kept as (L, d), one
    atom per row, so that the code-gradient GEMM reads it K-major and its Adam renormalises the
    atoms in the same pass (``adam_atoms_``). With ``track`` it keeps the framework's train
    statistics (MSE, L1, L0 and the token count at which each latent last fired) on the device.
    ``tma``: None where the device has TMA (Hopper or later). Arguments as ``FastSAEStep``'s:
    weights (L, d) and (d, L), the batch x (d, B)."""

    def __init__(
        self,
        encoder_weight: torch.Tensor,
        decoder_weight: torch.Tensor,
        x: torch.Tensor,
        lr: float,
        l1_coeff: float,
        compute: torch.dtype = torch.bfloat16,
        track: bool = True,
        tma: bool | None = None,
    ) -> None:
        from sparsegap.accel import fused

        self.fused = fused
        self.W = encoder_weight.detach().float().contiguous().clone()  # (L, d)
        self.D = decoder_weight.detach().float().T.contiguous().clone()  # (L, d): atoms in rows
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (self.W, self.D)]
        self.step = torch.zeros((), device=self.W.device)
        self.lr, self.l1_coeff, self.track = lr, l1_coeff, track
        self.x = x.T.to(compute).contiguous()  # (B, d) from (d, B): a static input buffer
        self.W_low = self.W.to(compute)
        self.D_low = torch.empty_like(self.D, dtype=compute)
        size = torch.finfo(compute).bits // 8
        rows = (self.x.shape[1] * size, self.D.shape[1] * size)
        self.tma = fused.tma_ok(self.W.device, *rows) if tma is None else tma
        # Unit-norm atoms and their copy from the start; each Adam pass keeps them so.
        fused.renormalise_(self.D, self.D_low, (self.D * self.D).sum(dim=1), axis=1)
        latents = self.W.shape[0]
        self.bias = torch.zeros(latents, device=self.W.device, dtype=compute)
        self.count = torch.zeros(1, device=self.W.device, dtype=torch.int32)
        self.sums = torch.zeros(latents, device=self.W.device)
        self.last_fired = torch.zeros(latents, device=self.W.device, dtype=torch.long)
        self.totals = torch.zeros(3, device=self.W.device)  # Σ mse, Σ l1, Σ l0 over steps
        self.samples = torch.zeros((), device=self.W.device, dtype=torch.long)

    @torch.no_grad()
    def __call__(self) -> None:
        fused, x = self.fused, self.x
        batch = x.shape[0]
        latents = self.W.shape[0]
        atoms = self.D_low.T  # (d, L), a view of the rows
        codes, residual, scale = fused.forward_residual(x, self.W_low, atoms, self.bias)
        self.step.add_(1)
        if self.track:
            self.count.zero_()
            self.sums.zero_()
        stats = (self.count, self.sums) if self.track else None
        constant = self.l1_coeff / (latents * batch)
        grad_pre = fused.masked_grad(
            residual, atoms, codes, constant, stats=stats, tma=self.tma, persistent=self.tma
        )
        mW, vW = self.moments[0]
        fused.adam_(self.W, grad_pre.T @ x, mW, vW, self.step, self.lr, low=self.W_low)
        # After the code gradient, which reads the bf16 atoms that this rewrites.
        mD, vD = self.moments[1]
        fused.adam_atoms_(self.D, codes.T @ residual, mD, vD, self.step, self.lr, self.D_low)
        if self.track:  # the framework's train statistics, all on the device
            self.samples.add_(batch)
            mse = fused.residual_mse(residual, scale)
            l1 = self.sums.sum() / (latents * batch)
            l0 = self.count[0] / batch
            self.totals.add_(torch.stack([mse, l1, l0.float()]))
            self.last_fired.copy_(torch.where(self.sums > 0, self.samples, self.last_fired))

    def decoder(self) -> torch.Tensor:
        """The decoder (d, L) as the framework holds it (unit-norm atoms)."""
        return self.D.T


class CUDAGraphed:
    """``step`` captured once as a CUDA graph and replayed (no per-kernel launch overhead)."""

    def __init__(self, step: Callable[[], None], warmup: int = 3) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()

    def __call__(self) -> None:
        self.graph.replay()


def check_fast_step(shape: dict[str, int], device: torch.device, steps: int = 5) -> float:
    """Max |difference| between the decoder after ``steps`` framework fp32 steps and after the
    prototype's in fp32 from the same initialisation and batch (should be ~1e-6)."""
    trainer, model = framework_step(shape, "sae", device, lr=1e-3, l1_coeff=1e-2)
    x = next(trainer.batches)
    fast = FastSAEStep(
        model.encoder.linear.weight[0], model.decoder.weight[0], x, 1e-3, 1e-2, torch.float32
    )
    for _ in range(steps):
        trainer()
        fast()
    model.decoder.renormalise_()
    fast.D.div_(torch.linalg.vector_norm(fast.D, dim=0, keepdim=True))
    return (model.decoder.weight[0] - fast.D).abs().max().item()


def check_fused_step(
    shape: dict[str, int], device: torch.device, steps: int = 5, **options: Any
) -> dict[str, float]:
    """The fused step in fp32 against the framework's fp32 steps from the same initialisation
    and batch: max |ΔD| of the decoder, and the relative differences of the tracked mean train
    MSE and L0 (all should be ~1e-6)."""
    trainer, model = framework_step(shape, "sae", device, lr=1e-3, l1_coeff=1e-2)
    x = next(trainer.batches)  # (d, B)
    weights = model.encoder.linear.weight[0], model.decoder.weight[0]
    step = FusedSAEStep(*weights, x, 1e-3, 1e-2, torch.float32, **options)
    for _ in range(steps):
        trainer()
        step()
    model.decoder.renormalise_()
    means = {k: v[0] for k, v in trainer.pop_means().items()}
    mse, _, l0 = (step.totals / steps).tolist()
    return {
        "max |ΔD|": (model.decoder.weight[0] - step.decoder()).abs().max().item(),
        "Δmse/mse": abs(mse - means["loss/mse/train"]) / means["loss/mse/train"],
        "Δl0/l0": abs(l0 - means["l0/train"]) / means["l0/train"],
    }


def check_masked_grad(shape: dict[str, int], device: torch.device) -> float:
    """bf16 ``fused.masked_grad`` at ``shape`` against fp32 torch: max error / max |reference|."""
    from sparsegap.accel import fused

    gen = torch.Generator(device=device).manual_seed(1)
    batch, dim, latents = shape["batch"], shape["dim"], shape["latents"]
    residual = torch.randn(batch, dim, device=device, generator=gen).bfloat16()
    atoms = torch.randn(dim, latents, device=device, generator=gen).bfloat16()
    codes = torch.randn(batch, latents, device=device, generator=gen).relu_().bfloat16()
    out = fused.masked_grad(residual, atoms, codes, 0.5)
    reference = torch.where(codes > 0, residual.float() @ atoms.float() + 0.5, 0.0)
    return ((out.float() - reference).abs().max() / reference.abs().max()).item()


def five_gemm_flop(shape: dict[str, int]) -> int:
    return 5 * 2 * shape["batch"] * shape["dim"] * shape["latents"]


class FiveGEMMs:
    """The step's five bf16 GEMMs alone (cuBLAS, token-major): the compute floor of any step."""

    def __init__(self, shape: dict[str, int], device: torch.device) -> None:
        batch, dim, latents = shape["batch"], shape["dim"], shape["latents"]
        bf16 = {"device": device, "dtype": torch.bfloat16}
        self.x = torch.randn(batch, dim, **bf16)
        self.W = torch.randn(latents, dim, **bf16) / dim**0.5
        self.D = torch.randn(dim, latents, **bf16) / dim**0.5
        self.codes = torch.empty(batch, latents, **bf16)
        self.grad = torch.empty(batch, latents, **bf16)
        self.flop = five_gemm_flop(shape)

    def __call__(self) -> None:
        torch.mm(self.x, self.W.T, out=self.codes)
        residual = self.codes @ self.D.T
        torch.mm(residual, self.D, out=self.grad)
        _ = residual.T @ self.codes
        _ = self.grad.T @ self.x


def profile_table(step: Callable[[], None], device: torch.device, steps: int = 20) -> str:
    """Per-kernel GPU time of ``steps`` steps (torch.profiler), the top rows."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    return prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=14, max_name_column_width=60
    )


# ---------------------------------------------------------------- harvesting
_MODELS: dict[bool, Path] = {}  # the random model's folder, saved once per run


def harvest_step(
    shape: dict[str, int], device: torch.device, dtype: str, small: bool
) -> tuple[Callable[[], None], int]:
    """One model batch of random token ids through the framework's harvesting code."""
    from omegaconf import OmegaConf
    from transformers import GPT2Config, GPT2LMHeadModel

    from sparsegap.config import LMDataConfig
    from sparsegap.data.activations import activations_of, load_transformer

    small_shape = {"n_layer": 2, "n_head": 4, "vocab_size": 1000} if small else {}
    # GPT-2 small's shape by default; BOS/EOS are the tokenizer's id 0 (written below).
    config = GPT2Config(n_embd=shape["dim"], bos_token_id=0, eos_token_id=0, **small_shape)
    folder = _MODELS.get(small)
    if folder is None:
        folder = _MODELS[small] = Path(tempfile.mkdtemp(prefix="bench-gpt2-"))
        GPT2LMHeadModel(config).save_pretrained(folder)
        _write_byte_tokenizer(folder)
    hook = f"blocks.{1 if small else 9}.hook_resid_pre"
    d = OmegaConf.structured(
        LMDataConfig(model_path=str(folder), hook=hook, dtype=dtype, context=shape["context"])
    )
    bridge = load_transformer(d, device)
    contexts = 8 if small else 64
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, config.vocab_size, (contexts, shape["context"]), generator=gen)
    tokens[:, 0] = 0
    tokens = tokens.to(device)

    def step() -> None:
        activations_of(bridge, tokens, d)

    return step, contexts * (shape["context"] - 1)


def _write_byte_tokenizer(folder: Path) -> None:
    """A tiny word-level tokenizer (the model never needs real text here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{chr(97 + i): 2 + i for i in range(26)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<unk>",
    ).save_pretrained(folder)  # fmt: skip


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--seconds", type=float, default=None, help="timing per variant")
    parser.add_argument("--budget", type=float, default=200.0, help="stop starting variants")
    parser.add_argument("--check", action="store_true", help="always check prototype = framework")
    parser.add_argument(
        "--only",
        default="",
        help="run the variants whose label holds one of these ('|'-separated: labels hold commas)",
    )
    parser.add_argument(
        "--skip", default="", help="skip the variants whose label contains one of these ('|')"
    )
    parser.add_argument("--profile", action="store_true", help="per-kernel times of the fused step")
    parser.add_argument(
        "--write-site",
        metavar="DIR",
        type=Path,
        help="copy the pure-Python packages a CUDA image lacks into DIR and stop",
    )
    args = parser.parse_args(argv)
    if args.write_site:
        size = write_site(args.write_site)
        print(f"{args.write_site}: {len(SITE_DISTRIBUTIONS)} distributions, {size / 2**20:.0f} MiB")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = SMALL if args.small else FULL
    seconds = args.seconds or (0.5 if args.small else 3.0)
    cuda = device.type == "cuda"
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) from {Path(torch.__file__).parent}"
    )
    print(f"python {sys.version.split()[0]} ({sys.executable}); device: {device} = {name}")
    if device.type == "cpu" and not args.small:
        print("no CUDA device: the full shapes would take very long on CPU; use --small")
        return 2
    print(
        f"shape: d={shape['dim']} → L={shape['latents']:,} latents, batch {shape['batch']:,}"
        f" tokens, MLP hidden {shape['hidden']:,}; {seconds:.1f} s per variant\n"
    )
    rows: list[tuple[str, str, str, str]] = []
    failures = 0

    def variant(label: str, make: Callable[[], tuple[Callable[[], Any], int]], warm: int) -> None:
        nonlocal failures
        if not any(part in label for part in args.only.split("|")):
            return
        if any(part and part in label for part in args.skip.split("|")):
            return
        if time.perf_counter() - started > args.budget:
            rows.append((label, "skipped", "", "time budget spent"))
            return
        t0 = time.perf_counter()
        if hasattr(make, "options"):  # a fused step: its options, for --profile
            fused_options[label] = make.options
        try:
            step, tokens = make()
            rate, ms = measure(step, device, tokens, warm, seconds)
            setup = time.perf_counter() - t0 - seconds
            rows.append(
                (label, f"{rate / 1e6:8.3f} M", f"{ms:8.3f}", f"set-up+warm-up {setup:.0f} s")
            )
        except Exception as error:  # one failure must not lose the other variants
            failures += 1
            detail = traceback.format_exception_only(type(error), error)[-1].strip()
            rows.append((label, "failed", "", detail[:150]))
        finally:
            if cuda:
                torch.cuda.empty_cache()
        print(f"  {rows[-1][0]:<78} {rows[-1][1]:>12} {rows[-1][2]:>10}  {rows[-1][3]}", flush=True)

    def fw(encoder: str, **options: Any) -> Callable[[], tuple[Callable[[], Any], int]]:
        def make() -> tuple[Callable[[], Any], int]:
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = options.get("tf32", False)
            step, _ = framework_step(shape, encoder, device, **options)
            return step, shape["batch"]

        return make

    def prototype(
        kind: type, graph: bool, **options: Any
    ) -> Callable[[], tuple[Callable[[], Any], int]]:
        """A bench-only step (``FastSAEStep`` or ``FusedSAEStep``), optionally graphed."""

        def make() -> tuple[Callable[[], Any], int]:
            torch.backends.cuda.matmul.allow_tf32 = False
            # Initialised like the framework (no framework import: runs under any CUDA Python).
            dim, latents = shape["dim"], shape["latents"]
            W = (torch.rand(latents, dim, device=device) * 2 - 1) / dim**0.5
            D = torch.randn(dim, latents, device=device)
            x = torch.randn(shape["batch"], dim, device=device).T
            step: Callable[[], None] = kind(W, D, x, 1e-4, 1e-3, **options)
            if graph:
                step = CUDAGraphed(step)
            return step, shape["batch"]

        return make

    fused_options: dict[str, dict[str, Any]] = {}  # label → FusedSAEStep options (--profile)

    def fused_step(graph: bool, **options: Any) -> Callable[[], tuple[Callable[[], Any], int]]:
        make = prototype(FusedSAEStep, graph, **options)
        make.options = options  # type: ignore[attr-defined]
        return make

    def gemms() -> tuple[Callable[[], Any], int]:
        return FiveGEMMs(shape, device), shape["batch"]

    print(f"{'variant':<80} {'tokens/s':>12} {'ms/step':>10}")
    sae = f"SAE {shape['dim']}→{shape['latents']}"
    # The fused step (Triton: CUDA only) first: it is what this bench is most often run for.
    if cuda:
        variant(f"{sae}: five bf16 GEMMs alone (floor)", gemms, 3)
        flop = five_gemm_flop(shape)
        if rows[-1][2].strip():
            ms = float(rows[-1][2])
            print(f"  (five GEMMs: {flop / ms / 1e9:.0f} TFLOP/s)")
        # The fastest variant measured, with and without the train statistics (docs/RESULTS.md:
        # the variants that lost were measured there and their code removed).
        variant(f"{sae}: fused step + train stats, CUDA graph", fused_step(True), 5)
        variant(f"{sae}: fused step, no stats, CUDA graph", fused_step(True, track=False), 5)
        try:
            from sparsegap.accel import fused

            for kind, timings in fused.autotune_timings().items():
                best = sorted(timings.items(), key=lambda item: item[1])[:4]
                shown = "; ".join(f"{ms * 1e3:.0f} µs {config}" for config, ms in best)
                print(f"  masked-gradient GEMM autotuning ({kind}), best: {shown}")
        except Exception as error:
            print(f"  (no autotuning timings: {error!r})")
        if args.profile and time.perf_counter() - started < args.budget:
            try:  # the fastest fused variant with train statistics, without its CUDA graph
                measured = [r for r in rows if r[0] in fused_options and "no stats" not in r[0]]
                measured = [r for r in measured if r[2].strip()]
                best = min(measured, key=lambda r: float(r[2]))[0] if measured else None
                options = fused_options.get(best, {})
                print(f"\nper-kernel times of {best or 'the fused step'} (no CUDA graph):")
                step, _ = fused_step(False, **options)()
                print(profile_table(step, device))
            except Exception as error:
                print(f"profile failed: {error!r}")
    variant(f"{sae}: framework fp32", fw("sae"), 3)
    if cuda:
        variant(f"{sae}: framework TF32", fw("sae", tf32=True), 3)
    variant(f"{sae}: framework bf16 autocast", fw("sae", autocast="bf16"), 3)
    variant(
        f"{sae}: framework bf16 autocast + compile", fw("sae", autocast="bf16", compile=True), 5
    )
    variant(
        f"{sae}: framework encoder.fast_step, bf16 (fused kernels)",
        fw("sae", autocast="bf16", fast_step=True),
        3,
    )
    if cuda:
        try:
            from sparsegap.accel import fused

            for shape_, persistent in fused.persistent_choices().items():
                kind = "persistent" if persistent else "one program per tile"
                print(f"  framework code-gradient kernel for {shape_}: {kind} (timed)")
        except Exception as error:
            print(f"  (no kernel choices: {error!r})")
    if cuda:
        variant(
            f"{sae}: framework encoder.fast_step, TF32", fw("sae", tf32=True, fast_step=True), 3
        )
    variant(
        f"{sae}: prototype bf16 GEMMs, f32 master+Adam, hand bwd",
        prototype(FastSAEStep, graph=False),
        3,
    )
    if cuda:
        variant(f"{sae}: prototype + CUDA graph", prototype(FastSAEStep, graph=True), 3)
    mlp = f"MLP {shape['dim']}→{shape['hidden']}→{shape['latents']}"
    layer = "layer 1 of 2 (small)" if args.small else "GPT-2 small, to blocks.9.hook_resid_pre"

    def harvest(dtype: str) -> Callable[[], tuple[Callable[[], Any], int]]:
        return lambda: harvest_step(shape, device, dtype, args.small)

    # Most wanted first, in case the time budget runs out.
    variant(f"{mlp}: framework fp32", fw("mlp"), 3)
    variant(
        f"{mlp}: framework bf16 autocast + compile", fw("mlp", autocast="bf16", compile=True), 5
    )
    variant(f"harvest {layer}, fp32", harvest("float32"), 2)
    variant(f"harvest {layer}, bf16", harvest("bfloat16"), 2)
    variant(f"{mlp}: framework bf16 autocast", fw("mlp", autocast="bf16"), 3)
    if args.check or time.perf_counter() - started < args.budget + 30:
        try:
            diff = check_fast_step(SMALL, device)
            print(f"\nprototype vs framework, fp32, 5 steps: max |ΔD| = {diff:.2e}")
            if diff > 1e-4:
                failures += 1
        except Exception as error:
            failures += 1
            print(f"\nprototype check failed: {error!r}")
    if cuda:  # the fused step's kernels: always checked where they run
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            diffs = check_fused_step(SMALL, device)
            error = check_masked_grad(shape, device)
            shown = ", ".join(f"{k} = {v:.2e}" for k, v in diffs.items())
            print(f"fused step vs framework, fp32, 5 steps: {shown}")
            print(f"masked_grad bf16 vs fp32 torch at full shape: max err / max = {error:.2e}")
            if max(diffs.values()) > 1e-4 or error > 2e-2:
                failures += 1
        except Exception as error:
            failures += 1
            print(f"\nfused step check failed: {error!r}")
    print(f"\n{len(rows)} variants, {failures} failed, {time.perf_counter() - started:.0f} s total")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
