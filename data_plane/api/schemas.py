"""Request and response bodies of the client API, in OpenAI's shapes.

Unknown OpenAI fields are accepted and ignored, as OpenAI-compatible servers do; fields
that would change the answer and that Sanctum does not implement (tools, n > 1,
logprobs) are refused with 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_plane.sessions import Session

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "smollm2-135m-instruct", "max_tokens": 64}]},
    )

    model: str = Field(min_length=1, max_length=200)
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
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
    sanctum: dict[str, Any] | None = Field(
        default=None, description="Sanctum options (retrieval), sent with extra_body"
    )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
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

    model: str = Field(min_length=1, max_length=200)
    ttl: int | None = Field(default=None, ge=1, description="idle seconds before it expires")


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
