"""A local OpenAI-compatible chat-completions server, for the prompt assistant's tests.

    with ChatServer(content='{"normal": ["a calm street"], "anomaly": ["a fire"]}') as server:
        suggest_prompts("fire", endpoint=Endpoint(server.base_url, "tiny-llm"))
        server.requests[0].body["model"]           # what the client sent

It binds 127.0.0.1 on a free port, answers every POST with `status` and `body` (by default
a chat completion whose message is `content`) after `delay` seconds, and records each
request (path, headers, JSON body). Threads are daemons and `stop()` releases a sleeping
handler, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ChatRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON, or the raw text when it is not JSON


def completion(content: str, model: str = "tiny-llm") -> bytes:
    """A chat-completions answer whose one message is `content`."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


class ChatServer:
    def __init__(
        self,
        content: str = "",
        *,
        status: int = 200,
        body: bytes | None = None,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = completion(content) if body is None else body
        self.delay = delay
        self.headers = headers or {}
        self.requests: list[ChatRequest] = []
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The port it listens (or, once stopped, listened) on."""
        assert self._port, "the server was never started"
        return self._port

    @property
    def base_url(self) -> str:
        """The form operators write: PROMPT_ASSISTANT_URL=http://host:port/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(ChatRequest(self.path, headers, body))
                if server.delay and server._release.wait(server.delay):
                    return  # stopping: drop the connection without an answer
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
