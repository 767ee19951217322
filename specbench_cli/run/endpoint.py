"""Endpoint rows: the questions sent to a deployed engine's OpenAI-compatible server (llama.cpp's
llama-server, vLLM, SGLang, TensorRT-LLM), streamed and greedy, measured as our own rows are.

Each endpoint (`--endpoint NAME=URL`) is a row of the same answer files: per question its texts,
new tokens and wall times (so speedups are Spec-Bench's, over the baseline endpoint), and per turn
what the engine counts itself: drafted and accepted tokens from the reply's own counters where the
server gives them (DIALECTS), else the Prometheus counters' change around the request (at one
request in flight only: with several, the deltas mix requests). Latency is measured on this
client: time to the first token, the decode rate after it, and the gaps between streamed chunks.

Exactness: answers are compared as texts with the baseline's. The baseline's every turn is asked
a second time, untimed, with logprobs, so that a difference can be split into a near-tie (the
baseline's top-1 and top-2 log-probabilities closer than the tolerance where it first differs)
and a mismatch; that second answer must equal the first, which also catches a server that does
not decode greedily at temperature 0 (every other endpoint is asked its first question twice).

Standard library HTTP only: no client package to install.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..analysis.metrics import NEAR_TIE, common_prefix, token_at
from ..bench.questions import Question
from ..errors import SpecbenchError
from ..names import batch_size_of, unbatched

NAME = re.compile(r"[A-Za-z0-9_.-]+")

# Per-request counters, where each engine puts them in a reply (the last streamed chunk, or any
# chunk): (source named in the report, the object's path in a chunk, field → our counter, the
# counters an engine leaves out when they are zero). Field names changed between releases, so
# each counter lists every name seen.
DIALECTS = (
    ("llama.cpp timings", ("timings",),
     {"draft_tokens": ("draft_n",), "accepted": ("draft_n_accepted",),
      "tokens": ("predicted_n",)},
     {"draft_tokens": 0, "accepted": 0}),      # a request that drafted nothing has no draft_n
    ("vLLM per-request metrics", ("metrics", "speculative_decoding"),
     {"draft_tokens": ("num_draft_tokens", "draft_tokens"),
      "accepted": ("num_accepted_tokens", "accepted_tokens"), "drafts": ("num_drafts",)}, {}),
    ("SGLang meta_info", ("meta_info",),
     {"forwards": ("spec_verify_ct",), "tokens": ("completion_tokens",),
      "accept_length": ("spec_accept_length",)}, {}),
)

# Prometheus counters of speculative decoding (`/metrics`): prefix → our counter by suffix.
PROMETHEUS = {"llamacpp:spec_decode_": "llama.cpp /metrics",
              "vllm:spec_decode_": "vLLM /metrics"}
PROMETHEUS_FIELDS = {"num_drafts": "drafts", "num_draft_tokens": "draft_tokens",
                     "num_accepted_tokens": "accepted"}
PER_POSITION = "num_accepted_tokens_per_pos"

# What the report shows of an endpoint row (run.json methods.<row>.statistics; see metrics).
STATISTICS = [
    {"label": "TTFT ms", "count": "ttft_seconds", "per": "turns", "scale": 1000, "unit": "ms",
     "help": "time from sending a turn to its first streamed token, mean over turns"},
    {"label": "decode tok/s", "count": "decode_tokens", "per": "decode_seconds",
     "help": "tokens after the first over the time from the first to the last"},
    {"label": "accepted", "count": "accepted", "per": "draft_tokens", "scale": 100, "unit": "%",
     "help": "share of drafted tokens the engine accepted, from its own counters"},
    {"label": "drafted/forward", "count": "draft_tokens", "per": "forwards",
     "help": "drafted tokens per target forward, from the engine's counters"},
]


WARM_UP = "Count from one to twenty in words."      # asked untimed before the questions


class EndpointError(SpecbenchError):
    """A server that cannot be used as asked: one line naming the endpoint."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str            # the base URL as OpenAI clients take it, ending in /v1

    @property
    def root(self) -> str:
        """The server's own root (Prometheus serves /metrics there, not under /v1)."""
        return self.url[:-len("/v1")]


