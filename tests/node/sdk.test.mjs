// The official OpenAI Node SDK (npm `openai`) against SOPHIA's /v1 routes (chat, tools, the
// Responses API, models, embeddings). Run by
// scripts/sdk-test.sh, which starts the simulator and SOPHIA, creates a company and passes
// SOPHIA_BASE_URL and SOPHIA_TOKEN.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const client = (apiKey = process.env.SOPHIA_TOKEN) =>
  new OpenAI({ baseURL: `${process.env.SOPHIA_BASE_URL}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });

test("chat completion, whole", async () => {
  const result = await client().chat.completions.create({
    model: "gpt-4o",
    messages: [
      { role: "system", content: "Context: The warranty lasts two years." },
      { role: "user", content: "How long does the warranty last?" },
    ],
  });
  assert.equal(result.object, "chat.completion");
  assert.match(result.choices[0].message.content, /two years/);
  assert.ok(result.usage.total_tokens > 0);
});

test("chat completion, streamed with usage", async () => {
  const stream = await client().chat.completions.create({
    model: "gpt-4o",
    messages: [
      { role: "system", content: "Context: Support is open on Saturdays." },
      { role: "user", content: "Is support open on Saturdays?" },
    ],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.match(text, /Saturdays/);
  assert.equal(finish, "stop");
  assert.ok(usage && usage.total_tokens > 0);
});

test("models and embeddings", async () => {
  const models = [];
  for await (const model of client().models.list()) models.push(model.id);
  assert.deepEqual(models, ["gpt-4o", "text-embedding-3-small"]);
  const result = await client().embeddings.create({ model: "text-embedding-3-small", input: ["refund window", "shipping"] });
  assert.deepEqual(result.data.map((d) => d.index), [0, 1]);
  assert.ok(result.data.every((d) => d.embedding.length > 0 && typeof d.embedding[0] === "number"));
  assert.ok(result.usage.prompt_tokens > 0);
});

test("errors are the SDK's typed errors", async () => {
  await assert.rejects(
    client("not-a-token").chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401,
  );
  await assert.rejects(
    client().embeddings.create({ model: "text-embedding-3-small", input: [] }),
    (err) => err instanceof OpenAI.BadRequestError && err.status === 400,
  );
});

test("responses.create, whole and streamed", async () => {
  const first = await client().responses.create({ model: "gpt-4o", input: "Say hello to Grace" });
  assert.equal(first.status, "completed");
  assert.match(first.output_text, /Grace/);
  const got = await client().responses.retrieve(first.id);
  assert.equal(got.output_text, first.output_text);
  const stream = await client().responses.create({
    model: "gpt-4o",
    input: "And to Linus?",
    previous_response_id: first.id,
    stream: true,
  });
  let text = "";
  let last = null;
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") text += event.delta;
    last = event;
  }
  assert.equal(last.type, "response.completed");
  assert.equal(last.response.output_text ?? last.response.output[0].content[0].text, text);
  assert.equal(last.response.previous_response_id, first.id);
});

test("chat completion with a function tool", async () => {
  const result = await client().chat.completions.create({
    model: "gpt-4o",
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
    tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }],
  });
  const call = result.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
});
