"""Write an SAE in SAELens's disk layout (``SAE.load_from_disk`` reads it back).

    python -m sparsegap.pretrained.export RUN_DIR OUT_DIR [--replica 0]

exports a sparsegap ``data=lm`` run (encoders sae, topk, batch_topk, jumprelu, gated; batch_topk
infers with a fixed threshold, so it becomes a jumprelu SAE). MLP and iterative encoders have no
SAELens architecture: the export refuses them with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from sparsegap.config import ConfigError
from sparsegap.pretrained.loaders import SAELENS_CONFIG, SAELENS_WEIGHTS, load_sparsegap
from sparsegap.pretrained.sae import PretrainedSAE

# The cfg.json format written (SAELens ≥ 6.0 reads model and hook from "metadata").
SAELENS_FORMAT_VERSION = "6.0.0"


def saelens_config(sae: PretrainedSAE) -> dict:
    metadata = {
        "model_name": sae.model,
        "hook_name": sae.hook,
        "hook_head_index": None,
        **{k: v for k, v in sae.metadata.items() if v is not None},
        "sae_lens_version": SAELENS_FORMAT_VERSION,
    }
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.dim,
        "d_sae": sae.latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if sae.architecture == "topk":
        cfg |= {"k": sae.k, "rescale_acts_by_decoder_norm": sae.rescale_acts_by_decoder_norm}
    return cfg


def save_saelens(sae: PretrainedSAE, folder: str | Path) -> Path:
    """``folder``/cfg.json and ``folder``/sae_weights.safetensors (float32, CPU)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in sae.weights.items()}
    save_file(tensors, folder / SAELENS_WEIGHTS)
    (folder / SAELENS_CONFIG).write_text(json.dumps(saelens_config(sae), indent=2))
    return folder


def export_run(run_dir: str | Path, folder: str | Path, replica: int = 0) -> Path:
    """Export replica ``replica`` of a sparsegap data=lm run to ``folder`` (SAELens layout)."""
    return save_saelens(load_sparsegap(Path(run_dir), replica), folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparsegap.pretrained.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", help="a sparsegap data=lm run folder (or its checkpoint/)")
    parser.add_argument("out_dir", help="the SAELens folder to write")
    parser.add_argument("--replica", type=int, default=0, help="which replica of the run")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run_dir, args.out_dir, args.replica)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} (replica {args.replica}) to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
