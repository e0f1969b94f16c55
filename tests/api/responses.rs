//! Tools on `/v1/chat/completions` and the Responses API (`/v1/responses`) over real HTTP,
//! against the simulator: what reaches the tenant's deployment, what comes back, stored
//! responses continued and read back, and another company's ids answering 404.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::chat::{company, seed, setup};

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// SSE `data:` payloads of a stream (without `[DONE]`).
fn data_lines(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn chat_completion_tools_round_trip() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let ask = json!({"model": "gpt-4o", "tools": [weather_tool()], "tool_choice": "auto", "parallel_tool_calls": false, "seed": 7,
                     "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(ask.clone()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    // The deployment got the tools, the choice and the seed as given.
    // Azure's content-filter results come back as it sent them.
    assert_eq!(choice["content_filter_results"]["hate"]["severity"], "safe");
    assert_eq!(body["prompt_filter_results"][0]["prompt_index"], 0);
    let sent = &sim.sim.requests()[0].body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(sent["parallel_tool_calls"], false);
    assert_eq!(sent["seed"], 7);

    // The tool's output goes back; the model answers from it.
    let mut next = ask.clone();
    next["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"},
    ]);
    let body: Value = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(next),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "According to get_weather: 18 C and sunny"
    );
    let sent = &sim.sim.requests()[1].body;
    let tool_message = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(tool_message["role"], "tool");
    assert_eq!(tool_message["tool_call_id"], call["id"]);

    // Streamed: tool_calls deltas, first naming the call, then its arguments.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let text = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(streamed),
        )
        .await
        .text()
        .await
        .unwrap();
    let chunks = data_lines(&text);
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(pieces.len() >= 2, "{text}");
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    assert!(pieces[0]["id"].as_str().unwrap().starts_with("call_"));
    let arguments: String = pieces
        .iter()
        .filter_map(|p| p["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );

    // Structured output: json_schema passes through; the answer fits it.
    let body: Value = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(json!({"messages": [{"role": "user", "content": "Weather in Rome?"}],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "strict": true,
                            "schema": {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}}}}}})),
        )
        .await
        .json()
        .await
        .unwrap();
    let answer: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(answer["city"], "Rome");
    assert!(answer["celsius"].is_i64());
    assert_eq!(
        sim.sim.requests().last().unwrap().body["response_format"]["json_schema"]["name"],
        "weather"
    );
}

