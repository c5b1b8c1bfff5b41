"""An OpenAI-compatible server for a trained fish, and a web page to chat with it.

    guppy serve runs/guppy        # then open http://127.0.0.1:8000/

Any client of the OpenAI Chat Completions protocol talks to it (`base_url=".../v1"`):

    POST /v1/chat/completions   messages, temperature, top_p, max_tokens, seed, stop, stream,
                                logprobs, top_logprobs
    GET  /v1/models             the one model (the run folder's name)
    GET  /health                status and how many requests are in flight
    GET  /                      the chat page (guppylm/static/index.html)

The topic the model named before replying goes out beside the reply, as reasoning servers
send their thinking: `"topic": "food"` on the message (or on a streamed delta), which plain
clients ignore.

Asked for `"logprobs": true` (and `"top_logprobs": N`, 0 to 20), a reply also says how sure
the model was of each token, in OpenAI's shape: `choices[0].logprobs.content`, a list of
`{token, logprob, bytes, top_logprobs}`, on the completion or on each streamed chunk; and,
beside the topic, `"topic_logprobs"`: the topic's log-probability among the topics and the
likeliest topics. Without them, nothing of this is sent.

This file is the HTTP layer only: it validates a request, turns its history into prompt ids
with `Guppy.prompt_ids` (the trimming `guppy chat` does), and submits a `Sequence` to the
`DecodeLoop` (decode.py), which decodes every request in flight together in a background
thread. Each request gets its chunks back through its own asyncio queue.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from guppylm.chat import Chunk, Guppy
from guppylm.chat_format import opening_to_avoid
from guppylm.decode import DecodeLoop, Full, ScoredChunk, Sequence, TokenScore, sampling_for
from guppylm.errors import GuppyError
from guppylm.pages import chat_page
from guppylm.probe import token_bytes
from guppylm.tokenizer import Tokenizer

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        ValidationError,
        ValidationInfo,
        field_validator,
    )
    from starlette.exceptions import HTTPException
except ImportError as e:  # an optional extra
    raise GuppyError(f"guppy serve needs FastAPI and uvicorn ({e.name} is missing); install "
                     "them with `pip install 'guppylm[serve]'`") from None

MAX_BODY_BYTES = 1_000_000  # a request body above this is refused (a long history fits easily)
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MIN_TEMPERATURE = 1e-4  # logits divided by less could overflow: 0 means greedy instead
MAX_TOP_LOGPROBS = 20  # as OpenAI allows


# ----------------------------------------------------------------------------- errors

class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type)

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(
            {"error": {"message": self.message, "type": self.type, "param": self.param,
                       "code": self.code}}, status_code=self.status, headers=headers)


# what a value of the wrong type should have been, by pydantic's error type
_KINDS = {"float_type": "a number", "int_type": "an integer", "int_from_float": "an integer",
          "string_type": "a string", "bool_type": "true or false", "list_type": "a list",
          "model_type": "an object", "model_attributes_type": "an object",
          "dict_type": "an object"}
# the accepted range of each bounded field, in words
_RANGES = {"temperature": "a number from 0 to 2 (0: always the likeliest word)",
           "top_p": "a number above 0 and at most 1", "top_k": "an integer, 0 (no limit) or more",
           "max_tokens": "an integer, 1 or more", "max_completion_tokens": "an integer, 1 or more",
           "seed": f"an integer from {-2**63} to {2**64 - 1}",
           "top_logprobs": f"an integer from 0 to {MAX_TOP_LOGPROBS}"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _param(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's errors, as one line that names the field and what to send."""
    error = errors[0]
    loc = tuple(error.get("loc", ()))
    if loc and loc[0] == "body":  # FastAPI's own validation puts the body first
        loc = loc[1:]
    param = _param(loc) or None
    kind, value, field = error["type"], error.get("input"), str(loc[-1]) if loc else ""
    where = param or "the body"
    if kind == "missing":
        message = f"{where}: required"
        if field == "messages":
            message += '; send a list of messages like [{"role": "user", "content": "hi"}]'
        elif field in ("role", "content"):
            message += "; every message needs a role and a content"
    elif kind in _KINDS:
        got = repr(value) if type(value) in (int, float) else _json_type(value)
        message = f"{where}: must be {_KINDS[kind]}, not {got}"
    elif kind == "finite_number":
        message = f"{where}: must be a finite number"
    elif field in _RANGES and kind in ("greater_than", "greater_than_equal", "less_than",
                                       "less_than_equal"):
        message = f"{where}: {value!r} is out of range; use {_RANGES[field]}"
    elif kind == "too_short" and field == "messages":
        message = ('messages: must not be empty; send at least one message like '
                   '{"role": "user", "content": "hi"}')
    elif kind == "value_error":
        message = f"{where}: {error['ctx']['error']}"
    else:
        message = f"{where}: {error['msg']}"
    return APIError(400, message, param=param, code="invalid_value")


