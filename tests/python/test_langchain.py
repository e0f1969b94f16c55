"""LangChain (`langchain-openai`'s ChatOpenAI) against SOPHIA's /v1 routes: whole, streamed,
and with tools bound. Run by scripts/sdk-test.sh (SOPHIA_BASE_URL, SOPHIA_TOKEN)."""

import os

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


def chat(**kw):
    return ChatOpenAI(
        model="gpt-4o",
        base_url=f"{os.environ['SOPHIA_BASE_URL']}/v1",
        api_key=os.environ["SOPHIA_TOKEN"],
        max_retries=0,
        timeout=30,
        **kw,
    )


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"18 C in {city}"


def test_invoke():
    answer = chat().invoke(
        [SystemMessage("Context: The warranty lasts two years."), HumanMessage("How long does the warranty last?")]
    )
    assert "two years" in answer.content
    assert answer.usage_metadata["total_tokens"] > 0


def test_stream():
    pieces = list(chat(stream_usage=True).stream("Say hello to Ada"))
    assert len(pieces) > 1
    text = "".join(p.content for p in pieces)
    assert "Ada" in text
    assert any(p.usage_metadata for p in pieces)


def test_bind_tools_round_trip():
    model = chat().bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    first = model.invoke([question])
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    assert first.tool_calls[0]["args"] == {"city": "Paris"}
    output = get_weather.invoke(first.tool_calls[0]["args"])
    second = model.invoke([question, first, ToolMessage(output, tool_call_id=first.tool_calls[0]["id"])])
    assert second.content == "According to get_weather: 18 C in Paris"


def test_streamed_tool_calls():
    model = chat().bind_tools([get_weather], tool_choice="get_weather")
    gathered = None
    for piece in model.stream("Weather in Lima?"):
        gathered = piece if gathered is None else gathered + piece
    assert gathered.tool_calls[0]["name"] == "get_weather"
    assert gathered.tool_calls[0]["args"] == {"city": "Lima"}


def test_responses_api_with_tools():
    # ChatOpenAI on the Responses API (`use_responses_api=True`): the same answers and tools.
    model = chat(use_responses_api=True)
    answer = model.invoke([SystemMessage("Context: Returns are free."), HumanMessage("Are returns free?")])
    assert "free" in answer.text
    bound = model.bind_tools([get_weather])
    first = bound.invoke("What is the weather in Paris?")
    assert first.tool_calls and first.tool_calls[0]["args"] == {"city": "Paris"}
