"""The other environment's side of tests/test_pretrained.py: run by ``SAELENS_PYTHON`` (sae-lens
and transformer-lens 3.x; ``make test`` builds it as .venv-saelens) in a subprocess.

    python tests/saelens_side.py saes OUT                SAEs built and saved by SAELens itself
    python tests/saelens_side.py load FOLDER...          SAELens's load_from_disk of each
    python tests/saelens_side.py harvest MODEL TEXT OUT  the adapter's harvest and LM loss

``harvest`` is also imported by the suite's own environment (transformer-lens 4.x), so both
sides compute exactly the same thing and the test compares the two files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

D, L, HOOK = 16, 40, "blocks.1.hook_resid_pre"
# Each SAELens architecture, and the conventions its config can switch on.
SAE_CASES = {
    "standard": ("standard", {}),
    "standard_raw_input_norm_rescale": (
        "standard",
        {"apply_b_dec_to_input": False, "normalize_activations": "constant_norm_rescale"},
    ),
    "standard_layer_norm": ("standard", {"normalize_activations": "layer_norm"}),
    "topk": ("topk", {"k": 5}),
    "topk_rescaled_by_decoder_norm": ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    "jumprelu": ("jumprelu", {}),
    "gated": ("gated", {}),
}


def saelens_saes(out: Path) -> None:
    """For each case: SAELens's SAE with random parameters (every one non-trivial: its own
    initialisation leaves biases and thresholds at zero), ``save_model`` into ``out/<case>``, and
    its ``encode``/``decode`` of fixed inputs into ``out/<case>/reference.pt``."""
    import sae_lens

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, D, generator=g) * 3
    for case, (architecture, extra) in SAE_CASES.items():
        sae_class, config_class = classes[architecture]
        cfg = config_class(d_in=D, d_sae=L, dtype="float32", device="cpu", **extra)
        cfg.metadata.model_name, cfg.metadata.hook_name = "tiny", HOOK
        sae = sae_class(cfg)
        with torch.no_grad():
            for name, parameter in sae.named_parameters():
                noise = torch.randn(parameter.shape, generator=g)
                scale = 0.1 if parameter.ndim == 1 else D**-0.5
                parameter.copy_(noise.abs() * 0.3 if name == "threshold" else noise * scale)
            codes = sae.encode(x)
            recon = sae.decode(codes)
        sae.save_model(out / case)
        torch.save({"x": x, "codes": codes, "recon": recon}, out / case / "reference.pt")


@torch.no_grad()
def saelens_load(folder: Path) -> None:
    """SAELens's ``load_from_disk`` of ``folder``, and its encode/decode of ``folder/x.pt`` into
    ``folder/reference.pt``."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(folder), device="cpu")
    x = torch.load(folder / "x.pt")
    codes = sae.encode(x)
    torch.save({"x": x, "codes": codes, "recon": sae.decode(codes)}, folder / "reference.pt")


@torch.no_grad()
def harvest(model_path: str, text: str, tokens: int = 256) -> dict:
    """Through ``lm_model``'s adapter (whichever transformer-lens major is installed): the tiny
    model's rows at HOOK as the activation pipeline harvests them, its hook names, and the
    downstream losses with the rows themselves and halved rows patched back in."""
    from omegaconf import OmegaConf

    from sparsegap.data.lm_model import load_language_model, transformer_lens_major
    from sparsegap.pretrained import lm_loss

    d = OmegaConf.create(
        {"hook": HOOK, "context": 32, "model_batch": 8, "exclude_special": True,
         "text_files": text, "text_column": "text", "prepend_bos": True}
    )  # fmt: skip
    model = load_language_model(model_path, "cpu", torch.float32)
    contexts, rows, mask = lm_loss.harvest(model, d, tokens)
    own = rows[: int(mask[:2].sum())]
    lm = lm_loss.downstream(model, HOOK, contexts[:2], mask[:2], {"own": own, "halved": own / 2})
    hooks = sorted(h for h in model.hook_dict if h.startswith("blocks.0.hook_"))
    return {"major": transformer_lens_major(), "contexts": contexts, "rows": rows,
            "mask": mask, "lm": lm, "hooks": hooks}  # fmt: skip


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "saes":
        saelens_saes(Path(args[0]))
    elif command == "load":
        for folder in args:
            saelens_load(Path(folder))
    else:
        model_path, text, out = args
        torch.save(harvest(model_path, text), out)
