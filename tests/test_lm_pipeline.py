"""Language-model activations end to end on CPU: a tiny random GPT-2-shaped transformer and local
text → harvest → cache → SAE and MLP training → checkpoint → kill → resume → load_model.

Everything runs the real code (transformer-lens TransformerBridge, the shared training loop, the
tracker); only the model and the corpus are tiny.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_config, read_metrics, read_summary
from lm_helpers import write_corpus, write_tiny_model

from sparsegap import checkpoint
from sparsegap.__main__ import run
from sparsegap.config import ConfigError
from sparsegap.data import activations

# d = 32, 2 blocks; small contexts, batches and buffers, so a run takes a second or two.
SMALL = [
    "device.threads=1",
    "data.hook=blocks.1.hook_resid_pre",
    "data.context=32",
    "data.model_batch=16",
    "data.test_tokens=512",
    "data.batch_tokens=128",
    "data.shuffle_tokens=1024",
    "data.normalise=true",
    "encoder.latents=64",
    "l1_coeff=0.003",
    "lr=3e-3",
]
STRIP = ("wall_time_s", "tokens_per_s")


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the runs below set device.threads=1 process-wide
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lm")
    model = write_tiny_model(root / "model")
    corpus = write_corpus(root / "text", documents=400)
    jsonl = write_corpus(root / "jsonl", documents=400, jsonl=True)
    return {"model": str(model), "text": str(corpus), "jsonl": str(jsonl), "root": str(root)}


def lm_config(sources: dict[str, str], extra: list[str], text: str = "text") -> object:
    return compose_config(
        ["data=lm", f"data.model_path={sources['model']}", f"data.text_files={sources[text]}",
         *SMALL, *extra]
    )  # fmt: skip


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in STRIP} for r in records]


@pytest.fixture(scope="module")
def cache(sources: dict[str, str]) -> Path:
    folder = Path(sources["root"]) / "cache"
    cfg = lm_config(sources, ["+cache=build", f"cache.dir={folder}", "data.tokens=3072",
                              "cache.flush_tokens=1000"])  # fmt: skip
    assert run(cfg, Path(sources["root"]) / "harvest") == 3584
    return folder


def test_cache_manifest_and_rows(sources, cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["tokens"] == 3584 == manifest["target_tokens"]
    assert manifest["dim"] == 32 and manifest["dtype"] == "float32"
    assert manifest["source"]["hook"] == "blocks.1.hook_resid_pre"
    assert manifest["source"]["model_path"] == sources["model"]
    # The rows are the model's own activations at the hook, BOS/EOS positions dropped.
    d = lm_config(sources, []).data
    bridge = activations.load_transformer(d, "cpu")
    first = next(activations.contexts(d, bridge.tokenizer))
    assert (first[:, 0] == bridge.tokenizer.bos_token_id).all()
    _, run_cache = bridge.run_with_cache(first, names_filter=d.hook)
    expected = run_cache[d.hook][0, 1:]  # context 0 without its BOS
    expected = expected[first[0, 1:] != bridge.tokenizer.eos_token_id]
    rows, _ = next(activations.cache_rows(cache))
    torch.testing.assert_close(rows[: expected.shape[0]], expected)


def test_harvest_resumes_and_extends_a_cache(sources, cache, tmp_path):
    # A smaller cache, then the same folder asked for more: it continues after the contexts its
    # manifest records and ends byte-identical to the cache built in one go.
    folder = tmp_path / "grown"
    build = ["+cache=build", f"cache.dir={folder}", "cache.flush_tokens=1000"]
    run(lm_config(sources, [*build, "data.tokens=1000"]), tmp_path / "a")
    first = json.loads((folder / "manifest.json").read_text())
    assert first["complete"] and first["tokens"] == 1512 and first["resume_tokens"] < 1512
    run(lm_config(sources, [*build, "data.tokens=3072"]), tmp_path / "b")
    grown = json.loads((folder / "manifest.json").read_text())
    full = json.loads((cache / "manifest.json").read_text())
    assert grown["tokens"] == full["tokens"] and grown["contexts"] == full["contexts"]
    assert (folder / "activations.bin").read_bytes() == (cache / "activations.bin").read_bytes()


def test_training_from_the_cache_equals_training_on_the_model(sources, cache, tmp_path):
    common = ["encoder=sae", "data.tokens=3072", "eval_every=8"]
    run(lm_config(sources, common), tmp_path / "live")
    run(lm_config(sources, [*common, f"data.cache={cache}"]), tmp_path / "cached")
    live, cached = read_metrics(tmp_path / "live"), read_metrics(tmp_path / "cached")
    assert [r["step"] for r in live] == [0, 8, 16, 24]
    assert strip(live) == strip(cached)
    last = live[-1]
    assert last["tokens"] == 3072
    assert last["normalised_mse/test"]["mean"] < 0.8 * live[0]["normalised_mse/test"]["mean"]
    for key in (
        "explained_variance/test",
        "l0/test",
        "l1/test",
        "loss/mse/train",
        "dead_latents/window",
        "dead_latents_fraction/window",
        "flops/train_cumulative",
    ):
        assert key in last, key  # fmt: skip
    summary = read_summary(tmp_path / "cached")
    assert summary["status"] == "completed" and summary["final"] == cached[-1]
    assert summary["config"]["data"]["dim"] == 32
    # normalise=true: the held-out tokens' mean squared norm is d after scaling
    d = lm_config(sources, [f"data.cache={cache}", "data.tokens=3072"]).data
    source = activations.ActivationSource(d, torch.device("cpu"))
    activations.fill_lm_defaults(d)
    x_test, _ = source.open()
    assert x_test.square().sum(dim=0).mean().item() == pytest.approx(32, rel=1e-4)
    assert summary["config"]["data"]["input_scale"] == pytest.approx(source.input_scale)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["encoder=topk", "encoder.k=5000"], "encoder.k=5000 is invalid: must be between 1 and"),
        (["encoder=batch_topk", "encoder.k=4", "encoder.aux_k=5000"], "encoder.aux_k=5000"),
    ],
)
def test_latent_budgets_are_checked_once_d_is_known(sources, cache, tmp_path, extra, message):
    # encoder.latents=null: expansion × d latents, known only once the cache is opened
    cfg = lm_config(sources, [*extra, "encoder.latents=null", f"data.cache={cache}"])
    latents = cfg.data.expansion * activations.read_manifest(cache)["dim"]
    with pytest.raises(ConfigError, match=re.escape(message) + rf".* \({latents}\)"):
        run(cfg, tmp_path)
    assert read_metrics(tmp_path) == []  # not a single step was trained


def test_jsonl_text_and_encoder_l1_warmup(sources, tmp_path):
    cfg = lm_config(
        sources,
        ["encoder=topk", "encoder.k=4", "data.tokens=1024", "eval_every=4", "l1_warmup_steps=4",
         "lr_warmup_steps=4", "device.autocast=bf16"],
        text="jsonl",
    )  # fmt: skip
    run(cfg, tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert last["l0/test"]["mean"] == pytest.approx(4, abs=0.01)  # TopK: exactly k active
    assert last["step"] == 8


def _kill_after_first_checkpoint(args: list[str], run_dir: Path) -> None:
    """Run the CLI in a subprocess and SIGKILL it as soon as its first checkpoint exists."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsegap", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if state.exists():
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr
    assert read_summary(run_dir)["status"] == "running"  # killed: nothing could mark it


