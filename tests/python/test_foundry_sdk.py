"""The official OpenAI Python SDK against a company on the `foundry` runtime: SOPHIA runs its
agent in the (simulated) Foundry project; the client sees the same OpenAI surface."""

import os

from openai import OpenAI

BASE = os.environ["SOPHIA_BASE_URL"]
TOKEN = os.environ["SOPHIA_FOUNDRY_TOKEN"]
QUESTION = "When does support answer?"


def client() -> OpenAI:
    return OpenAI(base_url=f"{BASE}/v1", api_key=TOKEN, max_retries=0)


def test_chat_completions_run_the_agent_over_its_vector_store():
    done = client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": QUESTION}]
    )
    assert "four hours" in done.choices[0].message.content
    assert done.usage.total_tokens > 0
    streamed = client().chat.completions.create(
        model="gpt-4o",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": QUESTION}],
    )
    text, usage = "", None
    for chunk in streamed:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert "four hours" in text
    assert usage is not None and usage.total_tokens > 0


def test_responses_are_cited_stored_and_continued():
    first = client().responses.create(model="gpt-4o", input=QUESTION)
    assert "four hours" in first.output_text
    message = next(item for item in first.output if item.type == "message")
    annotations = message.content[0].annotations
    assert annotations and annotations[0].filename == "support.md"
    again = client().responses.retrieve(first.id)
    assert again.output_text == first.output_text
    follow = client().responses.create(
        model="gpt-4o", input="And on weekends?", previous_response_id=first.id
    )
    assert follow.previous_response_id == first.id
    stream = client().responses.create(model="gpt-4o", input=QUESTION, stream=True)
    kinds, text = [], ""
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "four hours" in text
