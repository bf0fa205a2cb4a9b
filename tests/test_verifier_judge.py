"""verifier.judge: verdict parsing, one batched call per round, one retry then unknown, the cache,
templates, and the OpenAI-compatible client against a local stand-in server (the real vLLM server is
exercised in test_verifier_vllm.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from veripo.data.rollouts import Rollout
from verifier import ConsistencyJudge, OpenAIJudge, ScriptedJudge, VerdictCache, VerifierConfig, parse_verdict, verify
from verifier.judge import CallableJudge, JudgeError, JudgeItem, ask_with_retry, cache_key
from verifier.templates import PromptTemplate, TemplateError

Q = "Which way does the red circle move?\nOptions:\nA. left\nB. right"


def items(n: int, prefix: str = "r") -> list[JudgeItem]:
    return [JudgeItem(Q, f"reasoning {prefix}{i}: it ends on the right", "B", f"<think>{prefix}{i}</think>")
            for i in range(n)]


def user_text(messages) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def is_retry(messages) -> bool:
    return any(m["role"] == "user" and "could not be read" in m["content"] for m in messages)


@pytest.mark.parametrize("reply,expected", [
    ('{"verdict": "consistent"}', "consistent"),
    ('Sure. {"verdict": "Inconsistent", "why": "x"} done', "inconsistent"),
    ('{"reason": "fine"}\nVerdict: consistent', "consistent"),
    ("Verdict: inconsistent", "inconsistent"),
    ("The steps are fine.\nverdict = consistent", "consistent"),
    ("**Verdict:** Inconsistent", "inconsistent"),
    ("Verdict: not consistent", "inconsistent"),
    ("Verdict: the reasoning is inconsistent with the answer.", "inconsistent"),
    ("The verdict is that it is consistent.", "consistent"),
    ('{"verdict": "not consistent"}', "inconsistent"),
    ("verdicts are hard; consistent", None),
    ("Verdict: consistent\nVerdict: consistent", "consistent"),
    ("consistent.", "consistent"),
    (" inconsistent", "inconsistent"),
    ("Verdict: consistent or Verdict: inconsistent", None),
    ('{"verdict": "maybe"}', None),
    ("The reasoning is consistent with the question but the answer is inconsistent", None),
    ("I am not sure.", None),
    ("", None),
    ("   \n", None),
    (None, None),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def test_all_prompts_go_in_one_batched_call_when_replies_are_valid():
    backend = ScriptedJudge(lambda m: "Verdict: consistent" if "r0" in user_text(m) else '{"verdict": "inconsistent"}',
                            supports_prefill=False)
    judge = ConsistencyJudge(backend)
    out = judge.judge(items(5))
    assert [v.verdict for v in out] == ["consistent"] + ["inconsistent"] * 4
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 5
    assert all(v.attempts == 1 and not v.cached for v in out)
    first = backend.calls[0][0]
    assert [m["role"] for m in first] == ["system", "user"]  # prefill dropped for this backend
    assert Q in first[1]["content"] and "reasoning r0" in first[1]["content"]


def test_malformed_replies_are_retried_once_in_one_batch_then_unknown():
    def script(m):
        text = user_text(m)
        if "r1" in text:  # malformed first, valid on the retry
            return "Verdict: consistent" if is_retry(m) else "I think it is fine"
        if "r2" in text:  # empty both times
            return ""
        if "r3" in text:  # malformed both times
            return "hmm" if not is_retry(m) else "still not sure"
        return "Verdict: inconsistent"

    backend = ScriptedJudge(script, supports_prefill=False)
    out = ConsistencyJudge(backend).judge(items(4))
    assert [(v.verdict, v.attempts) for v in out] == [
        ("inconsistent", 1), ("consistent", 2), ("unknown", 2), ("unknown", 2)]
    assert [len(c) for c in backend.calls] == [4, 3]  # one batched retry of the three unreadable ones
    retry = backend.calls[1][0]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "I think it is fine"
    assert out[3].reply == "still not sure"


def test_prefill_is_continued_and_parsed_with_the_reply():
    backend = ScriptedJudge(lambda m: " inconsistent" if not is_retry(m) else " consistent", supports_prefill=True)
    out = ConsistencyJudge(backend).judge(items(1))
    assert out[0].verdict == "inconsistent" and out[0].reply == "Verdict: inconsistent"
    assert backend.calls[0][0][-1] == {"role": "assistant", "content": "Verdict:"}


def test_retry_keeps_the_prefill_last():
    backend = ScriptedJudge(lambda m: " consistent" if is_retry(m) else " ???", supports_prefill=True)
    out = ConsistencyJudge(backend).judge(items(1))
    assert out[0].verdict == "consistent" and out[0].attempts == 2
    retry = backend.calls[1][0]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user", "assistant"]
    assert retry[2]["content"] == "Verdict: ???" and retry[-1]["content"] == "Verdict:"


def test_no_retry_when_retries_is_zero():
    backend = ScriptedJudge("nonsense")
    out = ConsistencyJudge(backend, retries=0).judge(items(2))
    assert [v.verdict for v in out] == ["unknown", "unknown"] and len(backend.calls) == 1


def test_wrong_number_of_replies_is_an_error():
    backend = CallableJudge(lambda reqs: ["Verdict: consistent"], judge_id="short")
    with pytest.raises(JudgeError, match="returned 1 replies for 2 requests"):
        ConsistencyJudge(backend).judge(items(2))


def test_cache_hit_avoids_rejudging_and_unknown_is_not_cached(tmp_path):
    path = tmp_path / "cache.jsonl"

    def script(m):
        return "garbage" if "r2" in user_text(m) else "Verdict: inconsistent"

    first = ScriptedJudge(script)
    out1 = ConsistencyJudge(first, cache=path).judge(items(3))
    assert [v.verdict for v in out1] == ["inconsistent", "inconsistent", "unknown"]
    assert len(VerdictCache(path)) == 2
    second = ScriptedJudge(lambda m: "Verdict: consistent")
    out2 = ConsistencyJudge(second, cache=str(path)).judge(items(3))
    assert [(v.verdict, v.cached) for v in out2] == [("inconsistent", True), ("inconsistent", True),
                                                     ("consistent", False)]
    assert len(second.calls) == 1 and len(second.calls[0]) == 1  # only the unknown one re-judged
    third = ScriptedJudge("Verdict: consistent")
    assert all(v.cached for v in ConsistencyJudge(third, cache=path).judge(items(3)))
    assert third.calls == []


def test_cache_key_covers_question_response_template_and_judge(tmp_path):
    base = cache_key("q", "resp", "tmpl", "judge")
    assert len({base, cache_key("q2", "resp", "tmpl", "judge"), cache_key("q", "resp2", "tmpl", "judge"),
                cache_key("q", "resp", "tmpl2", "judge"), cache_key("q", "resp", "tmpl", "judge2")}) == 5
    path = tmp_path / "cache.jsonl"
    ConsistencyJudge(ScriptedJudge("Verdict: consistent", judge_id="a"), cache=path).judge(items(1))
    other_judge = ScriptedJudge("Verdict: consistent", judge_id="b")
    ConsistencyJudge(other_judge, cache=path).judge(items(1))
    assert len(other_judge.calls) == 1
    tmpl = tmp_path / "mine.txt"
    tmpl.write_text("Q: {{question}}\nR: {{reasoning}}\nA: {{answer}}\nVerdict?")
    other_template = ScriptedJudge("Verdict: consistent", judge_id="a")
    ConsistencyJudge(other_template, template=tmpl, cache=path).judge(items(1))
    assert len(other_template.calls) == 1


def test_cache_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    ConsistencyJudge(ScriptedJudge("Verdict: consistent"), cache=path).judge(items(2))
    with open(path, "a") as f:
        f.write('{"key": "abc", "val')
    cache = VerdictCache(path)
    assert len(cache) == 2 and cache.ignored == 1


def test_templates_fill_once_and_validate(tmp_path):
    t = PromptTemplate.from_text("[system]\nS {{question}}\n[user]\nU {{answer}}\n[assistant]\nPre:")
    msgs = t.render({"question": "q {{answer}}", "answer": "a"})
    assert msgs == [{"role": "system", "content": "S q {{answer}}"}, {"role": "user", "content": "U a"},
                    {"role": "assistant", "content": "Pre:"}]
    assert PromptTemplate.from_text("just a user prompt {{question}}").render({"question": "x"}) == [
        {"role": "user", "content": "just a user prompt x"}]
    with pytest.raises(TemplateError, match="no \\[user\\] text"):
        PromptTemplate.from_text("[system]\nonly system")
    with pytest.raises(TemplateError, match="no prompt template 'nope'; bundled: .*consistency"):
        PromptTemplate.load("nope")
    bad = tmp_path / "bad.txt"
    bad.write_text("{{question}} {{reasoning}} {{answr}}")
    with pytest.raises(TemplateError, match="unknown placeholder.*answr"):
        ConsistencyJudge(ScriptedJudge("x"), template=bad)


def rollout(i: int, reasoning: str, answer: str, record: dict) -> Rollout:
    return Rollout(rollout_id=f"r{i}", problem_id="p1", sample_index=i, record=record,
                   response=f"<think>{reasoning}</think><answer>{answer}</answer>")


def test_verify_end_to_end_with_a_scripted_judge():
    rec = {"problem": "Which way does the red circle move?", "problem_type": "multiple choice",
           "options": ["A. left", "B. right"], "solution": "B", "data_type": "text"}
    right = "The circle starts on the left and ends on the right side of the frame, so it moves right."
    lefty = "The circle starts on the right and ends on the left side of the frame, so it moves left."
    rs = [rollout(0, right, "B", rec), rollout(1, lefty, "B", rec), rollout(2, lefty, "A", rec)]

    def script(m):  # a judge that checks "left"/"right" in the reasoning against the answer letter
        text = user_text(m)
        reasoning = text.split("Student's reasoning:")[1].split("Student's final answer:")[0]
        answer = text.split("Student's final answer:")[1].split("\n\n")[0].strip()
        says = "A" if "moves left" in reasoning else "B"
        return " consistent" if says == answer else " inconsistent"

    backend = ScriptedJudge(script)
    result = verify(rs, judge=ConsistencyJudge(backend))
    assert {k: v.verdict for k, v in result.verdicts.items()} == {
        "r0": "consistent", "r1": "inconsistent", "r2": "consistent"}
    assert [(p.type, p.chosen_id, p.rejected_id) for p in result.pairs] == [
        ("consistency", "r0", "r1"), ("penalty", "r0", "r2")]
    assert result.stats.inconsistency_rate == pytest.approx(1 / 3)
    assert result.pairs[0].judge == "scripted-fake"
    assert result.meta()["config_hash"] == VerifierConfig().config_hash()
    # judge_scope=accurate: the inaccurate rollout is not sent and is "skipped"
    backend = ScriptedJudge(script)
    result = verify(rs, judge=ConsistencyJudge(backend), config=VerifierConfig(judge_scope="accurate"))
    assert len(backend.calls[0]) == 2 and result.verdicts["r2"].verdict == "skipped"


# ---- the OpenAI-compatible client against a local stand-in ---------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if body["model"] == "missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "model not found"}')
            return
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        content = "Verdict: inconsistent" if "r1" in user else '{"verdict": "consistent"}'
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def standin_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_openai_judge_sends_the_key_header_but_never_stores_it(standin_server, tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    url = f"http://127.0.0.1:{standin_server.server_port}/v1"
    backend = OpenAIJudge(url, "judge-model", api_key_env="MY_JUDGE_KEY", max_tokens=8, concurrency=2)
    cache = tmp_path / "cache.jsonl"
    out = ConsistencyJudge(backend, cache=cache).judge(items(3))
    assert [v.verdict for v in out] == ["consistent", "inconsistent", "consistent"]
    assert len(standin_server.seen) == 3
    assert {s["path"] for s in standin_server.seen} == {"/v1/chat/completions"}
    assert {s["auth"] for s in standin_server.seen} == {f"Bearer {secret}"}
    body = standin_server.seen[0]["body"]
    assert body["model"] == "judge-model" and body["max_tokens"] == 8 and body["temperature"] == 0.0
    assert body["messages"][-1]["role"] == "user" and "continue_final_message" not in body
    assert secret not in cache.read_text() and secret not in repr(backend) and secret not in backend.judge_id
    assert secret not in json.dumps(backend.__dict__, default=str)


def test_openai_judge_without_key_sends_no_header_and_can_continue_prefill(standin_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://127.0.0.1:{standin_server.server_port}/v1/"
    backend = OpenAIJudge(url, "judge-model", continue_final_message=True)
    assert backend.supports_prefill
    ConsistencyJudge(backend).judge(items(1))
    seen = standin_server.seen[0]
    assert seen["auth"] is None
    assert seen["body"]["continue_final_message"] is True and seen["body"]["add_generation_prompt"] is False
    assert seen["body"]["messages"][-1] == {"role": "assistant", "content": "Verdict:"}


def test_openai_judge_errors_are_clear(standin_server):
    url = f"http://127.0.0.1:{standin_server.server_port}/v1"
    with pytest.raises(JudgeError, match="HTTP 404: .*model not found"):
        OpenAIJudge(url, "missing").judge_batch([[{"role": "user", "content": "hi"}]])
    standin_server.shutdown()
    standin_server.server_close()
    dead = OpenAIJudge(url, "m", transport_retries=0, timeout=5)
    with pytest.raises(JudgeError, match="unreachable.*--base-url"):
        dead.judge_batch([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        OpenAIJudge(url, "m", api_key_env="sk-abc-123")
    assert "sk-abc-123" not in str(err.value)  # a pasted key is not echoed
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudge("localhost:8000", "m")
    assert "user:pw" not in OpenAIJudge("http://user:pw@127.0.0.1:9/v1", "m").judge_id


def test_ask_with_retry_without_retry_text_parses_once():
    backend = ScriptedJudge("bad")
    answers = ask_with_retry(backend, [[{"role": "user", "content": "x"}]], parse_verdict, retry_text=None)
    assert answers[0].value is None and answers[0].attempts == 1 and len(backend.calls) == 1


def test_judges_registry():
    from verifier.judge import JUDGES

    assert JUDGES.ordered_names() == ["vllm", "openai", "none"]
    assert JUDGES.get("none")() is None
    b = JUDGES.get("openai")(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="K", max_tokens=4)
    assert isinstance(b, OpenAIJudge) and b.max_tokens == 4 and b.api_key_env == "K"
    with pytest.raises(ValueError, match="needs --base-url and --judge-model"):
        JUDGES.get("openai")(model="m")
    with pytest.raises(ValueError, match="unknown judge backend 'gpt'; known: none, openai, vllm"):
        JUDGES.get("gpt")


def test_vllm_factory_passes_engine_kwargs_and_ignores_openai_options(monkeypatch):
    from verifier.judge import JUDGES, VLLMJudge

    built = []
    monkeypatch.setattr(VLLMJudge, "_build", staticmethod(lambda *a: built.append(a) or object()))
    j = JUDGES.get("vllm")(model="m", max_tokens=8, base_url=None, api_key_env="K", continue_final_message=False,
                           max_model_len=4096, gpu_memory_utilization=0.5)
    assert isinstance(j, VLLMJudge) and j.max_tokens == 8
    assert built == [("m", 4096, {"gpu_memory_utilization": 0.5})]


def test_scripted_fake_consumes_a_list_then_replies_empty():
    backend = ScriptedJudge(["Verdict: consistent", "nonsense"], supports_prefill=False)
    out = ConsistencyJudge(backend).judge(items(2))
    assert [(v.verdict, v.attempts) for v in out] == [("consistent", 1), ("unknown", 2)]
    assert out[1].reply == "" and [len(c) for c in backend.calls] == [2, 1]
