"""Pretrained SAEs: the loaders' encode/decode against the formats' own definitions, the refit,
export round trips, malformed folders, and the measurement end to end on a tiny model.

The SAELens reference is SAELens itself, run by ``SAELENS_PYTHON`` (a Python with sae-lens and
transformer-lens 3.x, since sae-lens 6 needs transformer-lens < 4 and this suite's venv has 4.x;
``make test`` builds .venv-saelens and sets it) in a subprocess, through tests/saelens_side.py; the
same Python runs the model adapter under transformer-lens 3.x. Where the variable is unset (pytest
run by hand) those tests skip; a set but broken one fails them. The formulas of SAELens's
encode/decode are also written out here, so the loaders are checked without it too.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_config
from lm_helpers import write_corpus, write_tiny_model
from saelens_side import SAE_CASES
from safetensors.torch import save_file
from scipy.optimize import nnls as scipy_nnls

from sparsegap.__main__ import run
from sparsegap.config import ConfigError, InferenceConfig
from sparsegap.inference import build_inference, refit
from sparsegap.pretrained import loaders
from sparsegap.pretrained.export import export_run, save_saelens
from sparsegap.pretrained.sae import PretrainedSAE

D, L = 16, 40
SIDE = Path(__file__).with_name("saelens_side.py")


@pytest.fixture(scope="session")
def saelens_python() -> str:
    """``SAELENS_PYTHON``, checked: a Python where sae-lens and transformer-lens 3.x import."""
    python = os.environ.get("SAELENS_PYTHON")
    if not python:
        pytest.skip("SAELENS_PYTHON is unset: no SAELens to compare with (make test sets it)")
    probe = subprocess.run(
        [python, "-c", "import sae_lens, transformer_lens"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, f"SAELENS_PYTHON={python} is broken: {probe.stderr[-1000:]}"
    return python


def run_side(python: str, *args: str | Path) -> None:
    """tests/saelens_side.py under ``python``, failing with its stderr."""
    result = subprocess.run([python, str(SIDE), *map(str, args)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def random_weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D, L, generator=g) / D**0.5,
        "W_dec": torch.randn(L, D, generator=g) / D**0.5,
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    if architecture == "gated":
        w |= {k: torch.randn(L, generator=g) * 0.1 for k in ("b_gate", "b_mag", "r_mag")}
    else:
        w["b_enc"] = torch.randn(L, generator=g) * 0.1
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(L, generator=g) * 0.3
    return w


def reference_encode(arch: str, w: dict, x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """SAELens 6's encode for apply_b_dec_to_input=True, normalize_activations=none."""
    y = x - w["b_dec"]
    if arch == "gated":
        gate = (y @ w["W_enc"] + w["b_gate"] > 0).float()
        return gate * (y @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu()
    pre = y @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return pre.relu()
    if arch == "jumprelu":
        return pre.relu() * (pre > w["threshold"]).float()
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.relu())


def write_saelens(folder: Path, arch: str, weights: dict, **cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, folder / "sae_weights.safetensors")
    config = {"architecture": arch, "d_in": D, "d_sae": L, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": True, "normalize_activations": "none",
              "metadata": {"model_name": "tiny", "hook_name": "blocks.1.hook_resid_pre",
                           "sae_lens_version": "6.0.0"}, **cfg}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_folder_encodes_and_decodes_like_saelens(arch, tmp_path):
    weights = random_weights(arch)
    extra = {"k": 5} if arch == "topk" else {}
    sae = loaders.load_sae(write_saelens(tmp_path / arch, arch, weights, **extra))
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    codes = sae.encode(x)
    torch.testing.assert_close(codes, reference_encode(arch, weights, x), rtol=0, atol=1e-6)
    assert (codes > 0).sum(-1).max() <= (5 if arch == "topk" else L)
    torch.testing.assert_close(sae.decode(codes), codes @ weights["W_dec"] + weights["b_dec"])
    # The decoder is linear in the normalised space: atoms and target describe it exactly.
    torch.testing.assert_close(
        codes @ sae.atoms().T, sae.decode(codes) - weights["b_dec"], rtol=1e-5, atol=1e-6
    )