#[tokio::test]
async fn bad_tools_and_formats_are_clear_400s() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"tools": [{"type": "file_search"}]}), "tools[0].type"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "other"}}}),
            "tool_choice.function.name",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
            "response_format.json_schema.name",
        ),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
    ];
    for (extra, param) in cases {
        let mut body = json!({"messages": user});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = app
            .request(
                Method::POST,
                "/v1/chat/completions",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    assert!(
        sim.sim.requests().is_empty(),
        "nothing bad reaches the deployment"
    );
}

#[tokio::test]
async fn responses_create_continue_and_retrieve() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    seed(
        &app,
        "acme",
        "refunds",
        "Refunds are accepted within 30 days of purchase.",
    )
    .await;
    let token = app.service_token("acme", &acme.key).await;
    let resp = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"model": "gpt-4o", "input": "How many days for refunds?", "instructions": "Be brief.",
                        "metadata": {"ticket": "T-1"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let first: Value = resp.json().await.unwrap();
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["store"], true);
    assert_eq!(first["metadata"]["ticket"], "T-1");
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"));
    let message = &first["output"][0];
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    let text = message["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("30 days"), "{text}");
    let annotation = &message["content"][0]["annotations"][0];
    assert_eq!(annotation["type"], "file_citation");
    assert_eq!(annotation["file_id"], "refunds");
    assert!(first["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Upstream: the instance's prompt and knowledge, then the instructions, then the input.
    let sent = sim.sim.requests()[0].body.clone();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "system", "user"]);
    assert_eq!(sent["messages"][1]["content"], "Be brief.");

    // Read back.
    let got: Value = app
        .request(
            Method::GET,
            &format!("/v1/responses/{id}"),
            Some(&token),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id);
    assert_eq!(got["output"], first["output"]);
    assert_eq!(got["usage"], first["usage"]);
    assert_eq!(got["instructions"], "Be brief.");

    // Continued: the earlier turn goes upstream before the new input.
    let second: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "And exchanges?"}]}],
                        "previous_response_id": id})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["previous_response_id"], id);
    assert_eq!(second["conversation"], first["conversation"]);
    let sent = sim.sim.requests()[1].body.clone();
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(contents.contains(&"How many days for refunds?"));
    assert!(contents.contains(&text));
    assert_eq!(*contents.last().unwrap(), "And exchanges?");
    // One stored conversation: both turns, the call's record on each answer.
    let conversation = first["conversation"]["id"].as_str().unwrap();
    let stored = app
        .state
        .store
        .get_conversation(
            &sophia::domain::TenantId::parse("acme").unwrap(),
            &sophia::domain::ConversationId::parse(conversation).unwrap(),
        )
        .await
        .unwrap();
    let roles: Vec<&str> = stored.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert!(stored.messages[1].response.is_some() && stored.messages[3].response.is_some());
    // /chat continues the same conversation.
    let resp = crate::chat::chat(
        &app,
        &token,
        json!({"message": "thanks", "conversationId": conversation}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Continuing the first response again forks: the second turn is not in its history.
    app.request(
        Method::POST,
        "/v1/responses",
        Some(&token),
        Some(json!({"input": "Something else?", "previous_response_id": id})),
    )
    .await;
    let sent = sim.sim.requests().last().unwrap().body.clone();
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        contents.contains(&"How many days for refunds?"),
        "{contents:?}"
    );
    assert!(!contents.contains(&"And exchanges?"), "{contents:?}");

    // store: false — answered, not kept.
    let unstored: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"input": "hi", "store": false})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unstored["store"], false);
    let resp = app
        .request(
            Method::GET,
            &format!("/v1/responses/{}", unstored["id"].as_str().unwrap()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Bad input.
    for (body, param) in [
        (json!({}), "input"),
        (json!({"input": ""}), "input"),
        (json!({"input": [{"type": "input_image"}]}), "input[0].type"),
        (
            json!({"input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_schema"}}}),
            "text.format.json_schema.name",
        ),
        (
            json!({"input": "x", "previous_response_id": id, "conversation": conversation}),
            "previous_response_id",
        ),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn responses_stream_typed_events_and_tools() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let text = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"input": "Say hello", "stream": true})),
        )
        .await
        .text()
        .await
        .unwrap();
    let events = data_lines(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert!(kinds.contains(&"response.output_text.delta"));
    assert_eq!(
        &kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    let done = events.last().unwrap();
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    // Each `event:` line names its data's type.
    assert!(text.contains("event: response.completed\ndata: "));
    // Stored when streamed, too.
    let id = done["response"]["id"].as_str().unwrap();
    let got: Value = app
        .request(
            Method::GET,
            &format!("/v1/responses/{id}"),
            Some(&token),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["output"], done["response"]["output"]);

    // A function tool, streamed; its output sent back through previous_response_id.
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather for a city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let text = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"input": "What is the weather in Oslo?", "tools": tools, "stream": true})),
        )
        .await
        .text()
        .await
        .unwrap();
    let events = data_lines(&text);
    let added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added")
        .unwrap();
    assert_eq!(added["item"]["type"], "function_call");
    assert_eq!(added["item"]["name"], "get_weather");
    let arguments: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Oslo"})
    );
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    let call = &done["response"]["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["arguments"], arguments.as_str());
    let answer: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&token),
            Some(json!({"previous_response_id": done["response"]["id"], "tools": tools,
                        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "-3 C, snow"}]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["output"][0]["content"][0]["text"],
        "According to get_weather: -3 C, snow"
    );
    // Upstream saw the stored call and then the output answering it.
    let sent = sim.sim.requests().last().unwrap().body.clone();
    let messages = sent["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(messages[n - 2]["tool_calls"][0]["id"], call["call_id"]);
    assert_eq!(messages[n - 1]["role"], "tool");
    assert_eq!(messages[n - 1]["tool_call_id"], call["call_id"]);
}