RESUMABLE = ["data.tokens=3072", "data.batch_tokens=16", "eval_every=32", "checkpoint_every=512"]


def test_killed_mlp_run_resumes_to_the_same_final_metrics(sources, cache, tmp_path):
    extra = ["encoder=mlp", "encoder.hidden=48", f"data.cache={cache}", *RESUMABLE]
    run(lm_config(sources, extra), tmp_path / "straight")
    paths = [f"data.model_path={sources['model']}", f"data.text_files={sources['text']}"]
    cli = ["logger=none", "replicas=2", "device=cpu", "progress=false"]
    args = ["data=lm", *paths, *SMALL, *extra, *cli]
    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(args, killed)
    stopped_at = checkpoint.read_state(killed)["step"]
    assert 0 < stopped_at < 192
    run(lm_config(sources, extra), killed)  # the same output folder continues
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(killed)
    assert [r["step"] for r in resumed] == list(range(0, 193, 32))
    assert strip(resumed) == strip(straight)
    assert read_summary(killed)["status"] == "completed"
    assert checkpoint.read_state(killed)["step"] == 192


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    "encoder",
    [
        # Live model activations: the resumed run replays the stream to its position.
        ["encoder=sae"],
        # AuxK's count of tokens since each latent fired is restored with the checkpoint.
        ["encoder=topk", "encoder.k=4", "encoder.aux_k=8", "encoder.aux_dead_tokens=64", "cache"],
    ],
    ids=["sae-model-stream", "topk-auxk-cache"],
)
def test_interrupted_run_resumes_identically(encoder, sources, cache, tmp_path, monkeypatch):
    encoder = [f"data.cache={cache}" if o == "cache" else o for o in encoder]
    extra = [*encoder, "data.tokens=1536", "data.batch_tokens=32", "eval_every=4",
             "checkpoint_every=512"]  # fmt: skip
    run(lm_config(sources, extra), tmp_path / "straight")
    if "encoder.aux_k=8" in encoder:  # latents died, so the resumed run needs their counts
        assert read_metrics(tmp_path / "straight")[-1]["loss/auxk/train"]["mean"] > 0
    from sparsegap import step as step_module

    original = step_module.Step.__call__
    calls = {"n": 0}

    def dies_at_step_27(self) -> None:  # after the checkpoint at 16 and evaluations at 20, 24
        calls["n"] += 1
        if calls["n"] == 27:
            raise Interrupted
        original(self)

    monkeypatch.setattr(step_module.Step, "__call__", dies_at_step_27)
    with pytest.raises(Interrupted):
        run(lm_config(sources, extra), tmp_path / "resumed")
    monkeypatch.undo()
    assert checkpoint.read_state(tmp_path / "resumed")["step"] == 16
    assert read_summary(tmp_path / "resumed")["status"] == "failed"
    assert read_metrics(tmp_path / "resumed")[-1]["step"] == 24  # to be dropped and redone
    run(lm_config(sources, extra), tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert strip(resumed) == strip(straight)
    assert resumed[-1]["tokens"] == 1536


def test_resume_true_finds_the_run_and_load_model_rebuilds_it(sources, cache, tmp_path):
    extra = [f"data.cache={cache}", "data.tokens=1024", "eval_every=4"]
    runs = tmp_path / "runs"
    run(lm_config(sources, extra), runs / "first")
    before = read_metrics(runs / "first")
    # resume=true from a new (Hydra-made) folder finds the finished run and changes nothing.
    run(lm_config(sources, [*extra, "resume=true"]), runs / "second")
    assert strip(read_metrics(runs / "first")) == strip(before)
    assert not (runs / "second" / "metrics.jsonl").exists()

    model, cfg = checkpoint.load_model(runs / "first")
    assert cfg.data.dim == 32 and cfg.encoder.name == "sae"
    assert model.decoder.weight.shape == (2, 32, 64)  # replica axis kept
    d = lm_config(sources, extra).data
    activations.fill_lm_defaults(d)
    source = activations.ActivationSource(d, torch.device("cpu"))
    x_test, _ = source.open()
    with torch.no_grad():
        codes = model.encoder.infer(x_test, model.decoder.weight)
        reconstruction = model.decoder(codes)
    from sparsegap.metrics import normalised_mse

    final = before[-1]["normalised_mse/test"]["replicas"]
    assert normalised_mse(x_test, reconstruction).tolist() == pytest.approx(final, rel=1e-5)
    bridge = activations.load_transformer(cfg.data, "cpu")
    assert bridge.cfg.d_model == 32 and cfg.data.hook in bridge.hook_dict


def test_shuffling_buffer_is_a_permutation_that_mixes():
    rows = torch.arange(1000, dtype=torch.float32).unsqueeze(1)
    blocks = iter(rows.split(37))
    out = torch.cat(list(activations.shuffled(blocks, 256, torch.Generator().manual_seed(0))))
    assert sorted(out.squeeze(1).tolist()) == rows.squeeze(1).tolist()
    first = out[:128].squeeze(1)
    assert first.max() - first.min() > 128  # one batch spans more than its own width of text
    again = activations.shuffled(iter(rows.split(37)), 256, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(list(again)), out)


@pytest.mark.gpu  # `make test-gpu` on a machine with a CUDA GPU
def test_gpu_paths_from_cache_and_model(sources, cache, tmp_path):
    # Pinned host→device copies (cache on the host), the model on the GPU, bf16, fast step.
    gpu = ["device=cuda", "device.autocast=bf16", "device.tf32=true", "data.tokens=3072",
           "eval_every=8"]  # fmt: skip
    run(lm_config(sources, [*gpu, f"data.cache={cache}", "encoder.fast_step=true"]), tmp_path / "a")
    run(lm_config(sources, [*gpu, "encoder=mlp", "encoder.hidden=48"]), tmp_path / "b")
    for name in ("a", "b"):
        records = read_metrics(tmp_path / name)
        assert read_summary(tmp_path / name)["status"] == "completed"
        first, last = records[0]["normalised_mse/test"], records[-1]["normalised_mse/test"]
        assert last["mean"] < first["mean"]


def test_prefetching_keeps_order_and_a_consumer_that_stops_early_waits_for_the_producer():
    import threading

    def slow(n: int):
        for i in range(n):
            time.sleep(0.05)  # a model forward
            yield i

    assert list(activations._prefetched(slow(6), True)) == list(range(6))
    stream = activations._prefetched(slow(1000), True)
    assert next(stream) == 0
    stream.close()  # e.g. the cache is full: the producer is inside its next forward
    # Joined, not left running torch code into interpreter shutdown (which aborts the process)
    alive = [t for t in threading.enumerate() if t.name == "activation-prefetch"]
    assert alive == []


@pytest.mark.parametrize("harvest", [True, False], ids=["cache-build", "training"])
def test_text_running_out_is_a_config_error_and_keeps_what_was_done(sources, tmp_path, harvest):
    extra = ["data.tokens=10_000_000", "eval_every=16"]
    if harvest:
        extra += ["+cache=build", f"cache.dir={tmp_path / 'cache'}", "cache.flush_tokens=1000"]
    with pytest.raises(ConfigError, match=r"data\.tokens=10000000 is invalid: the text ran out"):
        run(lm_config(sources, extra), tmp_path / "run")
    if harvest:  # a resumable partial cache: more text and the same command go on from here
        manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
        assert manifest["tokens"] > 0 and not manifest["complete"]
    else:  # the steps trained so far are logged and the run is marked failed
        assert read_summary(tmp_path / "run")["status"] == "failed"
        assert [r["step"] for r in read_metrics(tmp_path / "run")][:2] == [0, 16]