# ----------------------------------------------------------------------------- the request

class Message(BaseModel):
    """One message of the history, as OpenAI clients send it: a role and a text content."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: str
    content: Any

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ("user", "assistant", "system", "developer"):
            raise ValueError(f"unknown role {role!r}; use 'user' or 'assistant' ('system' "
                             "messages are accepted and ignored)")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: Any) -> str:
        """A string, or OpenAI's list of content parts when they are all text."""
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content):
            return "".join(p["text"] for p in content)
        raise ValueError(f"must be text, not {_json_type(content)}: a string, or a list of "
                         '{"type": "text", "text": "..."} parts')


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions. Unknown fields are ignored, as OpenAI-style
    servers do; those that would change the answer in ways this server cannot are refused."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    model: str | None = None  # any name is accepted: there is one model
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's; many servers accept it
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-2**63, le=2**64 - 1)
    stop: Any = ()
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (1, None):
            raise ValueError(f"{n} choices asked; this server gives 1 per request: leave n out "
                             "(or send n=1) and repeat the request for more")
        return n

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, temperature: float | None) -> float | None:
        if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"{temperature!r} is too small to divide by; use 0 (always the "
                             f"likeliest word) or at least {MIN_TEMPERATURE}")
        return temperature

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, stop: Any) -> tuple[str, ...]:
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOP:
            raise ValueError(f"{len(stops)} stop strings; send at most {MAX_STOP}")
        return tuple(stops)

    @field_validator("top_logprobs")
    @classmethod
    def _only_with_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError('needs "logprobs": true as well (as OpenAI asks)')
        return top

    @field_validator("tools", mode="before")
    @classmethod
    def _no_tools(cls, tools: Any) -> None:
        if tools:
            raise ValueError("Guppy cannot call tools; leave tools out")
        return None

    def conversation(self) -> list[dict]:
        """The user and assistant messages, content only (system messages are dropped:
        Guppy was never trained with one)."""
        messages = [{"role": m.role, "content": m.content} for m in self.messages
                    if m.role in ("user", "assistant")]
        if not messages or messages[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must be from the user (with "
                           "role 'user'): it is the one Guppy answers", param="messages",
                           code="invalid_value")
        return messages


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes) -> ChatRequest:
    """The body of a chat completion request, or an APIError (400) saying what to fix."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)[:80]
        raise APIError(400, f"the body is not valid JSON ({why}); send a JSON object like "
                       '{"messages": [{"role": "user", "content": "hi"}]}',
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the body is {_json_type(data)}; send a JSON object like "
                       '{"messages": [{"role": "user", "content": "hi"}]}', code="invalid_json")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e.errors()) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing one over `limit` bytes before reading it all."""
    too_big = APIError(400, f"the request body is over {limit:,} bytes; send a shorter "
                       "conversation", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _fitting_tail(messages: list[dict], context: int) -> list[dict]:
    """`messages` less leading pairs that `Guppy.prompt_ids` would drop anyway, so that a
    history of thousands of messages costs no more than one that fits: every message takes
    at least 2 tokens (its marker and <|end|>), so more than context/2 never fit, and
    prompt_ids drops the oldest two at a time until the rest fits."""
    most = context // 2 + 1
    drop = max(0, (len(messages) - most) // 2) * 2
    return messages[drop:]


# ----------------------------------------------------------------------------- the app

def create_app(guppy: Guppy, model_id: str = "guppy", *, max_batch: int = 32,
               max_waiting: int = 64, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The server for `guppy`: at most `max_batch` replies decoded together, `max_waiting`
    more queued, and HTTP 429 beyond that."""
    decoding = DecodeLoop(guppy.model, guppy.tok, max_batch=max_batch, max_waiting=max_waiting)
    created = int(time.time())
    page = _page(guppy, model_id)

    mailbox = _Mailbox()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mailbox.loop = asyncio.get_running_loop()
        decoding.start()
        yield
        decoding.stop()

    app = FastAPI(title="GuppyLM", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.decoding = decoding

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_error(list(e.errors())).response()  # 400, not FastAPI's 422

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 404:
            message = (f"{request.method} {request.url.path}: no such endpoint; the API is "
                       "POST /v1/chat/completions, GET /v1/models and GET /health")
        elif e.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        else:
            message = str(e.detail)
        return APIError(e.status_code, message, code=str(e.status_code)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        return APIError(500, "internal error; the server's log says more",
                        type="server_error").response()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, **decoding.counts()}

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "guppylm",
                "persona": guppy.name, "context": guppy.model.cfg.context}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        if name != model_id:
            raise APIError(404, f"model {name!r}: not served here; this server has "
                           f"{model_id!r}", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_request(await _read_body(request, max_body_bytes))
        cfg = sampling_for(guppy.sampling, temperature=req.temperature, top_p=req.top_p,
                           top_k=req.top_k, seed=req.seed,
                           max_new_tokens=req.max_completion_tokens or req.max_tokens)
        conversation = req.conversation()
        messages = _fitting_tail(conversation, guppy.model.cfg.context)
        ids = await asyncio.to_thread(guppy.prompt_ids, messages, cfg.max_new_tokens)
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()
        seq = Sequence(ids, cfg, stop=req.stop, avoid=opening_to_avoid(conversation),
                       top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                       emit=lambda chunk: mailbox.post(chunks, chunk))
        try:
            decoding.submit(seq)
        except Full:
            raise APIError(429, f"{guppy.name} is busy: this server takes "
                           f"{max_batch + max_waiting} requests at a time and has that many; "
                           "try again in a moment", type="rate_limit_error",
                           code="rate_limit_exceeded") from None
        reply = _Reply(model_id, len(ids), guppy.tok if req.logprobs else None)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _events(reply, seq, chunks, decoding, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(reply, seq, chunks, decoding, request)

    return app


class _Mailbox:
    """Chunks from the decoding thread to the requests' queues in the event loop, with one
    wake-up of the loop for all the chunks of a step rather than one per chunk."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Chunk]] = []

    def post(self, queue: asyncio.Queue, chunk: Chunk) -> None:  # in the decoding thread
        with self._lock:
            self._items.append((queue, chunk))
            if len(self._items) > 1:
                return  # a delivery is already on its way
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed: the server is stopping
            pass

    def _deliver(self) -> None:  # in the event loop
        with self._lock:
            items, self._items = self._items, []
        for queue, chunk in items:
            queue.put_nowait(chunk)


class _Reply:
    """What a reply's response objects share: id, time, model, the token counts, and the
    tokenizer that names scored tokens (None: the request asked for no logprobs)."""

    def __init__(self, model_id: str, prompt_tokens: int, tok: Tokenizer | None = None):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.prompt_tokens = prompt_tokens
        self.tok = tok

    def usage(self, seq: Sequence) -> dict:
        n = len(seq.tokens)  # every token generated: the topic and <|end|> included
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n}

    def chunk(self, delta: dict, finish: str | None = None, logprobs: dict | None = None,
              **extra) -> str:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": [{"index": 0, "delta": delta,
                                                 "logprobs": logprobs,
                                                 "finish_reason": finish}], **extra}
        return _sse(obj)

    def logprobs(self, scores: list[TokenScore]) -> dict | None:
        """A choice's `logprobs` in OpenAI's shape, or None when they were not asked for."""
        if self.tok is None:
            return None
        content = [{**self._token(s.id, s.logprob),
                    "top_logprobs": [self._token(i, lp) for i, lp in s.top]} for s in scores]
        return {"content": content, "refusal": None}

    def _token(self, token_id: int, logprob: float) -> dict:
        raw = token_bytes(self.tok, token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0),
                "bytes": list(raw)}

    def topic_logprobs(self, topic: TokenScore | None) -> dict:
        """`{"topic_logprobs": ...}` to put beside the topic: its log-probability among the
        topics and the likeliest topics; empty when not asked for."""
        if self.tok is None or topic is None:
            return {}
        names = self.tok.topics
        return {"topic_logprobs": {
            "topic": names[topic.id], "logprob": topic.logprob,
            "top_logprobs": [{"topic": names[i], "logprob": lp} for i, lp in topic.top]}}


