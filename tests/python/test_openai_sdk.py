"""The official OpenAI Python SDK against SOPHIA's /v1 routes (chat completions, models, embeddings).

Run by scripts/sdk-test.sh, which starts the simulator and SOPHIA, creates a company whose
model is the simulator, seeds nothing, and passes SOPHIA_BASE_URL and SOPHIA_TOKEN.
"""

import os

import openai
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