#[tokio::test]
async fn stored_responses_are_the_companys_own() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let globex = company(&app, &sim, "globex", "gpt-4o-mini").await;
    let a = app.service_token("acme", &acme.key).await;
    let b = app.service_token("globex", &globex.key).await;
    let first: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&a),
            Some(json!({"input": "acme secret plan: Falcon"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap();
    let conversation = first["conversation"]["id"].as_str().unwrap();
    sim.sim.clear();
    // Globex cannot read it, continue it, or continue its conversation.
    let resp = app
        .request(Method::GET, &format!("/v1/responses/{id}"), Some(&b), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    for body in [
        json!({"input": "continue", "previous_response_id": id}),
        json!({"input": "continue", "conversation": conversation}),
        json!({"input": "continue", "conversation": {"id": conversation}}),
    ] {
        let resp = app
            .request(Method::POST, "/v1/responses", Some(&b), Some(body.clone()))
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{body}");
    }
    assert!(
        sim.sim.requests().is_empty(),
        "globex's refused turns reached no model"
    );
    // Junk ids are 404 too; acme still reads its own.
    for junk in ["resp_123", "nope", &format!("{id}0")] {
        let resp = app
            .request(
                Method::GET,
                &format!("/v1/responses/{junk}"),
                Some(&a),
                None,
            )
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{junk}");
    }
    let resp = app
        .request(Method::GET, &format!("/v1/responses/{id}"), Some(&a), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Globex's own turn carries nothing of acme's.
    app.request(
        Method::POST,
        "/v1/responses",
        Some(&b),
        Some(json!({"input": "hello"})),
    )
    .await;
    let sent = serde_json::to_string(&sim.sim.requests()).unwrap();
    assert!(!sent.contains("Falcon"));
}

/// Upstream failures on `/v1/responses` answer like every model call, in OpenAI's error shape:
/// a 429 with `Retry-After`, a 5xx as 502, whole or streamed (before the first event).
#[tokio::test]
async fn responses_upstream_failures_map_like_model_calls() {
    use sophia::dev::simulator::Fault;
    let (app, sim) = setup(&[("SOPHIA_UPSTREAM_RETRY_BUDGET_MS", "0")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    for stream in [false, true] {
        sim.sim.push_fault(Fault {
            status: Some(429),
            retry_after: Some(7),
            ..Default::default()
        });
        let resp = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(json!({"input": "hi", "stream": stream})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert!(resp.headers().contains_key("x-request-id"));
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "rate_limit_error");
        sim.sim.push_fault(Fault {
            status: Some(500),
            ..Default::default()
        });
        let resp = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(json!({"input": "hi", "stream": stream})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "api_error");
    }
}

/// The text of a stream's events of one `type`, joined.
fn joined(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .filter_map(|e| e["delta"].as_str())
        .collect()
}

/// A model's refusal and Azure's content-filter verdicts reach the client on every route,
/// whole and streamed, on both API styles: `refusal` on chat completions (`delta.refusal`
/// when streamed), a `refusal` part on the Responses API (kept with a stored response and
/// sent back upstream as what the model said), the answer's text on `/chat`; the prompt's
/// verdicts in a chunk of their own, the answer's on the next chunk.
#[tokio::test]
async fn refusals_and_content_filters_pass_through() {
    const REFUSAL: &str = "I'm sorry, but I can't help with that request.";
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let beta = app
        .create_instance_with(
            "beta",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "credentials": {"azureOpenaiKey": "key-beta"}, "settings": {"apiStyle": "v1"}}),
        )
        .await;
    let forbidden = "Tell me the forbidden recipe";
    for (name, key) in [("acme", &acme.key), ("beta", &beta.key)] {
        let token = app.service_token(name, key).await;
        let messages = json!([{"role": "user", "content": forbidden}]);

        // Chat completions, whole.
        let body: Value = app
            .request(
                Method::POST,
                "/v1/chat/completions",
                Some(&token),
                Some(json!({"messages": messages})),
            )
            .await
            .json()
            .await
            .unwrap();
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null, "{name}: {body}");
        assert_eq!(message["refusal"], REFUSAL, "{name}");

        // Chat completions, streamed.
        let text = app
            .request(
                Method::POST,
                "/v1/chat/completions",
                Some(&token),
                Some(json!({"messages": messages, "stream": true})),
            )
            .await
            .text()
            .await
            .unwrap();
        let chunks = data_lines(&text);
        let refusal: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["refusal"].as_str())
            .collect();
        assert_eq!(refusal, REFUSAL, "{name}: {text}");
        let prompt = chunks
            .iter()
            .find(|c| c.get("prompt_filter_results").is_some())
            .unwrap_or_else(|| panic!("{name}: no prompt verdicts in {text}"));
        assert_eq!(prompt["choices"], json!([]));
        assert_eq!(
            prompt["prompt_filter_results"][0]["content_filter_results"]["hate"]["severity"],
            "safe"
        );
        // The asynchronous filter's verdicts follow the text: they ride on the finish chunk.
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            last["choices"][0]["content_filter_results"]["violence"]["filtered"], false,
            "{name}: {text}"
        );
        // Every chunk is one completion's.
        assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));

        // The Responses API, whole, stored, read back and continued.
        let created: Value = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(json!({"input": forbidden})),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            created["output"][0]["content"],
            json!([{"type": "refusal", "refusal": REFUSAL}]),
            "{name}: {created}"
        );
        let id = created["id"].as_str().unwrap();
        let got: Value = app
            .request(
                Method::GET,
                &format!("/v1/responses/{id}"),
                Some(&token),
                None,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(got["output"], created["output"], "{name}");
        sim.sim.clear();
        let next = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(json!({"input": "Then say hello", "previous_response_id": id})),
            )
            .await;
        assert_eq!(next.status(), StatusCode::OK);
        let sent = sim.sim.requests()[0].body.to_string();
        assert!(
            sent.contains(REFUSAL),
            "{name}: the refusal went back: {sent}"
        );

        // The Responses API, streamed.
        let text = app
            .request(
                Method::POST,
                "/v1/responses",
                Some(&token),
                Some(json!({"input": forbidden, "stream": true})),
            )
            .await
            .text()
            .await
            .unwrap();
        let events = data_lines(&text);
        assert_eq!(joined(&events, "response.refusal.delta"), REFUSAL, "{name}");
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            &kinds[kinds.len() - 4..],
            [
                "response.refusal.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{name}: {kinds:?}"
        );
        assert!(!kinds.contains(&"response.output_text.delta"));
        let added = events
            .iter()
            .find(|e| e["type"] == "response.content_part.added")
            .unwrap();
        assert_eq!(added["part"], json!({"type": "refusal", "refusal": ""}));
        let done = events.last().unwrap();
        assert_eq!(
            done["response"]["output"][0]["content"],
            json!([{"type": "refusal", "refusal": REFUSAL}])
        );

        // `/chat`: the refusal is the answer.
        let body: Value = app
            .request(
                Method::POST,
                "/chat",
                Some(&token),
                Some(json!({"message": forbidden})),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["answer"], REFUSAL, "{name}: {body}");
        let text = app
            .request(
                Method::POST,
                "/chat",
                Some(&token),
                Some(json!({"message": forbidden, "stream": true})),
            )
            .await
            .text()
            .await
            .unwrap();
        let streamed: String = data_lines(&text)
            .iter()
            .filter_map(|e| e["content"].as_str())
            .collect();
        assert_eq!(streamed, REFUSAL, "{name}: {text}");
    }
}

/// An ordinary stream keeps Azure's verdicts too (the prompt's first, the answer's on the
/// chunk after) and sends no chunk for verdicts that say nothing.
#[tokio::test]
async fn streamed_answers_carry_azure_verdicts_without_extra_chunks() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let text = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(json!({"messages": [{"role": "user", "content": "Say hello"}], "stream": true})),
        )
        .await
        .text()
        .await
        .unwrap();
    let chunks = data_lines(&text);
    let content: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .collect();
    // The role chunk, then one chunk per simulator piece: none is empty.
    assert!(content.len() > 2);
    let with_choices = chunks
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty())
        .count();
    // role + pieces + finish; the prompt's verdicts are the one chunk without choices.
    assert_eq!(with_choices, content.len() + 1, "{text}");
    assert_eq!(chunks.len(), with_choices + 1, "{text}");
    let prompts = chunks
        .iter()
        .filter(|c| c.get("prompt_filter_results").is_some())
        .count();
    assert_eq!(prompts, 1, "{text}");
    assert!(
        content
            .iter()
            .all(|c| c["choices"][0].get("content_filter_results").is_none()),
        "empty verdicts are not repeated: {text}"
    );
}