def test_saelens_conventions_scaling_and_normalisation(tmp_path):
    weights = random_weights("standard")
    scale = torch.rand(L) + 0.5
    folder = tmp_path / "s"
    sae = loaders.load_sae(write_saelens(folder, "standard", {**weights, "scaling_factor": scale},
                                         normalize_activations="constant_norm_rescale",
                                         apply_b_dec_to_input=False))  # fmt: skip
    x = torch.randn(8, D) * 7
    coeff = D**0.5 / x.norm(dim=-1, keepdim=True)
    codes = (x * coeff @ weights["W_enc"] + weights["b_enc"]).relu()
    torch.testing.assert_close(sae.encode(x), codes)
    expected = ((codes * scale) @ weights["W_dec"] + weights["b_dec"]) / coeff
    torch.testing.assert_close(sae.reconstruct(x), expected, rtol=1e-5, atol=1e-5)
    folded = sae.fold_scaling_factor(2.0)
    assert folded.normalize_activations == "none"


def write_sparsify(folder: Path, k: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """A sparsify SAE the way ``SparseCoder.save_to_disk`` writes one (``save_model`` of the
    module: encoder.weight (L, d), encoder.bias, W_dec (L, d), b_dec; cfg.json with d_in)."""
    g = torch.Generator().manual_seed(seed)
    state = {"encoder.weight": torch.randn(L, D, generator=g),
             "encoder.bias": torch.randn(L, generator=g),
             "W_dec": torch.randn(L, D, generator=g),
             "b_dec": torch.randn(D, generator=g)}  # fmt: skip
    folder.mkdir(parents=True)
    save_file(state, folder / "sae.safetensors")
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
           "num_latents": L, "k": k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, state


def test_sparsify_folder(tmp_path):
    folder, s = write_sparsify(tmp_path / "layers.1")
    sae = loaders.load_sae(folder)
    assert sae.hook == "blocks.1.hook_resid_post" and sae.k == 4
    x = torch.randn(32, D)
    # sparsify: TopK of ReLU((x - b_dec)·encoder.weightᵀ + bias); decode = acts·W_dec + b_dec.
    pre = ((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]).relu()
    values, index = pre.topk(4, dim=-1)
    codes = sae.encode(x)
    torch.testing.assert_close(codes.gather(-1, index), values)
    assert ((codes != 0).sum(-1) <= 4).all()
    decoded = values.unsqueeze(1).matmul(s["W_dec"][index]).squeeze(1) + s["b_dec"]
    torch.testing.assert_close(sae.decode(codes), decoded, rtol=1e-5, atol=1e-5)
    assert loaders.sparsify_hook("gpt_neox.layers.3.mlp") == "blocks.3.hook_mlp_out"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: (f / "sae_weights.safetensors").unlink(), "no sae_weights.safetensors"),
        (lambda f: (f / "cfg.json").unlink(), "cfg.json is missing"),
        (
            lambda f: _edit(f, architecture="matryoshka"),
            "architecture='matryoshka' is not supported",
        ),
        (lambda f: _edit(f, d_in=D + 1), "d_in=17 but W_enc has 16"),
        (lambda f: _reweigh(f, W_dec=torch.randn(L, D + 1)), "W_dec has shape (40, 17)"),
    ],
)
def test_malformed_folders_are_one_line_errors(tmp_path, mutate, message):
    folder = write_saelens(tmp_path / "bad", "standard", random_weights("standard"))
    mutate(folder)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        loaders.load_sae(folder)
    assert "\n" not in str(error.value)


def _edit(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg | changes))


def _reweigh(folder: Path, **changes) -> None:
    weights = random_weights("standard") | changes
    save_file(weights, folder / "sae_weights.safetensors")


def test_refit_is_nnls_on_the_support(monkeypatch):
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(2, D, L, generator=g), dim=1)
    x = torch.randn(D, 50, generator=g)
    init = torch.randn(2, L, 50, generator=g).relu() * (torch.rand(2, L, 50, generator=g) < 0.15)
    codes = build_inference(InferenceConfig(name="refit"), 0.0)(x, atoms, init)
    assert not ((codes != 0) & (init == 0)).any() and (codes >= 0).all()
    for r, b in itertools.product(range(2), range(50)):
        support = init[r, :, b].nonzero().flatten()
        if len(support):
            exact, _ = scipy_nnls(atoms[r][:, support].double().numpy(), x[:, b].double().numpy())
            torch.testing.assert_close(codes[r, support, b].double(), torch.from_numpy(exact),
                                       rtol=1e-4, atol=1e-4)  # fmt: skip
    # Chunks of a few samples (each its own support width) give the same codes.
    monkeypatch.setattr(refit, "CHUNK_ELEMENTS", 2 * D * 32)
    chunked = build_inference(InferenceConfig(name="refit"), 0.0)(x, atoms, init)
    torch.testing.assert_close(chunked, codes, rtol=1e-5, atol=1e-6)
    # Without init, the support is FISTA's at the configured L1 weight.
    fista_support = (
        build_inference(InferenceConfig(name="fista", iterations=50), 0.05)(x, atoms) != 0
    )
    refitted = build_inference(InferenceConfig(name="refit", iterations=50), 0.05)(x, atoms)
    assert not ((refitted != 0) & ~fista_support).any()


