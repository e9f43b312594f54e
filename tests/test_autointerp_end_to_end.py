"""Autointerp end to end on CPU: a TopK SAE trained (``data=lm``) on the tiny random transformer's
residual stream, then ``explainer=ngram scorer=rule`` through the entry point's run function:
outputs, the W&B run, and ``sparsegap-report``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from autointerp_helpers import compose_cfg
from helpers import compose_config
from lm_helpers import write_corpus, write_tiny_model

from sparsegap.autointerp.__main__ import run as autointerp
from sparsegap.autointerp.pipeline import execute
from sparsegap.config import ConfigError


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128-latent TopK SAE (k = 4) trained on 2,048 tokens: each latent fires on a few % of
    tokens, so most fire in some 32-token contexts and not in others."""
    from sparsegap.__main__ import run

    root = tmp_path_factory.mktemp("lm")
    model, corpus = write_tiny_model(root / "model"), write_corpus(root / "text", documents=400)
    cfg = compose_config(
        ["data=lm", f"data.model_path={model}", f"data.text_files={corpus}",
         "data.hook=blocks.1.hook_resid_pre", "data.context=32", "data.model_batch=16",
         "data.test_tokens=512", "data.batch_tokens=128", "data.shuffle_tokens=1024",
         "data.normalise=true", "data.tokens=2048", "encoder=topk", "encoder.k=4",
         "encoder.latents=128", "replicas=1", "lr=3e-3", "eval_every=8", "device=cpu"]
    )  # fmt: skip
    run(cfg, root / "run")
    return root / "run"


def test_fifty_features_explained_scored_and_reported(lm_run, tmp_path, capsys):
    from sparsegap.report.__main__ import main as report_main

    cfg = compose_cfg(
        [f"run={lm_run}", "explainer=ngram", "scorer=rule", "features=50", "logger=wandb",
         "device=cpu", "device.threads=1", "corpus.tokens=16384"]
    )  # fmt: skip
    out = tmp_path / "autointerp" / "sae"
    started = time.time()
    f1 = autointerp(cfg, out)
    assert time.time() - started < 60
    summary = json.loads((out / "autointerp.json").read_text())
    assert summary["status"] == "completed" and summary["label"] == "topk-L128"
    assert summary["features"] == 50 and summary["explained"] == 50 and summary["scored"] == 50
    assert f1 == summary["f1_mean"] and 0 < f1 <= 1
    assert summary["balanced_accuracy_mean"] > 0.55  # token statistics beat chance
    assert summary["llm_usage"] is None and summary["config"]["features"] == 50
    # held out: the corpus after the 512 + 2,048 tokens the run consumed
    assert summary["held_out_tokens"] == 16_384
    records = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert len(records) == 50 and len({r["feature"] for r in records}) == 50
    for r in records:
        explain = {e["context"] for e in r["explain_examples"]}
        assert not explain & {e["context"] for e in r["score_examples"]}
        assert len(r["logits"]["top"]) == 10 and r["explanation"].startswith("Fires on")
        assert sum(e["label"] for e in r["score_examples"]) == 5
    assert Path(summary["wandb"]["dir"]).exists() and summary["wandb"]["mode"] == "offline"
    assert (out / "report" / "f1_by_encoder.png").stat().st_size > 0
    assert not list(out.rglob("*.tmp"))

    # sparsegap-report on a folder with this output and a copy labelled as an MLP's
    mlp = out.parent / "mlp"
    shutil.copytree(out, mlp, ignore=shutil.ignore_patterns("report", "wandb"))
    summary["label"] = "mlp-256"
    (mlp / "autointerp.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert report_main([str(out.parent)]) == 0
    text = (out.parent / "report" / "summary.md").read_text()
    assert (
        "| topk-L128 | 1 | 50 | 50 | none |" in text and "| mlp-256 | 1 | 50 | 50 | none |" in text
    )
    assert text.count("| topk-L128 | ") == 51  # the encoder's row and one per feature
    assert len((out.parent / "report" / "features.csv").read_text().splitlines()) == 101
    assert (out.parent / "report" / "f1_by_encoder.pdf").stat().st_size > 0
    assert "mean F1 [95 % CI]" in capsys.readouterr().out


def test_a_failing_run_is_marked_failed_and_its_wandb_run_finished(tmp_path):
    import wandb

    cfg = compose_cfg(["explainer=ngram", "scorer=rule", "logger=wandb"])

    def broken():
        raise RuntimeError("the model went away")

    with pytest.raises(RuntimeError):
        execute(cfg, tmp_path, broken)
    written = json.loads((tmp_path / "autointerp.json").read_text())
    assert written["status"] == "failed" and "the model went away" in written["error"]
    assert written["wandb"]["mode"] == "offline" and wandb.run is None


def test_invalid_runs_are_config_errors(tmp_path, lm_run):
    cfg = compose_cfg([f"run={tmp_path / 'nope'}", "explainer=ngram", "scorer=rule"])
    with pytest.raises(ConfigError, match=r"run=.*nope.* is invalid: not a folder"):
        autointerp(cfg, tmp_path / "out")
    cfg = compose_cfg([f"run={tmp_path}", "explainer=ngram", "scorer=rule"])
    with pytest.raises(ConfigError, match=r"run=.* is invalid: no checkpoint"):
        autointerp(cfg, tmp_path / "out")
    cfg = compose_cfg([f"run={lm_run}", "replica=3", "explainer=ngram", "scorer=rule"])
    with pytest.raises(ConfigError, match=r"replica=3 is invalid: the run has 1 replicas, 0…0"):
        autointerp(cfg, tmp_path / "out")


def test_entry_point_exits_2_naming_the_key_value_and_allowed_values(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.autointerp", "run=x", "llm.concurrency=0", "logger=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: llm.concurrency=0 is invalid: must be at least 1" in result.stderr
