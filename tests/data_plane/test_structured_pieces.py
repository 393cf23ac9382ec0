"""The pieces of structured output around the engine, without the model: which schemas
are refused and why, the tool format shown to the model, and reading calls back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from data_plane.engine.base import UnsupportedSchema
from data_plane.engine.structured import json_schema_constraint, tool_call_constraint
from data_plane.errors import BadRequest
from data_plane.protocol import ChatMessage
from data_plane.services.structured import ToolCallReader, chat_messages, render_reply


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    tags: list[str] = []
    home: Address | None = None


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "format"),
        ({"type": "string", "pattern": "abc"}, "pattern"),
        ({"type": "string", "maxLength": 100_000}, "maxLength"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
    ],
)
def test_what_a_grammar_cant_enforce_is_refused_by_keyword(
    schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        json_schema_constraint(schema)
    assert caught.value.keyword == keyword
    assert repr(keyword) in str(caught.value)


def test_refusals_never_quote_the_schemas_values() -> None:
    secret = "Client Secret Enum Value"
    with pytest.raises(UnsupportedSchema) as caught:
        json_schema_constraint({"enum": [secret], "maximum": 3})
    assert secret not in str(caught.value)


def test_pydantic_schemas_convert_with_their_references() -> None:
    gbnf = json_schema_constraint(Person.model_json_schema()).gbnf
    assert '\\"street\\"' in gbnf and '\\"tags\\"' in gbnf


def test_a_list_of_types_keeps_the_rest_of_the_schema() -> None:
    schema = {"type": ["object", "null"], "properties": {"zip": {"type": "string"}}}
    assert '\\"zip\\"' in json_schema_constraint(schema).gbnf


def test_tool_grammars_call_only_the_given_functions() -> None:
    gbnf = tool_call_constraint([("get_weather", {"type": "object", "properties": {}})]).gbnf
    assert '\\"get_weather\\"' in gbnf and "<tool_call>" in gbnf


def _read(chunks: list[str], names: set[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    reader = ToolCallReader(names or {"get_weather"})
    text = "".join(reader.feed(c) for c in chunks) + reader.finish()
    return text, reader.calls


def test_text_without_calls_passes_through() -> None:
    assert _read(["Hello", " <tool", "s are fun>"]) == ("Hello <tools are fun>", [])


def test_calls_are_read_even_when_the_tag_is_split_across_chunks() -> None:
    text, calls = _read(
        [
            "Let me check.\n<tool",
            '_call>\n{"name": "get_weather", "arguments": {"city": "Pa',
            'ris"}}\n</tool_call>',
        ]
    )
    assert text == "Let me check.\n"
    [call] = calls
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["type"] == "function" and call["id"].startswith("call_")


@pytest.mark.parametrize(
    "body",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',  # cut off
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',  # unknown
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # not an object
    ],
)
def test_malformed_calls_come_back_as_text(body: str) -> None:
    assert _read(["ok ", body]) == ("ok " + body, [])


def test_whole_calls_before_a_cut_off_one_are_read() -> None:
    whole = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    for cut in ('\n<tool_call>\n{"name": "get_weath', "\n<tool_ca"):
        text, calls = _read([whole, cut])
        assert text == "" and len(calls) == 1


def test_history_shows_calls_and_results_in_the_tool_format() -> None:
    args = '{"city": "Paris"}'
    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "w", "arguments": args}},
                    {"id": "b", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                ],
            }
        ),
        ChatMessage(role="tool", tool_call_id="a", content="18C"),
        ChatMessage(role="tool", tool_call_id="b", content="20C"),
    ]
    out = chat_messages(messages)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert out[1]["content"] == render_reply("", [("w", args), ("w", "{}")])
    assert json.loads(out[1]["content"].split("\n")[1]) == {
        "name": "w",
        "arguments": {"city": "Paris"},
    }
    assert out[2]["content"] == (
        "<tool_response>\n18C\n</tool_response>\n<tool_response>\n20C\n</tool_response>"
    )


def test_a_call_with_arguments_that_are_not_json_is_refused() -> None:
    bad = ChatMessage.model_validate(
        {
            "role": "assistant",
            "tool_calls": [{"id": "a", "function": {"name": "w", "arguments": "{oops"}}],
        }
    )
    with pytest.raises(BadRequest) as caught:
        chat_messages([bad])
    assert "oops" not in caught.value.message
