"""The LLM path with the real ``openai`` client against a local OpenAI-compatible stub server.

The stub plays a competent LLM for planted features: as explainer it names the first marked
token; as scorer it answers 1 exactly for the excerpts whose marked token is the named one. Some
prompts get a 429 first, a reply slower than the client's timeout, a malformed body, or a reply
without an explanation line.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from autointerp_helpers import VOCAB, compose_cfg, documents, planted_source
from openai_stub import StubServer

from sparsegap.autointerp.llm import LLMClient, make_client
from sparsegap.autointerp.pipeline import held_out_tokens, interpret
from sparsegap.config import ConfigError

WORD = re.compile(r"<<(.*?)>>")


def competent(body: dict) -> str:
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "[EXPLANATION]" in system:
        token = WORD.search(user).group(1)
        return f"The marked tokens are all the same.\n[EXPLANATION]: the token {json.dumps(token)}"
    named = json.loads(re.search(r"Explanation: the token (\".*\")", user).group(1))
    excerpts = [line for line in user.splitlines() if re.match(r"\d+\. ", line)]
    return str([int(WORD.search(line).group(1) == named) for line in excerpts])


def subject(body: dict) -> tuple[str, str]:
    """("explain", first marked token) or ("score", the token the explanation names)."""
    user = body["messages"][1]["content"]
    if "[EXPLANATION]" in body["messages"][0]["content"]:
        return "explain", WORD.search(user).group(1)
    return "score", json.loads(re.search(r"Explanation: the token (\".*\")", user).group(1))


def llm_cfg(server: StubServer, tmp_path, *overrides: str):
    return compose_cfg(
        [
            "features=8",
            f"llm.base_url={server.url}",
            "llm.model=stub-model",
            "llm.api_key=test",
            f"llm.cache_dir={tmp_path / 'cache'}",
            "llm.timeout_s=0.5",
            "llm.backoff_s=0.01",
            "llm.concurrency=4",
            "llm.input_usd_per_mtok=2.5",
            "llm.output_usd_per_mtok=10",
            *overrides,
        ]
    )


def run_llm(cfg):
    source = planted_source()
    tokens = held_out_tokens(cfg, source, documents())
    client = make_client(cfg.llm)
    results, summary = interpret(cfg, source, tokens, client)
    return results, summary, client


def test_normal_run_scores_planted_features_and_a_rerun_is_served_from_the_cache(tmp_path):
    with StubServer(lambda body, n: competent(body), delay_s=0.05) as server:
        cfg = llm_cfg(server, tmp_path)
        results, summary, client = run_llm(cfg)
        assert 2 <= server.max_in_flight <= 4  # llm.concurrency=4, and used
        assert summary["features"] == summary["explained"] == summary["scored"] == 8
        assert summary["f1_mean"] == 1.0 and summary["balanced_accuracy_mean"] == 1.0
        for r in results:
            assert r.explanation.text == f"the token {json.dumps(VOCAB[r.examples.feature])}"
        usage = client.usage.summary()
        assert usage["http_requests"] == len(server.requests) == 16
        assert usage["prompt_tokens"] == 1600 and usage["completion_tokens"] == 160
        assert usage["cost_usd"] == pytest.approx((1600 * 2.5 + 160 * 10) / 1e6)
        assert all(r["model"] == "stub-model" and r["temperature"] == 0 for r in server.requests)

        again, summary2, client2 = run_llm(cfg)
        assert len(server.requests) == 16  # no new HTTP request
        usage2 = client2.usage.summary()
        assert usage2["http_requests"] == 0 and usage2["cache_hits"] == 16
        assert usage2["cost_usd"] == 0 and usage2["cost_usd_saved_by_cache"] == usage["cost_usd"]
        assert [r.explanation.text for r in again] == [r.explanation.text for r in results]
        assert summary2["f1_mean"] == summary["f1_mean"]

        # a different model (or temperature) is a different request: not served from the cache
        cfg.llm.model = "other-model"
        run_llm(cfg)
        assert len(server.requests) == 32


def test_rate_limits_timeouts_malformed_and_unparseable_replies_are_counted(tmp_path):
    # Each failure mode is tied to one planted feature, i.e. to one word.
    seen: dict[str, int] = {}
    lock = threading.Lock()
    words = {}

    def respond(body: dict, n: int):
        key = subject(body)
        with lock:
            seen[key] = seen.get(key, 0) + 1
            first = seen[key] == 1
        if not words:
            return competent(body)
        if key == ("explain", words["rate_limited"]) and first:
            return ("status", 429)
        if key == ("explain", words["slow"]) and first:
            return ("sleep", 1.5)
        if key == ("explain", words["malformed"]):
            return ("raw", '{"id": "x", "choices": [}')
        if key == ("explain", words["unexplained"]):
            return "I cannot tell what this feature does."
        if key == ("score", words["unscorable"]):
            return "Most of them, I think."
        if key == ("explain", words["broken"]):
            return ("status", 500)
        return competent(body)

    with StubServer(respond) as server:
        cfg = llm_cfg(server, tmp_path, "llm.max_retries=2")
        source = planted_source()
        tokens = held_out_tokens(cfg, source, documents())
        # a dry run without failures tells which words the 8 features are
        client = LLMClient(cfg.llm)
        results, _ = interpret(cfg, source, tokens, client)
        names = [VOCAB[r.examples.feature] for r in results]
        modes = ["rate_limited", "slow", "malformed", "unexplained", "broken", "unscorable"]
        words.update(zip(modes, names, strict=False))
        seen.clear()
        before = len(server.requests)

        started = time.time()
        results, summary, client = run_llm(cfg)
        assert time.time() - started < 20
        assert len(results) == summary["features"] == 8  # nothing lost
        by_word = {VOCAB[r.examples.feature]: r for r in results}
        assert by_word[words["rate_limited"]].explanation.error is None
        assert by_word[words["slow"]].explanation.error is None
        assert by_word[words["malformed"]].explanation.error == "malformed"
        assert by_word[words["unexplained"]].explanation.error == "parse_failure"
        assert by_word[words["unexplained"]].explanation.reply.startswith("I cannot tell")
        assert by_word[words["broken"]].explanation.error == "server_error"
        assert by_word[names[5]].score.error == "parse_failure"
        assert summary["explanation_failures"] == {
            "malformed": 1, "parse_failure": 1, "server_error": 1,
        }  # fmt: skip
        assert summary["scoring_failures"] == {"parse_failure": 1}
        assert summary["explained"] == 5 and summary["scored"] == 4
        for word in (words["malformed"], words["unexplained"], words["broken"], names[5]):
            assert by_word[word].score.metrics() is None  # never scored
        scored = [r for r in results if r.score.metrics() is not None]
        assert all(r.score.metrics()["f1"] == 1.0 for r in scored)
        usage = client.usage.summary()
        # 429 once, timeout once, 500 three times (1 + 2 retries): 4 retries
        assert usage["retries"] == 4
        assert usage["failures"] == {"malformed": 1, "server_error": 1}
        assert usage["http_requests"] == len(server.requests) - before


def test_missing_api_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = compose_cfg([])
    with pytest.raises(ConfigError, match=r"llm.api_key=None is invalid.*OPENAI_API_KEY"):
        make_client(cfg.llm)
