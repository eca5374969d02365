"""TEST DOUBLE for trtllm-serve: a small OpenAI-compatible HTTP server for the ``openai`` VLM backend's tests.

trtllm-serve needs a GPU and TensorRT-LLM, which CI does not have. This double speaks the parts of its API the backend
uses (``GET /v1/models``, ``GET /health``, ``POST /v1/chat/completions`` with and without ``stream``), records every request
body, and can be scripted to fail (any status, with ``Retry-After``) or to hold a request until released (timeouts).
Without ``serving`` the answer text is whatever the test scripts; with ``serving`` (a
:class:`tests.support.trtllm_emulation.TrtllmVilaEmulation`) unscripted requests are answered by a tiny VILA checkpoint
processed as trtllm-serve processes VILA requests, token by token, with ``logprobs`` when asked.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIServerDouble", "ScriptedReply"]


@dataclass
class ScriptedReply:
    status: int = 200
    text: str = "This looks like a CT image. Let me trigger <VISTA3D(everything)>."
    finish_reason: str = "stop"
    error_message: str = ""
    retry_after: str | None = None
    hold: threading.Event | None = None  # the handler waits for this before answering
    raw_body: bytes | None = None  # answer exactly these bytes (malformed answers)


@dataclass
class OpenAIServerDouble:
    model_id: str = "Llama3-VILA-M3-8B"
    default_text: str = "This looks like a CT image. Let me trigger <VISTA3D(everything)>."
    requests: list[dict[str, Any]] = field(default_factory=list)
    serving: Any = None  # a TrtllmVilaEmulation: answers unscripted chat requests with a real tiny model
    _script: queue.Queue = field(default_factory=queue.Queue)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- scripting -----------------------------------------------------------------------------------------------

    def reply(self, reply: ScriptedReply) -> None:
        """Queue the answer to the next chat request (FIFO); without a script, the double answers ``default_text``."""
        self._script.put(reply)

    def fail(self, status: int, times: int = 1, message: str = "scripted failure", retry_after: str | None = None) -> None:
        for _ in range(times):
            self.reply(ScriptedReply(status=status, error_message=message, retry_after=retry_after))

    def hold_next(self) -> threading.Event:
        """The next chat request waits until the returned event is set (bounded, so a broken test cannot hang)."""
        event = threading.Event()
        self.reply(ScriptedReply(hold=event))
        return event

    @property
    def url(self) -> str:
        assert self._server is not None, "start the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> OpenAIServerDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                double.requests.append({"method": "GET", "path": self.path, "body": None})
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": double.model_id, "object": "model"}]})
                elif self.path == "/health":
                    self._json(200, {"status": "ok"})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                double.requests.append({"method": "POST", "path": self.path, "body": body})
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    reply = double._script.get_nowait()
                except queue.Empty:
                    if double.serving is not None:
                        self._served(body)
                        return
                    reply = ScriptedReply(text=double.default_text)
                if reply.hold is not None:
                    reply.hold.wait(timeout=30)
                if reply.raw_body is not None:
                    self._send(reply.status, reply.raw_body, "application/json")
                elif reply.status != 200:
                    headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
                    self._json(reply.status, {"error": {"message": reply.error_message, "type": "server_error"}}, headers)
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, _completion(double.model_id, body, reply))

            def _served(self, body: dict) -> None:
                from tests.support.trtllm_emulation import EmulationError

                try:
                    answer = double.serving.answer(body)
                except EmulationError as error:
                    self._json(error.status, {"error": {"message": str(error), "type": "BadRequestError"}})
                    return
                usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                         "total_tokens": answer.prompt_tokens + answer.completion_tokens}
                if not body.get("stream"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
                              "finish_reason": answer.finish_reason}
                    if answer.logprobs:
                        choice["logprobs"] = {"content": answer.logprobs}
                    self._json(200, {"id": "chatcmpl-emulated", "object": "chat.completion", "model": double.model_id,
                                     "choices": [choice], "usage": usage})
                    return
                events = []
                for index, piece in enumerate(answer.pieces):
                    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    if answer.logprobs:
                        choice["logprobs"] = {"content": [answer.logprobs[index]]}
                    events.append({"choices": [choice]})
                events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]})
                events.append({"choices": [], "usage": usage})
                data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
                self._send(200, data, "text/event-stream")

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(payload).encode(), "application/json", headers)

            def _send(self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict, reply: ScriptedReply) -> None:
                words = reply.text.split(" ")
                events = [
                    {"choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}, "finish_reason": None}]}
                    for i, word in enumerate(words)
                ]
                events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]})
                events.append({"choices": [], "usage": _usage(body, reply.text)})
                data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
                self._send(200, data, "text/event-stream")

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client gave up (a timeout test): nothing to report
        super().handle_error(request, client_address)


def _usage(body: dict, text: str) -> dict[str, int]:
    prompt_chars = sum(len(json.dumps(m)) for m in body.get("messages", []))
    return {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text.split()), "total_tokens": prompt_chars // 4 + len(text.split())}


def _completion(model: str, body: dict, reply: ScriptedReply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}],
        "usage": _usage(body, reply.text),
    }
