"""Request and response bodies of the client API, in OpenAI's shapes.

Unknown OpenAI fields are accepted and ignored, as OpenAI-compatible servers do; fields
that would change the answer and that Sanctum does not implement (legacy ``functions``,
n > 1, logprobs) are refused with 400 rather than silently dropped.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from data_plane.sessions import Session


def _unicode(value: str) -> str:
    # JSON can carry lone surrogates ("\ud800") that no encoder takes; refused here,
    # once, rather than failing deep in the tokenizer.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
"""A string of a request: any Unicode text (every string of the client API is one)."""
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Text = Field(min_length=1, max_length=64)
    arguments: Text = Field(description="the arguments, as a JSON object in a string")


class ToolCall(BaseModel):
    """A call the assistant made, as it comes back in the history."""

    model_config = ConfigDict(extra="ignore")

    id: Text = Field(max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: Text | None = Field(default=None, max_length=200)  # tool: which call

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message holds tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the arguments (an object)"
    )
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Text = Field(min_length=1, max_length=64)
    description: Text | None = None
    schema_: dict[str, Any] | bool = Field(default=True, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (a value valid
    against the schema): the answer is constrained as it is decoded."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class _Sampling(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "smollm2-135m-instruct", "max_tokens": 64}]},
    )

    model: Text = Field(min_length=1, max_length=200)
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: Text | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str]:
        # How many and how long: the node's limits, checked by the inference service.
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def unsupported(self) -> str | None:
        """The first field set that Sanctum refuses to ignore, or None."""
        if self.n != 1:
            return "n"
        extra = self.model_extra or {}
        for name in ("tools", "functions", "tool_choice", "logprobs", "response_format"):
            if extra.get(name) not in (None, False, [], {"type": "text"}):
                return name
        return None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    sanctum: dict[str, Any] | None = Field(
        default=None, description="Sanctum options (retrieval), sent with extra_body"
    )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def content_chars(self) -> int:
        calls = sum(
            len(c.function.name) + len(c.function.arguments)
            for m in self.messages
            for c in m.tool_calls or ()
        )
        tools = sum(len(t.model_dump_json()) for t in self.tools or ())
        schema = self.response_format.model_dump_json() if self.response_format else ""
        return sum(len(m.text()) for m in self.messages) + calls + tools + len(schema)


class CompletionRequest(_Sampling):
    prompt: Text | list[Text]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("exactly one prompt per request")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens or 16  # OpenAI's default for completions


class SessionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "smollm2-135m-instruct", "ttl": 900}]},
    )

    model: Text = Field(min_length=1, max_length=200)
    ttl: int | None = Field(default=None, ge=1, description="idle seconds before it expires")


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` in OpenAI's shape."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "all-MiniLM-L6-v2", "input": ["some text"]}]},
    )

    model: Text = Field(min_length=1, max_length=200)
    input: Text | list[Text] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: Text | None = None

    def texts(self) -> list[str] | None:
        """The inputs as texts, or None when they are token arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, str) for x in self.input):
            return [str(x) for x in self.input]
        return None if self.input else []


class SessionDocumentCreate(BaseModel):
    """A document for one session's retrieval, held in RAM until the session ends: its
    ``text``, or a file as ``content`` (base64; PDF, HTML, Markdown or plain text, the
    type taken from the extension of ``name``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "notes.md", "text": "The meeting is at 10."},
                {"name": "report.pdf", "content": "JVBERi0xLjQK..."},
            ]
        },
    )

    name: Text = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    text: Text | None = None
    content: bytes | None = Field(default=None, description="the file, base64-encoded")

    @field_validator("content", mode="before")
    @classmethod
    def _base64(cls, value: object) -> object:
        if not isinstance(value, str):
            return value  # None, or something the bytes type refuses
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError("content is not valid base64") from None

    @model_validator(mode="after")
    def _text_or_file(self) -> SessionDocumentCreate:
        if (self.text is None) == (self.content is None):
            raise ValueError("send either text or content (a file), not both")
        return self


class SessionInfo(BaseModel):
    id: str
    object: Literal["session"] = "session"
    model: str
    ttl: int
    created: int
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, session: Session) -> SessionInfo:
        return cls(
            id=session.id,
            model=session.model.name,
            ttl=int(session.ttl_seconds),
            created=int(session.started_at.timestamp()),
            requests=session.requests,
            prompt_tokens=session.prompt_tokens,
            completion_tokens=session.completion_tokens,
        )


class Receipt(BaseModel):
    """A session's node-signed usage record, as the client can fetch it again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "session.receipt",
                    "session_id": "sess_0123456789abcdef0123456789abcdef",
                    "record_id": "2f1c8a9e-6d3b-4c1e-9a7f-0b5e4d3c2a10",
                    "usage_record": "eyJhbGciOiJFZERTQSIs...",
                }
            ]
        }
    )

    object: Literal["session.receipt"] = "session.receipt"
    session_id: str
    record_id: str
    usage_record: str = Field(description="compact JWS signed by the node's Ed25519 key")