def parse_endpoints(given: list[str]) -> list[Endpoint]:
    """'NAME=URL' strings → endpoints; a URL without /v1 gets it."""
    endpoints = []
    for text in given:
        name, sep, url = str(text).partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        if not sep or not NAME.fullmatch(name) or not re.match(r"https?://[^/]+", url):
            raise EndpointError(f"--endpoint {text!r}: expected NAME=URL, e.g. "
                                "vanilla=http://localhost:8080/v1 (NAME: letters, digits, "
                                "'_', '.', '-')")
        endpoints.append(Endpoint(name, url if url.endswith("/v1") else url + "/v1"))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise EndpointError(f"--endpoint: a name given twice ({', '.join(names)})")
    return endpoints


# ---------------------------------------------------------------- HTTP

def request(endpoint: Endpoint, url: str, body: dict | None, timeout: float):
    """An open HTTP response from one of the endpoint's URLs (a GET, or a POST of `body`), or
    one line saying why there is none."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise EndpointError(f"endpoint {endpoint.name} ({url}): HTTP {err.code} "
                            f"{server_message(err)}") from None
    except (urllib.error.URLError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise timed_out(endpoint, timeout) from None
        raise EndpointError(f"endpoint {endpoint.name} ({url}): cannot connect ({reason}); is "
                            "the server running there?") from None
    except (socket.timeout, TimeoutError):
        raise timed_out(endpoint, timeout) from None


def server_message(err: urllib.error.HTTPError) -> str:
    """The error a server wrote into its reply (OpenAI's {"error": {"message": …}}), one line."""
    try:
        body = err.read().decode("utf-8", "replace")
    except OSError:
        body = str(err.reason)
    try:
        message = json.loads(body)
        message = message.get("error", message) if isinstance(message, dict) else message
        message = message.get("message", message) if isinstance(message, dict) else message
    except ValueError:
        message = body or err.reason
    return " ".join(str(message).split())[:300]


def timed_out(endpoint: Endpoint, timeout: float) -> EndpointError:
    return EndpointError(f"endpoint {endpoint.name} ({endpoint.url}): no reply within "
                         f"--request-timeout {timeout:g} s")


def served_models(endpoint: Endpoint, timeout: float) -> list[str]:
    """The model names the server lists (GET /v1/models)."""
    with request(endpoint, endpoint.url + "/models", None, timeout) as reply:
        try:
            doc = json.loads(reply.read())
            return [str(m["id"]) for m in doc["data"]]
        except (ValueError, KeyError, TypeError):
            raise EndpointError(f"endpoint {endpoint.name}: /v1/models is not an OpenAI model "
                                "list; is this an OpenAI-compatible server?") from None


def check_model(endpoint: Endpoint, model: str | None, timeout: float) -> str:
    """The model to ask for: `model` where the server serves it, else its first."""
    models = served_models(endpoint, timeout)
    if not models:
        raise EndpointError(f"endpoint {endpoint.name} serves no model (/v1/models is empty)")
    if model is not None and model not in models:
        raise EndpointError(f"endpoint {endpoint.name} does not serve --model {model!r} "
                            f"(it serves {', '.join(models)})")
    return model or models[0]


# ---------------------------------------------------------------- one streamed answer

@dataclass
class Reply:
    text: str
    tokens: int                 # new tokens, by the server's count where it gives one
    wall: float                 # from sending to the end of the stream (s)
    ttft: float | None          # to the first chunk with text (s)
    gaps: list[float]           # between chunks with text (s)
    counters: dict              # per-request counters (DIALECTS) or {}
    source: str | None          # where `counters` came from
    logprobs: list = field(default_factory=list)   # with logprobs: (bytes, top-1 − top-2)


def chat(endpoint: Endpoint, model: str, messages: list[dict], max_tokens: int, timeout: float,
         logprobs: bool = False) -> Reply:
    """One greedy, streamed chat completion, timed on this side."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "top_p": 1.0, "seed": 0, "stream": True, "stream_options": {"include_usage": True}}
    if logprobs:
        body.update(logprobs=True, top_logprobs=2)
    start = time.perf_counter()
    pieces, stamps, chunks, finished, usage, probs = [], [], [], False, None, []
    deadline = start + timeout
    with request(endpoint, endpoint.url + "/chat/completions", body, timeout) as reply:
        try:
            for raw in reply:
                if time.perf_counter() > deadline:
                    raise timed_out(endpoint, timeout)
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                chunk = parsed_chunk(endpoint, data)
                chunks.append(chunk)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        pieces.append(text)
                        stamps.append(time.perf_counter())
                    probs += token_logprobs(choice)
                    finished = finished or choice.get("finish_reason") is not None
        except (socket.timeout, TimeoutError):
            raise timed_out(endpoint, timeout) from None
        except (ConnectionError, OSError) as err:
            raise cut(endpoint, err) from None
    wall = time.perf_counter() - start
    if not finished:
        raise cut(endpoint, "no finish_reason and no [DONE]")
    counters, source = request_counters(chunks)
    tokens = (usage or {}).get("completion_tokens") or counters.get("tokens") or len(pieces)
    return Reply("".join(pieces), int(tokens), wall, stamps[0] - start if stamps else None,
                 [b - a for a, b in zip(stamps, stamps[1:])], counters, source, probs)


def parsed_chunk(endpoint: Endpoint, data: str) -> dict:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise EndpointError(f"endpoint {endpoint.name}: a streamed chunk is not JSON: "
                            f"{data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise EndpointError(f"endpoint {endpoint.name}: a streamed chunk is not an object")
    if "error" in chunk:
        message = chunk["error"].get("message") if isinstance(chunk["error"], dict) \
            else chunk["error"]
        raise EndpointError(f"endpoint {endpoint.name}: the server stopped with an error: "
                            f"{' '.join(str(message).split())[:300]}")
    return chunk


def cut(endpoint: Endpoint, why) -> EndpointError:
    return EndpointError(f"endpoint {endpoint.name}: the stream was cut before the answer "
                         f"ended ({why})")


def token_logprobs(choice: dict) -> list[tuple[bytes, float | None]]:
    """(the token's bytes, its top-1 − top-2 log-probability gap) for each token of a chunk
    (OpenAI's logprobs.content; llama.cpp adds each token's bytes)."""
    out = []
    for entry in ((choice.get("logprobs") or {}).get("content") or []):
        raw = entry.get("bytes")
        token = bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode()
        top = [t.get("logprob") for t in entry.get("top_logprobs") or []
               if isinstance(t.get("logprob"), (int, float))]
        out.append((token, top[0] - top[1] if len(top) >= 2 else None))
    return out


def request_counters(chunks: list[dict]) -> tuple[dict, str | None]:
    """The first dialect whose object appears in a chunk (the last such chunk wins)."""
    for source, path, names, zero in DIALECTS:
        found = None
        for chunk in chunks:
            node = chunk
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                found = node
        if found is None:
            continue
        counters = {ours: found[name] for ours, options in names.items() for name in options
                    if isinstance(found.get(name), (int, float))}
        if counters:
            return {**zero, **counters}, source
    return {}, None


# ---------------------------------------------------------------- Prometheus

def prometheus(endpoint: Endpoint, timeout: float) -> tuple[dict, str] | None:
    """The server's speculative-decoding counters (summed over label sets; the per-position
    acceptance as a list), or None where it exposes none."""
    try:
        with request(endpoint, endpoint.root + "/metrics", None, timeout) as reply:
            text = reply.read().decode("utf-8", "replace")
    except EndpointError:
        return None
    counters, positions, source = {}, {}, None
    for line in text.splitlines():
        match = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)\s*$", line)
        if not match:
            continue
        name, labels, value = match[1], match[2] or "", float(match[3])
        for prefix, label in PROMETHEUS.items():
            if not name.startswith(prefix):
                continue
            source = label
            stem = name[len(prefix):].removesuffix("_total")
            if stem == PER_POSITION:
                pos = re.search(r'position="(\d+)"', labels)
                if pos:
                    positions[int(pos[1])] = positions.get(int(pos[1]), 0) + value
            elif stem in PROMETHEUS_FIELDS:
                key = PROMETHEUS_FIELDS[stem]
                counters[key] = counters.get(key, 0) + value
    if source is None:
        return None
    if positions:
        counters["per_position"] = [positions[p] for p in sorted(positions)]
    return counters, source


def counter_delta(before: dict, after: dict) -> dict:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "per_position"}
    if "per_position" in after:
        old = before.get("per_position", [])
        out["per_position"] = [v - (old[i] if i < len(old) else 0)
                               for i, v in enumerate(after["per_position"])]
    return out


# ---------------------------------------------------------------- a turn's statistics

def turn_stats(reply: Reply, counters: dict, source: str | None) -> dict:
    """What an answer line keeps of a turn: latency on this side and the engine's counters.
    Forwards (target steps) are tokens − accepted where the counters say what was accepted:
    each forward commits one token of its own plus the drafts it accepts."""
    stats = {"turns": 1, "ttft_seconds": reply.ttft or 0.0,
             "gaps_ms": [round(1e3 * g, 3) for g in reply.gaps]}
    if reply.ttft is not None and reply.gaps:
        stats["decode_seconds"] = sum(reply.gaps)
        stats["decode_tokens"] = max(reply.tokens - 1, 0)
    if source:
        stats["counter_source"] = source
        for key in ("draft_tokens", "accepted", "drafts", "per_position"):
            if key in counters:
                stats[key] = counters[key]
        if "forwards" in counters:
            stats["forwards"] = counters["forwards"]
        elif "accepted" in counters:
            stats["forwards"] = max(reply.tokens - counters["accepted"], 1)
    return stats


# ---------------------------------------------------------------- the rows

class EndpointRunner:
    """Answers every endpoint row over the questions, as run.runner.Runner answers methods:
    interleaved per question at one request in flight, `B` in flight for rows 'name+bB'
    (--concurrency B), every finished question appended at once, --resume skipping them."""

    def __init__(self, config, questions: list[Question], out_dir):
        self.config = config
        self.endpoints = {e.name: e for e in parse_endpoints(config.endpoint)}
        # each server's own name for the model (llama-server lists its file's)
        self.models = {name: config.method_options[name]["model"] for name in self.endpoints}
        self.questions = questions
        self.out_dir = out_dir
        self.baseline = config.baseline
        self.checked: set[str] = set()      # endpoints whose determinism was checked
        self.lock = threading.Lock()

    def endpoint(self, row: str) -> Endpoint:
        return self.endpoints[unbatched(row)]

    def answer(self, row: str, question: Question, alone: bool = True):
        """One question, every turn, for one row: texts, replies, stats."""
        endpoint, timeout = self.endpoint(row), self.config.request_timeout
        texts, replies, stats = [], [], []
        for i, turn in enumerate(question.turns):
            messages = []
            for asked, said in zip(question.turns[:i], texts):
                messages += [{"role": "user", "content": asked},
                             {"role": "assistant", "content": said}]
            messages.append({"role": "user", "content": turn})
            before = prometheus(endpoint, timeout) if alone else None
            reply = chat(endpoint, self.models[endpoint.name], messages,
                         self.config.max_new_tokens, timeout)
            after = prometheus(endpoint, timeout) if before else None
            counters, source = reply.counters, reply.source
            if not source and after:
                counters, source = counter_delta(before[0], after[0]), before[1]
            elif after:     # what only Prometheus counts: drafting rounds, each position's
                delta = counter_delta(before[0], after[0])
                counters = {**{k: delta[k] for k in ("drafts", "per_position") if k in delta},
                            **counters}
            turn = turn_stats(reply, counters, source)
            if alone and self.needs_probe(row):
                turn.update(self.probe(endpoint, messages, reply))
            texts.append(reply.text)
            replies.append(reply)
            stats.append(turn)
        if alone:
            self.checked.add(unbatched(row))
        return texts, replies, stats

    def warm_up(self):
        """`--warmup` untimed requests to every endpoint (a server's first request may load
        kernels or fill caches), with a prompt of their own: the questions' own would fill the
        servers' prompt caches and speed up the first timed answers."""
        for endpoint in self.endpoints.values():
            for _ in range(self.config.warmup):
                chat(endpoint, self.models[endpoint.name], [{"role": "user", "content": WARM_UP}],
                     min(self.config.max_new_tokens, 32), self.config.request_timeout)

    def needs_probe(self, row: str) -> bool:
        return unbatched(row) == self.baseline or unbatched(row) not in self.checked

    def probe(self, endpoint: Endpoint, messages: list[dict], reply: Reply) -> dict:
        """The same turn again, untimed, with logprobs: it must give the same text (greedy
        decoding is deterministic), and its log-probabilities date each token's margin."""
        again = chat(endpoint, self.models[endpoint.name], messages, self.config.max_new_tokens,
                     self.config.request_timeout, logprobs=True)
        sizes, gaps = [len(b) for b, _ in again.logprobs], [g for _, g in again.logprobs]
        if again.text == reply.text:
            return {"token_bytes": sizes, "top2_gap": gaps} if sizes else {}
        # A server may compute a prompt's last token apart the second time (its prompt cache),
        # in another kernel shape: a flip at a near-tie is that, anything else is sampling.
        at = common_prefix(again.text.encode(), reply.text.encode())
        index = token_at({"stats": [{"token_bytes": sizes}]}, 0, at)
        gap = gaps[index] if index is not None else None
        if gap is None or gap >= NEAR_TIE["server"]:
            raise EndpointError(
                f"endpoint {endpoint.name} answered one greedy request twice, differently "
                f"(after {at} equal bytes{'' if gap is None else f', at a gap of {gap:.2f}'}): "
                "it does not decode greedily at temperature 0; answers so far are kept")
        # its margins hold up to the token it parted at, that one included
        return {"token_bytes": sizes[:index + 1], "top2_gap": gaps[:index + 1],
                "probe_parted_at": at}

    def line(self, row: str, question: Question, repeat: int, texts, replies, stats) -> dict:
        """Spec-Bench's answer-line format, as our own rows write it, with the endpoint's URL and
        each turn's statistics; forwards as decoding steps where the counters imply them."""
        from .runner import spec_bench_line
        return {**spec_bench_line(row, question, repeat, f"{self.models[unbatched(row)]}-{row}",
                                  texts, [s.get("forwards") for s in stats],
                                  [r.tokens for r in replies], [r.wall for r in replies], []),
                "endpoint": self.endpoint(row).url, "stats": stats}

    def run(self, progress=None):
        from .runner import answer_files, append_line, pending_batches, pending_units, \
            read_done, unit_label
        files = answer_files(self.out_dir, self.config.methods)
        units = pending_units(self.config, self.questions, files)
        passes = pending_batches(self.config, self.questions, files)
        total = len(units) + sum(len(batch) * len(names) for _, batch, names in passes)
        task = progress.add_task("questions", total=total, info="") if progress else None

        def store(line: dict, label: str):
            with self.lock:
                append_line(files[line["method"]], line)
                if progress:
                    rate = sum(line["choices"][0]["new_tokens"]) / max(
                        sum(line["choices"][0]["wall_time"]), 1e-9)
                    progress.update(task, info=f"{label} {line['method']} {rate:.0f} tok/s")
        if units or passes:
            self.warm_up()
        for repeat, question, names in units:
            for row in names:
                store(self.line(row, question, repeat, *self.answer(row, question)),
                      unit_label(question, repeat))
            if progress:
                progress.update(task, advance=1)
        for repeat, batch, names in passes:
            for row in names:
                self.concurrent(row, batch, repeat, read_done(files[row]), store, progress,
                                task)

    def concurrent(self, row: str, questions: list[Question], repeat: int, done: set, store,
                   progress, task):
        """A pass of `row`'s questions not in `done` with B requests in flight: each line
        records its pass's wall time so far, so the last one written holds the whole pass's."""
        todo = [q for q in questions if (q.question_id, repeat) not in done]
        size, start = batch_size_of(row), time.perf_counter()

        def one(question: Question):
            texts, replies, stats = self.answer(row, question, alone=False)
            line = self.line(row, question, repeat, texts, replies, stats)
            line["batch"] = {"size": size, "questions": len(todo),
                             "first_question": todo[0].question_id,
                             "wall_time": time.perf_counter() - start, "continuous": True,
                             "concurrency": True}
            store(line, f"{size} in flight")
            if progress:
                progress.update(task, advance=1)
        with ThreadPoolExecutor(size) as pool:
            for future in [pool.submit(one, q) for q in todo]:
                future.result()          # the first error ends the pass, answers kept


