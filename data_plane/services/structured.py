"""Structured output and tool calling for chat: what the model is shown, how its answer is
constrained, and how tool calls are read back out of it.

**Tool format.** Sanctum shows tools to the model in one documented, generic format, for
every model: a system text listing the functions (their JSON Schemas, one per line between
``<tools>`` and ``</tools>``) and asking for calls as blocks of

    <tool_call>
    {"name": "<function>", "arguments": {...}}
    </tool_call>

An assistant turn with ``tool_calls`` in the history is shown in that same form (its
text, then one block per call), and a ``role: "tool"`` message as a user turn holding
``<tool_response>...</tool_response>`` (consecutive results in one turn). All of it is
message content, so it is tokenized as text: a tool's schema, an argument or a result
can't inject the chat template's control tokens. (Models' own tool templates render
tools as markup, outside that protection; and the bundled SmolLM2 has none.)

**Constraint.** ``tool_choice: "required"`` or a named function constrains the answer to
call blocks whose arguments match the function's parameters (one block, or one or more
when ``parallel_tool_calls`` is not false): they always parse. ``auto`` leaves the model
free: the answer is read as calls if it holds well-formed blocks naming known functions,
and as text otherwise, never an error. ``none`` shows no tools. ``response_format``
``json_object`` or ``json_schema`` constrains the text to JSON (its schema, strict or
not: constrained decoding always holds the answer to it).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data_plane.engine.base import Constraint, UnsupportedSchema
from data_plane.engine.structured import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    json_object_constraint,
    json_schema_constraint,
    tool_call_constraint,
)
from data_plane.errors import BadRequest
from data_plane.protocol import ChatCompletionRequest, ChatMessage

Messages = list[dict[str, str]]

_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """The tools of one request, as the model sees them and the answer is read."""

    functions: tuple[tuple[str, str | None, dict[str, Any]], ...]  # name, description, schema
    choice: str  # "auto", "required" or the name of the function that must be called
    parallel: bool

    @property
    def forced(self) -> bool:
        return self.choice != "auto"

    def names(self) -> set[str]:
        return {name for name, _, _ in self.functions}

    def constraint(self) -> Constraint | None:
        if not self.forced:
            return None
        chosen = [
            (name, params)
            for name, _, params in self.functions
            if self.choice == "required" or name == self.choice
        ]
        # A named function is called once, as OpenAI does.
        return tool_call_constraint(chosen, parallel=self.parallel and self.choice == "required")

    def system_text(self) -> str:
        lines = [
            json.dumps(
                {"name": name, "description": description or "", "parameters": params},
                ensure_ascii=False,
            )
            for name, description, params in self.functions
        ]
        if self.choice == "auto":
            ask = "If a function helps, call it; otherwise answer in text."
        elif self.choice == "required":
            ask = "You must call one or more of these functions."
        else:
            ask = f"You must call the function {self.choice}."
        return (
            "You can call functions. Their descriptions and JSON Schemas of their "
            "arguments:\n<tools>\n" + "\n".join(lines) + "\n</tools>\n"
            "To call a function, answer with a block:\n"
            f'{TOOL_CALL_OPEN}{{"name": "<function name>", "arguments": {{...}}}}'
            f"{TOOL_CALL_CLOSE}\n" + ask
        )


def tool_plan(req: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tools, or None when the model is shown none (no tools, or
    ``tool_choice: "none"``); a BadRequest for choices that can't be met."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    functions = tuple(
        (t.function.name, t.function.description, t.function.parameters or _NO_PARAMETERS)
        for t in req.tools
    )
    names = [name for name, _, _ in functions]
    if len(set(names)) != len(names):
        raise BadRequest("two tools have the same function name", param="tools")
    picked: str
    if choice is None or isinstance(choice, str):
        picked = choice or "auto"
    else:
        picked = choice.function.name
        if picked not in names:
            raise BadRequest(
                "tool_choice names a function that is not in tools", param="tool_choice"
            )
    return ToolPlan(functions, picked, req.parallel_tool_calls is not False)


def constraint_for(req: ChatCompletionRequest, plan: ToolPlan | None) -> Constraint | None:
    """The grammar of the request's answer, or None when it is free. Blocking (a schema
    is converted): run off the event loop. BadRequest names what can't be enforced."""
    fmt = req.response_format
    wants_json = fmt is not None and fmt.type != "text"
    if plan is not None and wants_json and not plan.forced:
        raise BadRequest(
            "response_format json_object or json_schema with tools needs tool_choice "
            '"none", "required" or a named function',
            param="tool_choice",
        )
    try:
        if plan is not None and plan.forced:
            return plan.constraint()
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return json_object_constraint()
        assert fmt.json_schema is not None
        return json_schema_constraint(fmt.json_schema.schema_)
    except UnsupportedSchema as exc:
        raise BadRequest(
            str(exc),
            param="tools" if plan is not None else "response_format",
            code="unsupported_schema",
        ) from None


