"""A small loopback OpenAI-compatible chat server for the judge tests: a deterministic judge, scripted failures.

The judge reads the nonce and the two delimited answers out of the prompt on its own (not with raysel's
parser) and scores an answer 9 when it contains GOOD, 2 when it contains BAD, else 5.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = ("ok", "429", "500", "503", "401", "hang", "malformed", "noverdict", "echo")
"""What a request can get: a verdict; an HTTP error; a reply later than the client's timeout; a body that is
not JSON; a reply without a verdict line; a reply that first echoes the answers, then gives the verdict."""


def score(answer: str) -> int:
    return 9 if "GOOD" in answer else 2 if "BAD" in answer else 5


class JudgeServer:
    """`with JudgeServer() as server:` serves on 127.0.0.1 (a free port) until the block ends.

    `script` actions are used one per request, in arrival order; then every request gets `default`.
    """

    def __init__(
        self, *, default: str = "ok", delay_s: float = 0.0, hang_s: float = 1.5, scorer: Callable[[str], int] = score
    ) -> None:
        self.default, self.delay_s, self.hang_s = default, delay_s, hang_s
        self.scorer = scorer
        """Score of one answer (1-10), whatever slot it is in."""
        self.script: list[str] = []
        self.retry_after = "0"
        self.requests = 0
        self.auth: list[str | None] = []
        self.orders: list[tuple[str, str]] = []
        """(answer 1, answer 2) of every request, as the server read them."""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        """Usage of the replies the server sent with a 200 and a usage block (what a client is billed)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_action(self, auth: str | None, answers: tuple[str, str]) -> str:
        with self.lock:
            self.requests += 1
            self.auth.append(auth)
            self.orders.append(answers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.pop(0) if self.script else self.default

    def reply(self, action: str, system: str, user: str, auth: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request."""
        nonce, answers = read_prompt(user)
        if action in ("429", "500", "503", "401"):
            # a 401 echoes the key it got, as careless servers do: the client must not pass it on
            message = {"429": "Rate limit reached", "401": f"Incorrect API key provided: {auth}"}.get(action, "error")
            headers = {"retry-after": self.retry_after} if action == "429" else {}
            return int(action), headers, json.dumps({"error": {"message": message, "type": "error"}}).encode()
        if action == "malformed":
            return 200, {}, b'{"id": "chatcmpl-x", "choices": [ this is not json'
        verdict = (
            f"VERDICT {nonce}: {self.scorer(answers[0])} {self.scorer(answers[1])}\nThe better answer is more accurate."
        )
        if action == "noverdict":
            content = "Both answers have merits; I cannot decide."
        elif action == "echo":
            content = (
                f"You asked about these answers:\n<<<ANSWER 1 {nonce}>>>\n{answers[0]}\n<<<END ANSWER 1 {nonce}>>>\n"
                f"Assistant 2 wrote: {answers[1]}\n{verdict}"
            )
        else:
            content = verdict
        pt, ct = (len(system) + len(user)) // 4 + 1, len(content) // 4 + 1
        with self.lock:
            self.prompt_tokens += pt
            self.completion_tokens += ct
        body = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "loopback-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }
        return 200, {}, json.dumps(body).encode()


def read_prompt(user: str) -> tuple[str, tuple[str, str]]:
    """The nonce and the two delimited answers of a judge prompt."""
    m = re.search(r"<<<QUESTION (\w+)>>>", user)
    nonce = m.group(1) if m else "none"
    answers = []
    for tag in ("ANSWER 1", "ANSWER 2"):
        a = re.search(rf"<<<{tag} {nonce}>>>\n(.*?)\n<<<END {tag} {nonce}>>>", user, re.DOTALL)
        answers.append(a.group(1) if a else "")
    return nonce, (answers[0], answers[1])


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            messages = body.get("messages", [])
            system = next((m["content"] for m in messages if m["role"] == "system"), "")
            user = next((m["content"] for m in messages if m["role"] == "user"), "")
            auth = self.headers.get("Authorization", "")
            action = server.next_action(auth, read_prompt(user)[1])
            try:
                if action == "hang":  # answer nothing; the client times out and closes
                    time.sleep(server.hang_s)
                    self.close_connection = True
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, headers, data = 404, {}, b'{"error": {"message": "no such route"}}'
                else:
                    status, headers, data = server.reply(action, system, user, auth)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (timeout)
            finally:
                with server.lock:
                    server.in_flight -= 1

    return Handler