def _sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False,
                                                       separators=(",", ":"))
    return f"data: {data}\n\n"


async def _complete(reply: _Reply, seq: Sequence, chunks: asyncio.Queue,
                    decoding: DecodeLoop, request: Request) -> JSONResponse:
    """The whole reply as one chat.completion; generation stops if the client leaves."""

    async def collect() -> tuple[str, str | None, str, list[TokenScore], TokenScore | None]:
        text, topic, scores, topic_score = "", None, [], None
        while True:
            chunk = await chunks.get()
            text, topic = text + chunk.text, chunk.topic or topic
            if isinstance(chunk, ScoredChunk):
                scores += chunk.scores
                topic_score = chunk.topic_score or topic_score
            if chunk.finish:
                return text, topic, chunk.finish, scores, topic_score

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collecting, watching = asyncio.create_task(collect()), asyncio.create_task(client_left())
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()
            decoding.cancel(seq)
    if not collecting.done() or collecting.cancelled():
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    text, topic, finish, scores, topic_score = collecting.result()
    if finish == "error":
        raise APIError(500, "generation failed; the server's log says more", type="server_error")
    message = {"role": "assistant", "content": text}
    if topic:
        message.update(topic=topic, **reply.topic_logprobs(topic_score))
    return JSONResponse({
        "id": reply.id, "object": "chat.completion", "created": reply.created,
        "model": reply.model,
        "choices": [{"index": 0, "message": message, "logprobs": reply.logprobs(scores),
                     "finish_reason": finish}],
        "usage": reply.usage(seq)})


