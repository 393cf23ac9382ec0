"""Structured outputs and tool calling with the real model, through the real HTTP server,
driven by the ``openai`` SDK and by LangChain as clients use them."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, SecretStr

from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenants
from tests.data_plane.engine_prompts import PROMPTS

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
PERSON_PROMPT = "Describe a person as JSON with their name, age and city."
WEATHER_PROMPT = "What is the weather like in Paris today?"


class Person(BaseModel):
    name: str
    age: int
    city: str


class Weather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


WEATHER_TOOL: Any = openai.pydantic_function_tool(
    Weather, name="get_weather", description="The current weather in a city."
)
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}


def test_a_pydantic_model_parses_with_the_sdk(node: Node, tenants: Tenants) -> None:
    reply = node.openai(tenants.alice).chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": PERSON_PROMPT}],
        response_format=Person,
        max_tokens=120,
        temperature=0,
    )
    message = reply.choices[0].message
    assert isinstance(message.parsed, Person)
    assert Person.model_validate_json(message.content) == message.parsed


def test_sampled_answers_follow_the_schema_too(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    for seed in (1, 2, 3):
        reply = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": PERSON_PROMPT}],
            response_format=Person,
            max_tokens=120,
            temperature=1.0,
            seed=seed,
        )
        assert isinstance(reply.choices[0].message.parsed, Person)


def test_json_object_answers_are_json_objects(node: Node, tenants: Tenants) -> None:
    reply = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List three fruits and their colours."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(
    node: Node, tenants: Tenants, method: Literal["json_schema", "function_calling"]
) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{node.api}/v1",
        api_key=SecretStr(tenants.alice.key),
        model=MODEL,
        temperature=0,
        max_completion_tokens=120,
        max_retries=0,
    )
    person = llm.with_structured_output(Person, method=method).invoke(PERSON_PROMPT)
    assert isinstance(person, Person)


def test_an_unsupported_schema_feature_is_refused_by_name(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A number."}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "n",
                    "schema": {
                        "type": "object",
                        "properties": {"n": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert "'minimum'" in error["message"]
    assert error["param"] == "response_format"
    assert error["code"] == "unsupported_schema"
    bad_tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "not": {}}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Call f."}],
            tools=[bad_tool],
            tool_choice="required",
        )
    assert "'not'" in caught.value.body["message"]  # type: ignore[index]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]


def _forced_weather_call(node: Node, tenants: Tenants) -> Any:
    return node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": WEATHER_PROMPT}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        temperature=0,
    )


def test_a_forced_tool_call_has_valid_arguments_and_its_result_goes_back(
    node: Node, tenants: Tenants
) -> None:
    reply = _forced_weather_call(node, tenants)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id
    Weather.model_validate_json(call.function.arguments)

    # The call and its result in the history: the model answers in text.
    answer = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": WEATHER_PROMPT},
            choice.message.model_dump(exclude_none=True),
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": json.dumps({"temperature": 18, "sky": "sunny"}),
            },
        ],
        tools=[WEATHER_TOOL, TIME_TOOL],
        max_tokens=60,
        temperature=0,
    )
    final = answer.choices[0]
    assert final.finish_reason in ("stop", "length", "tool_calls")
    if final.finish_reason != "tool_calls":
        assert final.message.content


def test_required_tool_calls_name_known_functions(node: Node, tenants: Tenants) -> None:
    reply = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
    )
    [call] = reply.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        Weather.model_validate(arguments)
    else:
        assert call.function.name == "get_time" and isinstance(arguments["zone"], str)


@pytest.mark.parametrize(
    "prompt", [WEATHER_PROMPT, "Write one sentence about the sea.", "Hello! Who are you?"]
)
def test_auto_tool_choice_answers_either_way(node: Node, tenants: Tenants, prompt: str) -> None:
    reply = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="auto",
        max_tokens=80,
        temperature=0,
    )
    choice = reply.choices[0]
    if choice.finish_reason == "tool_calls":
        for call in choice.message.tool_calls:
            assert call.function.name in ("get_weather", "get_time")
            assert isinstance(json.loads(call.function.arguments), dict)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert isinstance(choice.message.content, str)
        assert "<tool_call>" not in choice.message.content or choice.finish_reason == "length"


def test_streamed_tool_call_deltas_reassemble_in_the_sdk(node: Node, tenants: Tenants) -> None:
    with node.openai(tenants.alice).chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": WEATHER_PROMPT}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        temperature=0,
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in events
    [call] = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Weather)
    whole = _forced_weather_call(node, tenants).choices[0].message.tool_calls[0]
    assert call.function.arguments == whole.function.arguments


def test_a_constrained_session_beside_seven_others_writes_what_it_writes_alone(
    node: Node, tenants: Tenants
) -> None:
    client = node.openai(tenants.bob)

    def ask(i: int) -> str:
        kwargs: dict[str, Any] = {}
        prompt = PROMPTS[i]
        if i == 0:
            prompt = PERSON_PROMPT
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": Person.model_json_schema()},
            }
        reply = client.chat.completions.create(
            model=MODEL,
            max_tokens=48,
            temperature=0,
            messages=[{"role": "user", "content": prompt}],
            **kwargs,
        )
        return str(reply.choices[0].message.content)

    alone = [ask(i) for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, range(len(PROMPTS))))
    assert together == alone
    Person.model_validate_json(alone[0])


def test_a_session_holds_a_tool_call_as_a_resent_history_shows_it(
    node: Node, tenants: Tenants
) -> None:
    # One session gets the tool result alone, the other the whole history again (as
    # stateless clients send it): both hold the call the same way, so both prompts match.
    client = node.openai(tenants.alice)
    sessions = [_session(node, tenants.alice.key) for _ in range(2)]
    answers = []
    for resend, sid in zip((False, True), sessions, strict=True):
        headers = {"X-Sanctum-Session": sid}
        first = [{"role": "user", "content": WEATHER_PROMPT}]
        reply = client.chat.completions.create(
            model=MODEL,
            messages=first,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            max_tokens=80,
            temperature=0,
            extra_headers=headers,
        )
        message = reply.choices[0].message
        assert message.tool_calls, (reply.choices[0].finish_reason, message.content)
        result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18C"}
        history = [*first, message.model_dump(exclude_none=True), result] if resend else [result]
        answer = client.chat.completions.create(
            model=MODEL,
            messages=history,
            tools=[WEATHER_TOOL],
            max_tokens=24,
            temperature=0,
            extra_headers=headers,
        )
        answers.append((answer.usage.prompt_tokens, answer.choices[0].message.content))
    assert answers[0] == answers[1]


def _session(node: Node, key: str) -> str:
    r = httpx.post(
        f"{node.api}/v1/sessions",
        json={"model": MODEL, "ttl": 120},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
