"""OpenAI's request and response shapes, as far as the server speaks them: the bodies of ``/v1/completions`` and
``/v1/chat/completions`` (checked by pydantic: a bad field is one 400 naming it), their responses and streamed
chunks, and the error body."""

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ApiError(Exception):
    """An HTTP error with OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Body(BaseModel):
    """A request body. Fields it does not know are ignored: clients send those of newer API versions."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def parse(cls, raw: bytes):
        try:
            json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply") from None
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            message = first["msg"].removeprefix("Value error, ")
            raise ApiError(400, f"{where}: {message}" if where != "body" else message, param=where) from None


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """What the two generation endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's range; below 0.001 it is greedy (GREEDY_BELOW)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's, but vLLM's and llama.cpp's
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=1 << 63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI's options that this server does not have: refused when asked for, rather than silently ignored
    echo: bool = False
    logprobs: int | bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    logit_bias: dict | None = None
    presence_penalty: float = 0
    frequency_penalty: float = 0

    @model_validator(mode="after")
    def no_unsupported_options(self):
        asked = [name for name, unset in (("echo", False), ("logprobs", None), ("best_of", None), ("suffix", None),
                                          ("logit_bias", None), ("presence_penalty", 0), ("frequency_penalty", 0))
                 if getattr(self, name) not in (unset, {}) and not (name == "best_of" and self.best_of == 1)]
        if asked:
            raise ValueError(f"{asked[0]} is not supported by this server; leave it out")
        return self

    @field_validator("stop")
    @classmethod
    def stop_texts(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or not all(stops):
            raise ValueError("at most 4 stop texts, none empty")
        return stops

    @property
    def stops(self) -> list[str]:
        return self.stop or []

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def some_prompt(cls, prompt):
        if not prompt and isinstance(prompt, list):
            raise ValueError("an empty list; give a text, or a list of texts")
        return prompt

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class TextPart(Body):
    type: Literal["text"]
    text: str


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatBody(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)  # the newer name of max_tokens


class FillMaskBody(Body):
    model: str | None = None
    prompt: str
    top_k: int = Field(5, ge=1, le=100)


class ScoreBody(Body):
    model: str | None = None
    prompt: str | list[str]
    completion: str | list[str]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """The response, or the chunks of a streamed response, of one request: ``chat`` or text completion."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id, self.created = new_id("chatcmpl" if chat else "cmpl"), int(time.time())

    def head(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, finish_reason: str | None) -> dict:
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def whole(self, texts: list[str], reasons: list[str], counts: tuple[int, int]) -> dict:
        choices = [self.choice(i, text, reason) for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {**self.head(False), "choices": choices, "usage": usage(*counts)}

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None, first: bool = False) -> str:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return event({**self.head(True), "choices": [choice]})

    def usage_chunk(self, counts: tuple[int, int]) -> str:
        return event({**self.head(True), "choices": [], "usage": usage(*counts)})


def event(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
