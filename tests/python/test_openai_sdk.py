"""The official OpenAI Python SDK against SOPHIA's /v1 routes (chat completions with tools and
structured output, the Responses API, models, embeddings).

Run by scripts/sdk-test.sh, which starts the simulator and SOPHIA, creates a company whose
model is the simulator, seeds nothing, and passes SOPHIA_BASE_URL and SOPHIA_TOKEN.
"""

import json
import os

import openai
import pydantic
import pytest

BASE = os.environ["SOPHIA_BASE_URL"]
TOKEN = os.environ["SOPHIA_TOKEN"]


def client(token=TOKEN):
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=token, max_retries=0, timeout=30)


def test_non_streaming_completion():
    result = client().chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Context: The warranty lasts two years."},
            {"role": "user", "content": "How long does the warranty last?"},
        ],
    )
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert "two years" in result.choices[0].message.content
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens > 0


def test_streaming_completion_with_usage():
    stream = client().chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Context: Support is open on Saturdays."},
            {"role": "user", "content": "Is support open on Saturdays?"},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    finish = None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "Saturdays" in text
    assert finish == "stop"
    assert usage is not None and usage.total_tokens > 0


def test_bad_token_is_an_authentication_error():
    with pytest.raises(openai.AuthenticationError) as err:
        client("not-a-token").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 401


def test_invalid_request_is_a_bad_request_error():
    with pytest.raises(openai.BadRequestError) as err:
        client().chat.completions.create(model="gpt-4o", messages=[])
    assert err.value.status_code == 400


def test_models_list_the_instances_models():
    models = client().models.list()
    ids = [m.id for m in models.data]
    assert ids == ["gpt-4o", "text-embedding-3-small"]
    assert all(m.object == "model" and m.owned_by == "acme" for m in models.data)


def test_embeddings_default_and_float():
    # The SDK asks for base64 unless told otherwise, and decodes it.
    one = client().embeddings.create(model="text-embedding-3-small", input="refund window")
    assert one.object == "list" and len(one.data) == 1
    vector = one.data[0].embedding
    assert len(vector) > 0 and all(isinstance(x, float) for x in vector)
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
    many = client().embeddings.create(
        model="text-embedding-3-small", input=["refund window", "shipping"], encoding_format="float"
    )
    assert [d.index for d in many.data] == [0, 1]
    assert all(abs(a - b) < 1e-6 for a, b in zip(many.data[0].embedding, vector))


def test_embeddings_of_token_ids():
    # What LangChain's OpenAIEmbeddings sends by default.
    result = client().embeddings.create(model="text-embedding-3-small", input=[[9906, 1917], [15339]])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) > 0 for d in result.data)


def test_embeddings_bad_input_is_a_bad_request_error():
    with pytest.raises(openai.BadRequestError) as err:
        client().embeddings.create(model="text-embedding-3-small", input=[])
    assert err.value.status_code == 400


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_chat_tool_round_trip():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client().chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"})
    second = client().chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "According to get_weather: 18 C and sunny"


def test_chat_tool_calls_streamed():
    stream = client().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Weather in Lima?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        if chunk.choices:
            for call in chunk.choices[0].delta.tool_calls or []:
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Lima"}
    assert finish == "tool_calls"


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def test_chat_structured_output_parses():
    result = client().chat.completions.parse(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        response_format=Weather,
    )
    parsed = result.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.city == "Rome"


REFUSAL = "I'm sorry, but I can't help with that request."


def test_chat_refusal_whole_and_streamed():
    # The simulator refuses a question with "forbidden" in it, as a model refuses a schema.
    asked = [{"role": "user", "content": "The forbidden weather, please"}]
    result = client().chat.completions.parse(model="gpt-4o", messages=asked, response_format=Weather)
    message = result.choices[0].message
    assert message.refusal == REFUSAL and message.parsed is None and message.content is None
    kinds, verdicts = [], []
    with client().chat.completions.stream(model="gpt-4o", messages=asked, response_format=Weather) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "chunk":
                verdicts += [c.model_extra.get("content_filter_results") for c in event.chunk.choices]
                verdicts.append((event.chunk.model_extra or {}).get("prompt_filter_results"))
        final = stream.get_final_completion()
    assert "refusal.delta" in kinds and "refusal.done" in kinds
    assert final.choices[0].message.refusal == REFUSAL
    # Azure's verdicts reach the SDK (in its extra fields), the prompt's and the answer's.
    assert any(isinstance(v, list) and v[0]["content_filter_results"]["hate"]["filtered"] is False for v in verdicts)
    assert any(isinstance(v, dict) and v["violence"]["severity"] == "safe" for v in verdicts)


def test_responses_refusal_streamed_and_retrieved():
    kinds = []
    with client().responses.stream(model="gpt-4o", input="Something forbidden") as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_response()
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
    part = final.output[0].content[0]
    assert part.type == "refusal" and part.refusal == REFUSAL
    got = client().responses.retrieve(final.id)
    assert got.output[0].content[0].refusal == REFUSAL


def test_responses_create_retrieve_and_continue():
    first = client().responses.create(
        model="gpt-4o",
        instructions="Be brief.",
        input="Context check: what did I ask?",
    )
    assert first.status == "completed"
    assert first.output_text
    got = client().responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    second = client().responses.create(model="gpt-4o", input="And now?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage.total_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client().responses.retrieve("resp_" + "0" * 64)


def test_responses_streamed():
    text, kinds, final = "", [], None
    with client().responses.stream(model="gpt-4o", input="Say hello") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == text and text


def test_responses_function_tool_round_trip():
    tools = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    first = client().responses.create(model="gpt-4o", input="What is the weather in Oslo?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    second = client().responses.create(
        model="gpt-4o",
        previous_response_id=first.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "-3 C, snow"}],
    )
    assert second.output_text == "According to get_weather: -3 C, snow"


def test_responses_structured_output_parses():
    result = client().responses.parse(model="gpt-4o", input="Weather in Cairo?", text_format=Weather)
    assert isinstance(result.output_parsed, Weather) and result.output_parsed.city == "Cairo"


def test_models_retrieve():
    assert client().models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client().models.retrieve("someone-elses-model")
