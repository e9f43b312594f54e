"""A method declares itself once: the facts the framework derives from the declarations, and a
new encoder added from one file in the test tree (tests/plugins/toy_encoder.py) that runs
through Hydra, validation, training, FLOP counting and the report without touching the
package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, compose_config

from sparsegap.config import ConfigError, EncoderConfig
from sparsegap.encoders import ENCODERS
from sparsegap.encoders.base import KINDS
from sparsegap.inference import INFERENCE
from sparsegap.registry import encoders_for
from sparsegap.report.collect import display, is_iterative, label_of
from sparsegap.scenarios import SCENARIOS
from sparsegap.validate import validate

PLUGINS = ROOT / "tests" / "plugins"
TINY = ["steps=20", "eval_every=10", "replicas=2", "logger=none", "device=cpu", "progress=false",
        "device.threads=1", "data.train_samples=64", "data.test_samples=64"]  # fmt: skip


def test_every_encoder_declares_itself():
    for name, cls in ENCODERS.items():
        assert cls.name == name and cls.config.name == name
        assert issubclass(cls.config, EncoderConfig)
        assert cls.label and cls.kind in KINDS
        assert cls.scenarios and set(cls.scenarios) <= set(SCENARIOS)
    for name, cls in INFERENCE.items():
        assert cls.name == name and cls.label


def test_scenario_applicability_comes_from_the_declarations():
    assert set(encoders_for("unknown")) == set(ENCODERS)  # every built-in encoder learns there
    assert "sparse_coding" not in encoders_for("known_dictionary")
    assert set(encoders_for("known_codes")) == {
        n for n, c in ENCODERS.items() if c.kind == "one-pass"
    }
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["encoder=sae_ito", "scenario=known_codes"]))
    listed = str(error.value).split("Encoders for this scenario: ")[1].rstrip(".").split(", ")
    assert listed == encoders_for("known_codes")


def test_per_sample_encoders_are_refused_on_streamed_data():
    for name, cls in ENCODERS.items():
        if "unknown" not in cls.scenarios or name == "sklearn_dl":
            continue
        cfg = compose_config([f"encoder={name}", "data.stream_batch=64"])
        if cls.per_sample:
            with pytest.raises(ConfigError, match="per sample"):
                validate(cfg)
        else:
            validate(cfg)


def test_labels_and_kinds_come_from_the_declarations():
    assert display("topk") == "TopK SAE"
    assert display("mlp-256 lr=0.1") == "MLP (hidden 256) lr=0.1"
    assert display("sae_ito-scratch-fista") == "SAE + ITO (FISTA, from scratch)"
    assert display("sparse_coding") == "sparse coding (Adam)"
    assert display("unregistered-3") == "unregistered-3"
    # dictionary_learning and sklearn_dl infer test codes iteratively, like sparse coding.
    assert {n for n in ENCODERS if is_iterative(n)} == {
        "sparse_coding", "sae_ito", "dictionary_learning", "sklearn_dl"
    }  # fmt: skip
    # A default config's label round-trips to the method's own description.
    cfg = compose_config(["encoder=dictionary_learning"])
    assert display(label_of({"encoder": dict(cfg.encoder)})) == (
        f"dictionary learning (alt. min., {INFERENCE[cfg.encoder.inference.name].label})"
    )


def test_no_schema_is_an_option(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-m", "sparsegap", "--help"], env=env, capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "_schema" not in out.stdout
    options = out.stdout.split("encoder=NAME")[1].split("fields of every encoder")[0]
    listed = {line.split()[0] for line in options.splitlines()[1:] if line.strip() and
              not line.startswith("   ")}  # fmt: skip
    assert set(ENCODERS) <= listed
    with pytest.raises(Exception, match="sae_schema"):
        compose_config(["encoder=sae_schema"])


# ---------------------------------------------------------------- a plugin encoder, end to end
def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "SPARSEGAP_PLUGINS": "toy_encoder"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_an_encoder_from_one_file_runs_through_hydra_validation_flops_and_report(tmp_path):
    root = tmp_path / "runs"
    # Unknown scenario, beside three built-in encoders (the report's frontier needs four).
    sweep = _run(["-m", "sparsegap", "-m", "encoder=toy,sae,topk,lista", *TINY,
                  f"hydra.sweep.dir={root / 'unknown'}"], tmp_path)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    known = _run(["-m", "sparsegap", "encoder=toy", "scenario=known_dictionary", "encoder.gain=3",
                  *TINY, f"hydra.run.dir={root / 'known_dictionary'}"], tmp_path)  # fmt: skip
    assert known.returncode == 0, known.stderr[-3000:]

    # Its FLOPs, as it declares them, reach summary.json: one test-set inference pass, M=8,
    # N=16 latents, 64 samples, no bias: 2·M·L·B (matmul) + L·B (gain) + L·B (ReLU).
    summary = json.loads((root / "known_dictionary" / "summary.json").read_text())
    assert summary["config"]["encoder"] == {
        "name": "toy", "latents": None, "bias": False, "normalise_decoder": True, "gain": 3.0
    }  # fmt: skip
    latents, dim, samples = 16, 8, 64
    assert summary["final"]["flops/inference_test"] == 2 * dim * latents * samples + 2 * (
        latents * samples
    )
    assert summary["final"]["flops/train_cumulative"] > 0

    # Its own check: a bad value is one error line and exit code 2, before anything runs.
    bad = _run(["-m", "sparsegap", "encoder=toy", "encoder.gain=-1", *TINY], tmp_path)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: encoder.gain=-1.0 is invalid: must be positive"]
    # Its scenarios: known codes is not one of them, and the message lists those that apply.
    wrong = _run(["-m", "sparsegap", "encoder=toy", "scenario=known_codes", *TINY], tmp_path)
    assert wrong.returncode == 2 and "encoder=toy does not apply to scenario=known_codes" in (
        wrong.stderr
    )
    assert "toy" not in wrong.stderr.split("Encoders for this scenario:")[1]

    # Its label in the report.
    report = _run(["-m", "sparsegap.report", str(root)], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    frontier = (root / "report" / "frontier.md").read_text()
    assert "| Toy SAE |" in frontier and "| TopK SAE |" in frontier