# ---------------------------------------------------------------- a tiny model, end to end
SMALL = ["device.threads=1", "data.hook=blocks.1.hook_resid_pre", "data.context=32",
         "data.model_batch=16", "data.test_tokens=256", "data.batch_tokens=128",
         "data.shuffle_tokens=512", "data.normalise=true", "encoder.latents=64", "lr=3e-3",
         "replicas=2", "data.tokens=6400", "eval_every=50", "logger=none"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    model, text = write_tiny_model(root / "model"), write_corpus(root / "text", documents=300)
    threads = torch.get_num_threads()
    runs = {}
    for encoder, extra in [("sae", ["l1_coeff=10"]), ("topk", ["encoder.k=4"]), ("gated", []),
                           ("jumprelu", []), ("batch_topk", ["encoder.k=4"]),
                           ("mlp", [])]:  # fmt: skip
        cfg = compose_config(["data=lm", f"data.model_path={model}", f"data.text_files={text}",
                              f"encoder={encoder}", *SMALL, *extra])  # fmt: skip
        run(cfg, root / encoder)
        runs[encoder] = root / encoder
    torch.set_num_threads(threads)
    return {"model": model, "text": text, **runs}


@pytest.mark.parametrize("encoder", ["sae", "topk", "gated", "jumprelu", "batch_topk"])
def test_sparsegap_run_loads_and_exports(tiny, encoder, tmp_path):
    from sparsegap import checkpoint

    model, cfg = checkpoint.load_model(tiny[encoder])
    sae = loaders.load_sae(tiny[encoder], replica=1)
    x = torch.randn(cfg.data.dim, 100) * 3
    scaled = x * cfg.data.input_scale
    expected = model.encoder.infer(scaled, model.decoder.weight)[1].T
    torch.testing.assert_close(sae.encode(x.T), expected, rtol=1e-4, atol=1e-5)
    recon = model.decoder(expected.T[None].expand(2, -1, -1))[1].T / cfg.data.input_scale
    torch.testing.assert_close(sae.decode(expected), recon, rtol=1e-4, atol=1e-5)
    folder = export_run(tiny[encoder], tmp_path / "exported", replica=1)
    again = loaders.load_sae(folder)
    assert again.hook == "blocks.1.hook_resid_pre" and again.architecture == sae.architecture
    assert (again.encode(x.T) - sae.encode(x.T)).abs().max() <= 1e-6


def test_export_loads_in_saelens(tiny, saelens_python, tmp_path):
    """Export → SAELens's own load_from_disk → the same codes and reconstructions as the
    sparsegap loader (fp32, ≤ 1e-6), for each exportable encoder (one SAELens process)."""
    encoders = ["sae", "topk", "gated", "jumprelu", "batch_topk"]
    folders = [export_run(tiny[e], tmp_path / e, replica=1) for e in encoders]
    x = torch.randn(100, 32, generator=torch.Generator().manual_seed(0)) * 3
    for folder in folders:
        torch.save(x, folder / "x.pt")
    run_side(saelens_python, "load", *folders)
    for folder in folders:
        reference = torch.load(folder / "reference.pt")
        assert (reference["codes"] != 0).any(), folder.name
        assert_matches_reference(loaders.load_sae(folder), reference)


def test_saelens_saved_folders_load_like_saelens(saelens_python, tmp_path):
    """SAEs of every architecture (and conventions) built and saved by SAELens's own classes."""
    run_side(saelens_python, "saes", tmp_path)
    for case, (architecture, _) in SAE_CASES.items():
        sae = loaders.load_sae(tmp_path / case)
        assert sae.architecture == architecture and sae.hook == "blocks.1.hook_resid_pre", case
        reference = torch.load(tmp_path / case / "reference.pt")
        assert (reference["codes"] != 0).any(-1).all(), case  # every token has active latents
        assert_matches_reference(sae, reference)


def assert_matches_reference(sae: PretrainedSAE, reference: dict[str, torch.Tensor]) -> None:
    codes = sae.encode(reference["x"])
    torch.testing.assert_close(codes, reference["codes"], rtol=0, atol=1e-6)
    # Per-token normalisations decode with the statistics of the x they encoded (as SAELens);
    # undoing layer_norm rounds differently in the last bit (reconstructions reach |10|).
    recon = sae.decode(reference["codes"], reference["x"])
    torch.testing.assert_close(recon, reference["recon"], rtol=1e-6, atol=1e-6)


def test_adapter_agrees_across_transformer_lens_versions(tiny, saelens_python, tmp_path):
    """lm_model's adapter under transformer-lens 3.x (HookedTransformer, SAELENS_PYTHON) and 4.x
    (TransformerBridge, this venv): the same tokens, rows at the hook, and downstream losses."""
    from saelens_side import harvest

    run_side(saelens_python, "harvest", tiny["model"], tiny["text"], tmp_path / "tl3.pt")
    tl3, tl4 = torch.load(tmp_path / "tl3.pt"), harvest(str(tiny["model"]), str(tiny["text"]))
    assert (tl3["major"], tl4["major"]) == (3, 4)
    assert torch.equal(tl3["contexts"], tl4["contexts"]) and torch.equal(tl3["mask"], tl4["mask"])
    assert tl3["rows"].shape[0] >= 256 and tl3["rows"].abs().max() > 0
    torch.testing.assert_close(tl3["rows"], tl4["rows"], rtol=0, atol=1e-6)
    assert set(tl3["hooks"]) <= set(tl4["hooks"])
    for method in ("clean", "zero_ablation", "own", "halved"):
        for key, value in tl3["lm"][method].items():
            assert value == pytest.approx(tl4["lm"][method][key], abs=1e-5), (method, key)
    assert tl3["lm"]["own"]["kl"] == pytest.approx(0, abs=1e-6)


def test_export_refuses_mlp(tiny, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.pretrained.export", str(tiny["mlp"]), str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1
        and "encoder=mlp has no SAELens-style equivalent" in result.stderr
    )


def test_measurement_end_to_end(tiny, tmp_path):
    out = tmp_path / "gap"
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.pretrained", f"sae.path={tiny['sae']}",
         f"data.text_files={tiny['text']}", "data.context=32", "data.tokens=256",
         "gap.search_tokens=128", "gap.fista_iterations=60", "gap.ito_iterations=40",
         "gap.search_steps=6", "gap.lm_contexts=2", "gap.curve=[1.0,2.0]", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
        env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    points = {(p["method"], p["multiplier"]): p for p in results["points"]}
    encoder, refit = points[("encoder", None)], points[("refit", None)]
    assert refit["l0"] <= encoder["l0"] and refit["normalised_mse"] < encoder["normalised_mse"]
    assert {m for m, _ in points} == {"encoder", "refit", "fista", "omp", "ito"}
    assert points[("omp", 1.0)]["l0"] <= results["omp_k"] == max(1, round(encoder["l0"]))
    for method in ("encoder", "refit", "fista", "omp", "ito"):
        lm = points[(method, None if method in ("encoder", "refit") else 1.0)]["lm"]
        assert set(lm) == {"ce_loss", "kl", "ce_recovered"} and lm["kl"] >= -1e-6
    assert (out / "report.md").read_text().count("|") > 20 and (out / "pareto.png").stat().st_size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wandb"]["mode"] == "offline"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.hook=blocks.7.hook_resid_pre", "the model has 2 blocks, blocks.0 … blocks.1"),
    ],
)
def test_hook_problems_fail_before_harvesting(tiny, tmp_path, override, message):
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.pretrained", f"sae.path={tiny['sae']}",
         f"data.text_files={tiny['text']}", override, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])
    assert "harvesting" not in result.stderr


def test_shape_mismatch_with_the_hook(tiny, tmp_path):
    folder = write_saelens(tmp_path / "s", "standard", random_weights("standard"))  # d = 16 ≠ 32
    _edit(
        folder, metadata={"model_name": str(tiny["model"]), "hook_name": "blocks.1.hook_resid_pre"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.pretrained", f"sae.path={folder}",
         f"data.text_files={tiny['text']}", f"hydra.run.dir={tmp_path / 'o'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2 and "d_in=16 but blocks.1.hook_resid_pre" in result.stderr


def test_pretrained_sae_rejects_unknown_normalisation():
    with pytest.raises(ConfigError, match="normalize_activations='whiten'"):
        PretrainedSAE("standard", random_weights("standard"), normalize_activations="whiten")


def test_saved_saelens_folder_round_trips(tmp_path):
    sae = PretrainedSAE("topk", random_weights("topk"), k=3, hook="h", model="m")
    again = loaders.load_sae(save_saelens(sae, tmp_path / "t"))
    x = torch.randn(10, D)
    assert torch.equal(again.encode(x), sae.encode(x)) and again.k == 3