def with_tools(messages: Messages, plan: ToolPlan | None) -> Messages:
    """The messages the model sees this turn: the tools' system text first (in the
    first system message, or one of its own). The transcript keeps the messages as sent."""
    if plan is None:
        return messages
    text = plan.system_text()
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def render_call(name: str, arguments: str) -> str:
    """One call block, as the model writes it (and as it is shown in the history)."""
    return (
        f'{TOOL_CALL_OPEN}{{"name": {json.dumps(name)}, "arguments": {arguments}}}{TOOL_CALL_CLOSE}'
    )


def render_reply(content: str, calls: Sequence[tuple[str, str]]) -> str:
    """An assistant turn with its calls, in the transcript's form."""
    blocks = "\n".join(render_call(name, args) for name, args in calls)
    return f"{content}\n{blocks}" if content and blocks else content or blocks


def chat_messages(messages: Sequence[ChatMessage]) -> Messages:
    """The chat as role and content pairs for the chat template: assistant calls and
    tool results in the generic format (see the module docstring)."""
    out: Messages = []
    for m in messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.text()}\n</tool_response>"
            if out and out[-1].get("tool") == "1":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool": "1"})
            continue
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for call in m.tool_calls:
                try:
                    json.loads(call.function.arguments)
                except ValueError:
                    raise BadRequest(
                        "a tool call's arguments must be JSON", param="messages"
                    ) from None
                calls.append((call.function.name, call.function.arguments))
            out.append({"role": "assistant", "content": render_reply(m.text(), calls)})
            continue
        out.append({"role": m.role, "content": m.text()})
    for message in out:
        message.pop("tool", None)
    return out


@dataclass
class ToolCallReader:
    """Reads an answer as it streams: text that can't be part of a call block is given
    out at once; from the first ``<tool_call>`` on, it is held until the end, then read
    as calls (or, if it isn't well-formed calls of known functions, given out as text)."""

    names: set[str]
    _held: str = ""
    _in_call: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, text: str) -> str:
        if self._in_call:
            self._held += text
            return ""
        buf = self._held + text
        at = buf.find(TOOL_CALL_OPEN)
        if at >= 0:
            self._in_call, self._held = True, buf[at:]
            return buf[:at].rstrip("\n") if at else ""
        # Hold back a tail that may be the start of an opening tag.
        keep = next(
            (
                n
                for n in range(min(len(buf), len(TOOL_CALL_OPEN) - 1), 0, -1)
                if TOOL_CALL_OPEN.startswith(buf[-n:])
            ),
            0,
        )
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """The text still held (empty when it was read as calls, filling ``calls``)."""
        held, self._held = self._held, ""
        if not self._in_call:
            return held
        calls = _parse_calls(held, self.names)
        if calls is None:
            return held
        self.calls = [
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            for name, args in calls
        ]
        return ""


def _parse_calls(text: str, names: set[str]) -> list[tuple[str, str]] | None:
    """The (name, arguments JSON) of every call block in ``text``, or None unless the
    whole of it is call blocks of known functions with object arguments."""
    calls: list[tuple[str, str]] = []
    rest = text.strip()
    decoder = json.JSONDecoder()
    while rest:
        if not rest.startswith(TOOL_CALL_OPEN.strip()):
            # Cut off inside the next block's opening tag, after whole calls.
            return calls if calls and TOOL_CALL_OPEN.startswith(rest) else None
        body = rest[len(TOOL_CALL_OPEN.strip()) :].lstrip()
        try:
            call, end = decoder.raw_decode(body)
        except ValueError:
            # A last block cut off (by max_tokens) after whole ones: those are the calls.
            return calls or None
        tail = body[end:].lstrip()
        if not tail.startswith(TOOL_CALL_CLOSE.strip()):
            return calls if calls and not tail else None
        rest = tail[len(TOOL_CALL_CLOSE.strip()) :].strip()
        if not isinstance(call, dict) or call.get("name") not in names:
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append((call["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None
