"""The framework's training step against an independent reference trainer written here.

The reference is plain autograd and ``torch.optim.Adam`` over copies of the framework model's
initial parameters, with each scenario's loss and the per-step renormalisation of learned atoms
written out below (nothing from ``sparsegap.scenarios`` or the encoders' hand-written backward
passes). Both run side by side; after 1, 2, 5 and 20 steps every parameter must agree to fp32
rounding, on every step path: the hand-written step (``encoder.fast_step=true``), autograd
(``fast_step=false``) and the MLP's C++ kernel (``encoder.native=true``: CPU, fp32, sample count
and hidden width multiples of 8). A wiring mistake — a coefficient, a factor of a gradient, a
skipped renormalisation — moves the trajectory far beyond that.
"""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config

# The framework's public building blocks, all imported here (only these lines change when they
# move): a model from a config, and its zero-argument training step.
from sparsegap.model import build as build_model
from sparsegap.step import make_step


def native_kernel_ran(model) -> bool:
    """Whether the MLP's C++ step was loaded (it is only loaded to take a step)."""
    native = getattr(model.encoder, "native", None)
    return native is not None and native._lib is not None


LR, L1_COEFF = 1e-2, 0.1  # a large L1 weight, so the L1 term shapes every gradient
# Small: 64 training samples (a multiple of 8, as the C++ kernel needs), a hidden width of 16.
SIZES = [
    "data.train_samples=64",
    "data.test_samples=64",
    "replicas=2",
    f"lr={LR}",
    f"l1_coeff={L1_COEFF}",
]
CHECKED_AFTER = (1, 2, 5, 20)
# fp32 rounding, amplified a little by 20 Adam steps; the weights move by ~0.1 over the test.
RTOL, ATOL = 1e-4, 1e-5

ENCODER_OVERRIDES = {"mlp": ["encoder.hidden=16"]}
# (scenario, encoder, extra overrides): every pair the scenarios allow among these encoders,
# once per step path the pair has.
CASES = [
    ("known_codes", "sae", []),
    ("known_codes", "mlp", []),
    ("known_codes", "topk", []),
]
for _scenario in ("known_dictionary", "unknown"):
    _encoders = ["sae", "mlp", "sae_ito"] + (["sparse_coding"] if _scenario == "unknown" else [])
    for _encoder in _encoders:
        CASES.append((_scenario, _encoder, ["encoder.fast_step=false"]))
        _torch = ["encoder.native=false"] if _encoder == "mlp" else []
        CASES.append((_scenario, _encoder, ["encoder.fast_step=true", *_torch]))
    CASES.append((_scenario, "mlp", ["encoder.fast_step=true", "encoder.native=true"]))
    CASES.append((_scenario, "topk", []))
CASES += [
    ("unknown", "sae", ["encoder.fast_step=true", "encoder.bias=true"]),
    ("unknown", "mlp", ["encoder.fast_step=true", "encoder.native=true", "encoder.bias=true"]),
    ("unknown", "mlp", ["encoder.fast_step=false", "encoder.bias=true"]),
    ("known_dictionary", "sae", ["encoder.fast_step=false", "encoder.bias=true"]),
    ("known_codes", "mlp", ["encoder.bias=true"]),
]