async def _events(reply: _Reply, seq: Sequence, chunks: asyncio.Queue, decoding: DecodeLoop,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-Sent Events: a chunk naming the role, one naming the topic, the text as it
    comes, one with the finish reason, [usage], then [DONE]. If the client is slower than
    generation, the text waiting for it goes out in one event rather than piling up."""
    extra = {"usage": None} if include_usage else {}
    try:
        yield reply.chunk({"role": "assistant", "content": ""}, **extra)
        while True:
            waiting = [await chunks.get()]
            while not chunks.empty():
                waiting.append(chunks.get_nowait())
            events, text, scores, finish = [], "", [], None
            for chunk in waiting:
                scored = isinstance(chunk, ScoredChunk)
                if chunk.topic:
                    topic_score = chunk.topic_score if scored else None
                    events.append(reply.chunk({"topic": chunk.topic,
                                               **reply.topic_logprobs(topic_score)}, **extra))
                text += chunk.text
                scores += chunk.scores if scored else []
                finish = chunk.finish or finish
            if text or scores:
                events.append(reply.chunk({"content": text}, logprobs=reply.logprobs(scores),
                                          **extra))
            if finish == "error":
                events.append(_sse({"error": {"message": "generation failed; the server's "
                                              "log says more", "type": "server_error",
                                              "param": None, "code": None}}))
            elif finish:
                events.append(reply.chunk({}, finish, **extra))
                if include_usage:
                    events.append(_sse({"id": reply.id, "object": "chat.completion.chunk",
                                        "created": reply.created, "model": reply.model,
                                        "choices": [], "usage": reply.usage(seq)}))
            if finish:
                events.append(_sse("[DONE]"))
            yield "".join(events)
            if finish:
                return
    finally:
        if seq.finish is None:  # the client left (or the server is stopping): free the slot
            decoding.cancel(seq)


def _page(guppy: Guppy, model_id: str) -> str:
    """The chat page, told the model's name and default temperature."""
    html = resources.files("guppylm").joinpath("static/index.html").read_text(encoding="utf-8")
    return chat_page(html, {"model": model_id, "name": guppy.name,
                            "temperature": guppy.sampling.temperature})


# ----------------------------------------------------------------------------- `guppy serve`

def serve(run: str | Path = "runs/guppy", host: str = "127.0.0.1", port: int = 8000, *,
          max_batch: int = 32, max_waiting: int = 64, threads: int | None = 1) -> None:
    """Load the model of `run` once and serve it on http://host:port/ until Ctrl+C.

    threads: torch's threads for decoding. 1 is fastest for Guppy's sizes: a step is too
    small to share out, and the other cores serve HTTP. None keeps torch's default.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    run = Path(run)
    guppy = Guppy.load(run)
    app = create_app(guppy, run.resolve().name, max_batch=max_batch, max_waiting=max_waiting)
    sock = _listen(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"{guppy.name} is listening: open http://{shown}:{sock.getsockname()[1]}/ in a "
          f"browser, or point an OpenAI client at http://{shown}:{sock.getsockname()[1]}/v1 "
          "(Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    server.run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line GuppyError (port in use, unknown host)."""
    if not 0 <= port <= 65535:
        raise GuppyError(f"--port {port}: must be from 0 to 65535")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as e:
        raise GuppyError(f"{host}:{port}: cannot listen ({e.strerror or e}); choose another "
                         "--port or --host") from None
    return sock
