"""An in-process OpenAI-compatible server for the endpoint tests: streamed chat completions whose
text is a fixed function of the conversation, with planted counters, so every number a run
reports from it is known in advance. Behaviours a real server can show are switches:

- `timings`: llama.cpp's per-request counters in the last chunk ({"draft_n", "draft_n_accepted"},
  `predicted_n` added); `metrics`: Prometheus counters at /metrics instead, raised by `per_request`
  at every request (llama.cpp's names);
- `differ`: {question word: token index} where this server writes another word than the others,
  `gap`: the top-1 − top-2 log-probability its logprobs give every token (ties when small);
- `fail`: 'http500' (a 500 reply), 'cut' (the stream ends after two chunks, no [DONE]), 'slow'
  (sleeps `delay` s before replying), 'random' (ignores temperature: every answer differs),
  each from the `fail_after`-th chat request on.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = 12          # tokens an answer has before its end (or max_tokens)


def answer_tokens(messages: list[dict], differ: dict, calls: int, random: bool) -> list[str]:
    """The answer's tokens: words made from the last user turn and the turn's number."""
    asked = messages[-1]["content"]
    turn = sum(m["role"] == "user" for m in messages)
    words = [f" w{(len(asked) * 7 + turn * 3 + i) % 50}" for i in range(WORDS)]
    for key, index in differ.items():
        if key in asked and index < len(words):
            words[index] = " other"
    if random:
        words[0] = f" r{calls}"
    return words


class FakeServer:
    def __init__(self, model="fake-model", timings=None, metrics=None, differ=None, gap=5.0,
                 fail=None, fail_after=0, delay=0.0, max_context=None):
        self.model, self.timings, self.metrics = model, timings, metrics
        self.differ, self.gap = differ or {}, gap
        self.fail, self.fail_after, self.delay = fail, fail_after, delay
        self.calls = 0
        self.requests: list[dict] = []
        self.counters = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}
        self.positions = [0, 0]
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):       # quiet
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list",
                                     "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/metrics" and server.metrics:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(server.prometheus().encode())
                else:
                    self.reply(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.calls += 1
                    calls = server.calls
                    server.requests.append(body)
                failing = server.fail if calls > server.fail_after else None
                if body.get("model") != server.model:
                    return self.reply(404, {"error": {"message": f"model {body.get('model')!r} "
                                                                 "not found"}})
                if failing == "http500":
                    return self.reply(500, {"error": {"message": "out of memory"}})
                if failing == "slow":
                    time.sleep(server.delay)
                words = answer_tokens(body["messages"], server.differ, calls,
                                      failing == "random")[:body["max_tokens"]]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, word in enumerate(words):
                    if failing == "cut" and i == 2:
                        return
                    choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
                    if body.get("logprobs"):
                        choice["logprobs"] = {"content": [{
                            "token": word, "bytes": list(word.encode()), "logprob": -0.1,
                            "top_logprobs": [{"token": word, "logprob": -0.1},
                                             {"token": " x", "logprob": -0.1 - server.gap}]}]}
                    self.event({"choices": [choice]})
                last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
                if server.timings is not None:
                    last["timings"] = {**server.timings, "predicted_n": len(words)}
                if server.metrics:
                    server.count(server.metrics)
                self.event(last)
                self.event({"choices": [], "usage": {"completion_tokens": len(words)}})
                self.wfile.write(b"data: [DONE]\n\n")

            def event(self, doc: dict):
                self.wfile.write(f"data: {json.dumps(doc)}\n\n".encode())
                self.wfile.flush()

            def reply(self, status: int, doc: dict):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        return Handler

    def count(self, per_request: dict):
        with self.lock:
            for key, value in per_request.items():
                if key == "positions":
                    self.positions = [a + b for a, b in zip(self.positions, value)]
                else:
                    self.counters[key] += value

    def prometheus(self) -> str:
        lines = []
        for key, value in self.counters.items():
            lines += [f"# TYPE llamacpp:spec_decode_{key}_total counter",
                      f"llamacpp:spec_decode_{key}_total {value}"]
        lines += [f'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}} {v}'
                  for i, v in enumerate(self.positions)]
        return "\n".join(lines) + "\n"