class ReferenceTrainer:
    """One model per replica in a leading axis; the loss is summed over replicas, so each
    replica gets its own gradient."""

    def __init__(self, model, cfg) -> None:
        self.scenario, self.encoder = cfg.scenario.name, cfg.encoder.name
        self.k = cfg.data.K  # TopK keeps data.K latents per sample unless told otherwise
        data = model.data
        self.x, self.true_codes = data.x_train.clone(), data.codes_train.clone()
        self.params = {
            name: p.detach().clone().requires_grad_()
            for name, p in model.encoder.named_parameters()
            if p.requires_grad
        }
        trained = list(self.params.values())
        self.atoms = None
        if self.scenario == "known_dictionary":  # the true dictionary, frozen
            self.atoms = data.dictionary.expand(cfg.replicas, *data.dictionary.shape).clone()
        elif self.scenario == "unknown":
            self.atoms = model.decoder.weight.detach().clone().requires_grad_()
            trained.append(self.atoms)
        self.optimiser = torch.optim.Adam(trained, lr=LR)

    def linear(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self.params[f"{prefix}.weight"], x)  # (R, out, in) @ (in, B)
        bias = self.params.get(f"{prefix}.bias")
        return y if bias is None else y + bias

    def codes(self) -> torch.Tensor:
        x = self.x
        if self.encoder in ("sae", "sae_ito"):  # SAE+ITO trains exactly like the SAE
            return torch.relu(self.linear("linear", x))
        if self.encoder == "mlp":
            return torch.relu(self.linear("out", torch.relu(self.linear("hidden", x))))
        if self.encoder == "sparse_coding":
            return torch.exp(self.params["log_codes"])
        if self.encoder == "topk":  # keep each sample's k largest activations
            pre = torch.relu(self.linear("linear", x))
            kth = pre.sort(dim=1, descending=True).values[:, self.k - 1 : self.k, :]
            return pre * (pre >= kth)
        raise AssertionError(self.encoder)

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        if self.scenario == "known_codes":  # minus the mean cosine of each latent's row
            true = self.true_codes.unsqueeze(0)
            dot = (codes * true).sum(dim=2)
            norms = codes.norm(dim=2).clamp_min(1e-8) * true.norm(dim=2).clamp_min(1e-8)
            return -(dot / norms).mean(dim=1).sum()
        mse = ((self.atoms @ codes - self.x) ** 2).mean(dim=(1, 2))
        if self.encoder == "topk":  # sparse by construction: no L1 term
            return mse.sum()
        return (mse + L1_COEFF * codes.abs().mean(dim=(1, 2))).sum()

    def step(self) -> None:
        if self.scenario == "unknown":  # unit-norm atoms before every step
            with torch.no_grad():
                self.atoms /= self.atoms.norm(dim=1, keepdim=True)
        self.optimiser.zero_grad()
        self.loss(self.codes()).backward()
        self.optimiser.step()


def _id(case) -> str:
    scenario, encoder, extra = case
    return "-".join([scenario, encoder, *(e.removeprefix("encoder.") for e in extra)])


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()  # tiny matmuls: threads only add contention
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_the_training_step_equals_the_reference_trainer(case):
    scenario, encoder, extra = case
    overrides = [*SIZES, f"scenario={scenario}", f"encoder={encoder}"]
    cfg = compose_config([*overrides, *ENCODER_OVERRIDES.get(encoder, []), *extra])
    model = build_model(cfg)
    step = make_step(model)
    reference = ReferenceTrainer(model, cfg)
    initial = {name: p.detach().clone() for name, p in reference.params.items()}

    for done in range(1, max(CHECKED_AFTER) + 1):
        step()
        reference.step()
        if done not in CHECKED_AFTER:
            continue
        framework = dict(model.encoder.named_parameters())
        pairs = {name: (framework[name], value) for name, value in reference.params.items()}
        if scenario == "unknown":
            pairs["decoder"] = (model.decoder.weight, reference.atoms)
        for name, (actual, expected) in pairs.items():
            where = f"{name} after {done} steps"
            torch.testing.assert_close(
                actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m, w=where: f"{w}: {m}"
            )
        if scenario == "known_dictionary":
            assert torch.equal(model.decoder.weight, reference.atoms)

    # The comparison is far from trivial: the weights moved by much more than the tolerance.
    moved = max((v - initial[n]).abs().max().item() for n, v in reference.params.items())
    assert moved > 100 * ATOL, moved
    if "encoder.native=true" in extra:
        assert native_kernel_ran(model)
