"""The client API's protocol: request and response bodies, in OpenAI's shapes.

They belong to the API, not to its HTTP layer: routes parse and answer with them, and
services take them, without either importing the other's module (vLLM keeps its
``protocol.py`` beside its ``serving_*.py`` the same way).

A field that changes the answer is honoured or refused, never dropped: the sampling
fields of OpenAI and of llama-server that Sanctum implements are declared below; those
it does not (``REFUSED``) get a 400 naming them when set to anything but their neutral
value. Other unknown fields are accepted and ignored, as OpenAI-compatible servers do
(docs/api.md lists every field and what happens to it).
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
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
# Entries of a logit_bias map (OpenAI's are keyed by token id, as strings in JSON).
MAX_LOGIT_BIAS = 1024

# Fields that change the answer and that Sanctum does not implement, with the values
# that leave the answer as it is (a request may send those). Any other value: 400.
REFUSED: dict[str, tuple[Any, ...]] = {
    # OpenAI: tools and structured output. Chat declares them (and honours them), so
    # these entries only refuse them where they have no meaning: on /v1/completions.
    # Legacy ``functions`` is refused everywhere: ``tools`` replaced it.
    "tools": (None, []),
    "functions": (None, []),
    "function_call": (None, "none"),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
    # OpenAI: features with no meaning for this model or this server.
    "best_of": (None, 1),
    "suffix": (None, ""),
    "prediction": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    # llama-server: samplers Sanctum does not chain (their tuning fields, such as
    # mirostat_tau or dry_base, change nothing without them and are ignored).
    "mirostat": (None, 0),
    "dynatemp_range": (None, 0, 0.0),
    "xtc_probability": (None, 0, 0.0),
    "dry_multiplier": (None, 0, 0.0),
    "top_n_sigma": (None, -1, -1.0),
    "tfs_z": (None, 1, 1.0),
    "min_keep": (None, 0),
    "samplers": (None,),
    "grammar": (None, ""),
    "json_schema": (None, {}),
    "ignore_eos": (None, False),
    "n_predict": (None, -1),
    "n_probs": (None, 0),
    "post_sampling_probs": (None, False),
    "t_max_predict_ms": (None, 0),
}


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
    # llama-server's samplers (0 or 1: off, as there)
    top_k: int = Field(default=0, ge=0, le=1_000_000)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    typical_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    repeat_last_n: int = Field(default=64, ge=-1, le=1_000_000)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    # Values are checked below, not by the type: a per-entry error would name its key,
    # and the key is a string the client sent (errors never repeat those).
    logit_bias: dict[str, Any] | None = None
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

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, Any] | None) -> dict[str, float] | None:
        # Whether each id is in the model's vocabulary: the inference service (it knows
        # the model).
        if bias is None:
            return None
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        checked = {}
        for key, value in bias.items():
            if not key.strip().isdigit():
                raise ValueError("keys must be token ids (whole numbers from 0)")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("values must be numbers")
            if not -100.0 <= value <= 100.0:
                raise ValueError("values must be from -100 to 100")
            checked[key] = float(value)
        return checked

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), v) for k, v in (self.logit_bias or {}).items())

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k likeliest at each step."""
        return None

    def unsupported(self) -> str | None:
        """The first field set that Sanctum refuses to ignore, or None."""
        if self.n != 1:
            return "n"
        extra = self.model_extra or {}
        for name, neutral in REFUSED.items():
            if name in extra and not any(_same(extra[name], v) for v in neutral):
                return name
        return None


def _same(sent: Any, neutral: Any) -> bool:
    # 0 == False in Python, and 1 == True: the neutral value must have the same type too.
    return type(sent) is type(neutral) and bool(sent == neutral)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    sanctum: dict[str, Any] | None = Field(
        default=None, description="Sanctum options (retrieval), sent with extra_body"
    )

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

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
    logprobs: TopLogprobs | None = None  # the legacy field: how many alternatives

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

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

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs: texts, or token arrays of the embedding model's own tokenizer."""
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            return []
        if all(isinstance(x, str) for x in self.input):
            return [str(x) for x in self.input]
        if all(isinstance(x, int) for x in self.input):
            return [[x for x in self.input if isinstance(x, int)]]  # one array of token ids
        return [list(x) for x in self.input if isinstance(x, list)]


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
