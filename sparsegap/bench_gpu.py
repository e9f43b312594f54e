"""GPU throughput of the language-model path (`make bench-gpu`, or `python -m sparsegap.bench_gpu`).

Three measurements, each variant in its own try/except so one failure does not lose the others:

1. Encoder training steps on activations already on the device, 768 → 24,576 SAE, 4,096-token
   batches (paper §5's shape), through the framework's own ``Step`` (the code `python -m
   sparsegap data=lm` runs: renormalise, forward, loss, backward, Adam, train statistics) in
   fp32, TF32, bf16 autocast and bf16 autocast + torch.compile, and with ``encoder.fast_step``
   (the SAE's hand-written backward: five GEMMs, the ReLU mask from the codes, no autograd
   graph; bf16 GEMMs on copies of the fp32 weights, fp32 Adam); then a bench-only prototype of
   the same step stripped of the framework's bookkeeping (one replica, no train statistics),
   with and without a CUDA graph of the whole step. ``--check`` (and the CPU test) verifies in fp32
   that the prototype takes the framework's steps.
2. The MLP encoder (hidden 4,096) beside it, through the framework.
3. Harvesting: tokens/s through a randomly initialised GPT-2-small-shaped model (GPT2Config,
   no download) to ``blocks.9.hook_resid_pre``, through the framework's ``load_transformer`` and
   ``activations_of``, on random token ids.

Works with any Python whose torch sees CUDA: when run by a Python that lacks the framework's
pure-Python dependencies, the repository's .venv site-packages of the same Python version, and
``.bench-site`` (pure-Python packages copied from .venv by ``make bench-gpu-site``), are appended
to the path (torch, numpy and transformers stay the running Python's). The prototype rows need
torch alone. ``--small`` runs tiny shapes
(the CPU smoke test). The whole run stops starting new variants after ``--budget`` seconds.
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


def _with_repo_packages() -> None:
    """Make hydra, omegaconf, transformer-lens… importable under a foreign Python (e.g. the
    device machine's CUDA Python), without shadowing its torch."""
    needed = ("hydra", "omegaconf", "transformer_lens", "transformers", "safetensors")
    if not all(importlib.util.find_spec(name) for name in needed):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        root = Path(__file__).resolve().parents[1]
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
        MLPConfig,
        SAEConfig,
        ScenarioConfig,
    )

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
    from sparsegap.train import Step, build

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
    config = GPT2Config(n_embd=shape["dim"], **small_shape)  # GPT-2 small's shape by default
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
    parser.add_argument("--only", default="", help="run the variants whose label contains this")
    args = parser.parse_args(argv)
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
        if args.only not in label:
            return
        if time.perf_counter() - started > args.budget:
            rows.append((label, "skipped", "", "time budget spent"))
            return
        t0 = time.perf_counter()
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
        print(f"  {rows[-1][0]:<52} {rows[-1][1]:>12} {rows[-1][2]:>10}  {rows[-1][3]}", flush=True)

    def fw(encoder: str, **options: Any) -> Callable[[], tuple[Callable[[], Any], int]]:
        def make() -> tuple[Callable[[], Any], int]:
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = options.get("tf32", False)
            step, _ = framework_step(shape, encoder, device, **options)
            return step, shape["batch"]

        return make

    def fast(graph: bool) -> Callable[[], tuple[Callable[[], Any], int]]:
        def make() -> tuple[Callable[[], Any], int]:
            # Initialised like the framework (no framework import: runs under any CUDA Python).
            dim, latents = shape["dim"], shape["latents"]
            W = (torch.rand(latents, dim, device=device) * 2 - 1) / dim**0.5
            D = torch.randn(dim, latents, device=device)
            x = torch.randn(shape["batch"], dim, device=device).T
            step: Callable[[], None] = FastSAEStep(W, D, x, 1e-4, 1e-3)
            if graph:
                step = CUDAGraphed(step)
            return step, shape["batch"]

        return make

    print(f"{'variant':<54} {'tokens/s':>12} {'ms/step':>10}")
    sae = f"SAE {shape['dim']}→{shape['latents']}"
    variant(f"{sae}: framework fp32", fw("sae"), 3)
    if cuda:
        variant(f"{sae}: framework TF32", fw("sae", tf32=True), 3)
    variant(f"{sae}: framework bf16 autocast", fw("sae", autocast="bf16"), 3)
    variant(
        f"{sae}: framework bf16 autocast + compile", fw("sae", autocast="bf16", compile=True), 5
    )
    variant(
        f"{sae}: framework encoder.fast_step, bf16", fw("sae", autocast="bf16", fast_step=True), 3
    )
    if cuda:
        variant(
            f"{sae}: framework encoder.fast_step, TF32", fw("sae", tf32=True, fast_step=True), 3
        )
    variant(f"{sae}: prototype bf16 GEMMs, f32 master+Adam, hand bwd", fast(graph=False), 3)
    if cuda:
        variant(f"{sae}: prototype + CUDA graph", fast(graph=True), 3)
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
    print(f"\n{len(rows)} variants, {failures} failed, {time.perf_counter() - started:.0f} s total")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
