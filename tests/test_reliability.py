"""Reliability under misuse (docs/RELIABILITY.md): one run per folder, a folder's files describe
one run, a full disk or a missing W&B login still ends in a ``failed`` summary, a swept value
that does not compose fails only its own job, a killed run shows as ``interrupted``, an API key
never reaches a file or the screen, only parseable LLM replies are cached,
the LLM client's retry budget holds, and an LM hook or text problem is caught without leftovers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from autointerp_helpers import VOCAB, compose_cfg, documents, planted_source
from helpers import compose_config, read_metrics, read_summary, run_cli
from lm_helpers import write_corpus, write_tiny_model
from openai_stub import StubServer

from sparsegap import tracking
from sparsegap.autointerp.llm import LLMClient, make_client
from sparsegap.autointerp.pipeline import execute, held_out_tokens, interpret
from sparsegap.autointerp.secrets import move_key_to_environment
from sparsegap.config import ConfigError
from sparsegap.report.collect import load_job, load_jobs
from sparsegap.tracking import Tracker

KEY = "sk-test-9f8e7d6c5b4a39281706"


def _record(step: int, size: int = 64) -> dict:
    return {"step": step, "loss/train": [float(i) for i in range(size)]}


def _all_whole(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # raises on a torn line


def _wait_for_lines(path: Path, n: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not get {n} lines (exit code {process.poll()})")


def _start_run(run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sparsegap", "steps=1000000", "eval_every=100", "replicas=1",
         "logger=none", f"hydra.run.dir={run_dir}", *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# ------------------------------------------------------------------ full disk (item 5)
@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 1 MiB tmpfs (root only): a real full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_marks_the_run_failed_with_whole_lines(small_disk):
    run_dir = small_disk / "run"
    with pytest.raises(OSError) as raised, Tracker(run_dir, {"lr": 0.1}) as tracker:
        for step in range(100_000):
            tracker.log(_record(step, size=400))
    assert raised.value.errno == errno.ENOSPC
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert summary["config"] == {"lr": 0.1} and summary["final"]["step"] > 0
    lines = _all_whole(run_dir / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(len(lines)))
    assert not (run_dir / ".summary.json.reserve").exists()


def test_a_failed_write_leaves_no_torn_line(tmp_path, monkeypatch):
    """Without a small file system: a write that stops half-way (as on a full disk)."""
    with pytest.raises(OSError), Tracker(tmp_path, {}) as tracker:
        tracker.log(_record(0))
        real_write = os.write

        def half_then_full(fd: int, data) -> int:
            if len(data) > 8:
                real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tracking.os, "write", half_then_full)
        tracker.log(_record(1))
    monkeypatch.undo()
    assert [r["step"] for r in _all_whole(tmp_path / "metrics.jsonl")] == [0]
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "No space left" in summary["error"]


# ------------------------------------------------------------------ one run per folder (2, 8)
def test_a_new_run_in_a_used_folder_replaces_the_earlier_runs_files(tmp_path):
    earlier = {"model.pt": "old", "metrics.jsonl": '{"step": 9}\n', ".hydra/config.yaml": "old"}
    for name, text in earlier.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError), Tracker(tmp_path, {}, files={".hydra/config.yaml": "new"}):
        raise RuntimeError("fails at runtime")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoint").exists()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "new"
    assert (tmp_path / "notes.txt").exists()  # not a run output: left alone
    assert read_summary(tmp_path)["status"] == "failed"

    (tmp_path / "checkpoint").mkdir()  # a resumed run keeps what it continues
    with Tracker(tmp_path, {}, resumed=True) as tracker:
        tracker.log(_record(0))
    assert (tmp_path / "checkpoint").exists()


@pytest.mark.slow
def test_a_second_run_into_a_held_folder_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = _start_run(run_dir, tmp_path)
    try:
        _wait_for_lines(run_dir / "metrics.jsonl", 2, first)
        hydra_before = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
        second = run_cli(["steps=40", "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "in use" in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_before
        assert read_summary(run_dir)["status"] == "running"
        assert load_job(run_dir, run_dir).status == "running"  # live: its process holds it
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert read_summary(run_dir)["status"] == "failed"
    _all_whole(run_dir / "metrics.jsonl")


@pytest.mark.slow
def test_an_invalid_rerun_leaves_a_completed_folder_untouched(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(["steps=20", "eval_every=10", "logger=none", "hydra.run.dir=run"],
                   cwd=tmp_path).returncode == 0  # fmt: skip
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_cli(["steps=20", "lr=-1", "logger=none", "hydra.run.dir=run"], cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("error: lr=-1.0 is invalid")
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    records = lambda files: {p: b for p, b in files.items() if p.suffix not in (".log", ".lock")}  # noqa: E731
    assert records(after) == records(before)  # Hydra's job log and the lock's pid aside
    assert read_summary(run_dir)["status"] == "completed"


# ------------------------------------------------------------------ a sweep goes on (item 4)
@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["basic", "joblib"]
)
def test_a_swept_value_that_does_not_compose_fails_alone(tmp_path, launcher):
    result = run_cli(["-m", "data.N=16,abc,32", "steps=10", "eval_every=10", "replicas=1",
                      "logger=none", "hydra.sweep.dir=sweep", *launcher], cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: data.N='abc' is invalid: must be an integer"], result.stderr
    assert "Traceback" not in result.stderr
    jobs = load_jobs(tmp_path / "sweep")  # as the report reads them
    assert [(j.name, j.status) for j in jobs] == [
        ("0", "completed"), ("1", "failed"), ("2", "completed"),
    ]  # fmt: skip
    assert [j.config["data"]["N"] for j in (jobs[0], jobs[2])] == [16, 32]
    assert jobs[1].error == "ConfigError: data.N='abc' is invalid: must be an integer"
    assert "data.N=abc" in jobs[1].overrides and jobs[1].evaluations == []
    assert [r["step"] for r in read_metrics(tmp_path / "sweep" / "2")] == [0, 10]


# ------------------------------------------------------------------ kill -9 (item 10)
@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_interrupted_and_skip_completed_reruns_it(tmp_path):
    run_dir = tmp_path / "run"
    process = _start_run(run_dir, tmp_path)
    _wait_for_lines(run_dir / "metrics.jsonl", 2, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert read_summary(run_dir)["status"] == "running"  # it had no chance to say otherwise
    job = load_job(run_dir, run_dir)
    assert job.status == "interrupted" and not job.finished
    again = run_cli(["steps=20", "eval_every=10", "replicas=1", "logger=none",
                     "skip_completed=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "skipped" not in again.stdout
    assert load_job(run_dir, run_dir).status == "completed"
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 10, 20]


# ------------------------------------------------------------------ W&B online (item 6)
@pytest.mark.slow
def test_wandb_online_without_credentials_fails_in_one_line_before_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env |= {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap", "steps=20", "logger.mode=online", "hydra.run.dir=run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert (
        lines[0].startswith("error: logger.mode=online is invalid here") and "offline" in lines[0]
    )
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and "logger.mode=online" in summary["error"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # no training step ran


# ------------------------------------------------------------------ API key (item 1)
def _files_with(root: Path, secret: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "multirun"])
def test_an_api_key_on_the_command_line_reaches_no_file(tmp_path, sweep):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["WANDB_DIR"] = str(tmp_path / "wandb")  # W&B's files too, under the folder searched
    (tmp_path / "wandb").mkdir()
    args = ["run=missing", f"llm.api_key={KEY}", "llm.base_url=http://127.0.0.1:9/v1",
            "device=cpu", "logger=wandb"]  # fmt: skip
    args = (
        ["-m", *args, "hydra.sweep.dir=out", "features=1,2"]
        if sweep
        else [*args, "hydra.run.dir=out"]
    )
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.autointerp", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert "invalid: not a folder" in result.stderr  # it ran as far as loading the run
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "autointerp.json" for p in written)
    assert any(p.parent.name == ".hydra" for p in written)
    assert any(p.suffix == ".wandb" for p in written) and any(
        p.name == "debug.log" for p in written
    )
    assert _files_with(tmp_path, KEY) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags", [["--cfg", "job"], ["--cfg", "all"], ["--info", "config"]], ids=" ".join
)
def test_printing_the_config_never_shows_a_key_given_on_the_command_line(tmp_path, flags):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "sparsegap.autointerp", "run=x", f"llm.api_key={KEY}", *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "api_key: null" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_a_key_on_the_command_line_moves_to_the_environment_variable_it_names(monkeypatch):
    monkeypatch.setenv("MY_KEY", "before")
    args = ["run=x", "llm.api_key_env=MY_KEY", f"llm.api_key='{KEY}'", "--cfg", "job"]
    assert move_key_to_environment(args) == ["run=x", "llm.api_key_env=MY_KEY", "--cfg", "job"]
    assert os.environ["MY_KEY"] == KEY
    assert move_key_to_environment(["llm.api_key=null"]) == ["llm.api_key=null"]


def test_an_api_key_in_the_config_reaches_no_record_or_cache(tmp_path):
    cfg = compose_cfg(["features=4", "explainer=llm", "scorer=llm", "llm.model=stub",
                       f"llm.api_key={KEY}", f"llm.cache_dir={tmp_path / 'cache'}",
                       "logger=wandb", "device=cpu"])  # fmt: skip
    os.environ["WANDB_DIR"], saved = str(tmp_path / "wandb"), os.environ.get("WANDB_DIR")
    (tmp_path / "wandb").mkdir()
    try:
        with StubServer(lambda body, n: _competent(body)) as server:
            cfg.llm.base_url = server.url
            summary = execute(cfg, tmp_path / "out", lambda: (planted_source(), documents(), 0))
        assert summary["status"] == "completed" and summary["scored"] == 4
        assert any((tmp_path / "cache").rglob("*.json"))
        assert _files_with(tmp_path, KEY) == []
    finally:
        os.environ["WANDB_DIR"] = saved or ""


# ------------------------------------------------------------------ LLM cache, retries (7, 11)
def _competent(body: dict) -> str:
    import re

    word = re.compile(r"<<(.*?)>>")
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "[EXPLANATION]" in system:
        return f"[EXPLANATION]: the token {json.dumps(word.search(user).group(1))}"
    named = json.loads(re.search(r"Explanation: the token (\".*\")", user).group(1))
    excerpts = [line for line in user.splitlines() if re.match(r"\d+\. ", line)]
    return str([int(word.search(line).group(1) == named) for line in excerpts])


def _llm_cfg(server: StubServer, tmp_path: Path, *overrides: str):
    return compose_cfg(["features=4", f"llm.base_url={server.url}", "llm.model=stub",
                        "llm.api_key=test", f"llm.cache_dir={tmp_path / 'cache'}",
                        "llm.backoff_s=0.01", *overrides])  # fmt: skip


def test_an_unparseable_reply_is_not_cached_and_asked_again(tmp_path):
    healthy = False

    def respond(body: dict, n: int) -> str:
        if not healthy and "[EXPLANATION]" in body["messages"][0]["content"]:
            return "The feature fires on one word."  # no [EXPLANATION]: line
        return _competent(body)

    with StubServer(respond) as server:
        cfg = _llm_cfg(server, tmp_path)
        source = planted_source()
        tokens = held_out_tokens(cfg, source, documents())
        results, summary = interpret(cfg, source, tokens, make_client(cfg.llm))
        assert summary["explanation_failures"] == {"parse_failure": 4}
        assert len(server.requests) == 4 and not list((tmp_path / "cache").rglob("*.json"))
        healthy = True
        results, summary = interpret(cfg, source, tokens, make_client(cfg.llm))
        assert len(server.requests) == 4 + 8  # asked again, then scored
        assert summary["explained"] == summary["scored"] == 4
        assert [r.explanation.text for r in results] == [
            f"the token {json.dumps(VOCAB[r.examples.feature])}" for r in results
        ]


@pytest.mark.parametrize(
    ("answer", "error"), [(("sleep", 1.0), "timeout"), (("drop", None), "connection")]
)
def test_timeouts_and_dropped_connections_use_exactly_the_retry_budget(tmp_path, answer, error):
    with StubServer(lambda body, n: answer) as server:
        cfg = _llm_cfg(server, tmp_path, "llm.max_retries=2", "llm.timeout_s=0.2")
        client = LLMClient(cfg.llm)
        reply = client.complete([{"role": "user", "content": "hello"}])
        assert reply.text is None and reply.error == error
        assert reply.attempts == 3 and len(server.requests) == 3  # 1 + llm.max_retries
        assert client.usage.summary()["retries"] == 2
        assert client.usage.summary()["failures"] == {error: 1}


# ------------------------------------------------------------------ checked early (item 9)
@pytest.fixture(scope="module")
def lm_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    return {"model": write_tiny_model(root / "model", layers=2),
            "text": write_corpus(root / "text", documents=20)}  # fmt: skip


def test_a_hook_beyond_the_models_blocks_is_refused_before_it_loads(lm_sources, monkeypatch):
    from sparsegap.data import activations
    from sparsegap.validate import validate

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(activations, "load_transformer", no_loading)
    cfg = compose_config(["data=lm", f"data.model_path={lm_sources['model']}",
                          f"data.text_files={lm_sources['text']}",
                          "data.hook=blocks.5.hook_resid_post"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.hook='blocks\.5\.hook_resid_post' is invalid: "
                       r"the model has 2 blocks"):  # fmt: skip
        validate(cfg)


def test_text_running_out_leaves_no_sized_file_without_a_manifest(lm_sources, tmp_path):
    from sparsegap.__main__ import run

    folder = tmp_path / "cache"
    cfg = compose_config(["data=lm", f"data.model_path={lm_sources['model']}",
                          f"data.text_files={lm_sources['text']}",
                          "data.hook=blocks.1.hook_resid_pre", "data.context=32",
                          "data.model_batch=16", "data.test_tokens=256",
                          "data.tokens=1000000", "+cache=build", f"cache.dir={folder}",
                          "cache.flush_tokens=10000000"])  # fmt: skip
    with pytest.raises(ConfigError, match="the text ran out"):
        run(cfg, tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert 0 < manifest["tokens"] < 256 + 1_000_000 and not manifest["complete"]
    size = (folder / "activations.bin").stat().st_size
    assert size == manifest["tokens"] * manifest["dim"] * 4  # the rows it holds, no more
