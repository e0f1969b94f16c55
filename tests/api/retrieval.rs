//! Retrieval on the chat path: Azure AI Search queried with the tenant filter, hybrid search
//! embedding the question with the tenant's own deployment.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sophia::dev::simulator::Fault;
use sophia::domain::TenantId;
use sophia::knowledge::Chunk;

use crate::support::assert_problem;

use crate::chat::{chat, cited, setup};

#[tokio::test]
async fn azure_ai_search_is_queried_with_the_tenant_filter() {
    use crate::support::search_standin::SearchStandIn;
    use sophia::knowledge::KnowledgeIndex;
    use sophia::knowledge::azure_search::{AzureSearchIndex, DEFAULT_INDEX, SearchAuth};
    let (app, sim) = setup(&[]).await;
    let search = SearchStandIn::start("search-key-1").await;
    let mut tokens = Vec::new();
    for name in ["acme", "beta"] {
        let created = app
            .create_instance_with(
                name,
                json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o", "azureSearchEndpoint": search.base,
                       "credentials": {"azureOpenaiKey": format!("key-{name}"), "azureSearchKey": "search-key-1"}}),
            )
            .await;
        tokens.push(app.service_token(name, &created.key).await);
        // Both companies share one index, with identical text.
        let index = AzureSearchIndex::new(
            reqwest::Client::new(),
            url::Url::parse(&search.base).unwrap(),
            DEFAULT_INDEX,
            SearchAuth::ApiKey("search-key-1".to_owned().into()),
        );
        let chunk = Chunk {
            id: "handbook#0".into(),
            document_id: format!("{name}-handbook"),
            title: "Handbook".into(),
            text: "The secret launch date is in March.".into(),
            vector: None,
        };
        index
            .upsert(&TenantId::parse(name).unwrap(), &[chunk])
            .await
            .unwrap();
    }
    for (name, token) in ["acme", "beta"].iter().zip(&tokens) {
        let body: Value = chat(
            &app,
            token,
            json!({"message": "When is the secret launch date?"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(cited(&body), [format!("{name}-handbook")]);
        assert!(body["answer"].as_str().unwrap().contains("March"));
    }
    assert_eq!(
        search.filters(),
        [
            Some("tenantId eq 'acme'".to_owned()),
            Some("tenantId eq 'beta'".to_owned())
        ],
        "every query carries the tenant filter"
    );
    // Deleting a document through the trait touches only that tenant.
    let index = AzureSearchIndex::new(
        reqwest::Client::new(),
        url::Url::parse(&search.base).unwrap(),
        DEFAULT_INDEX,
        SearchAuth::ApiKey("search-key-1".to_owned().into()),
    );
    index
        .delete_document(&TenantId::parse("acme").unwrap(), "beta-handbook")
        .await
        .unwrap();
    let left = index
        .search(&TenantId::parse("beta").unwrap(), "launch", None, 5)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "acme cannot delete beta's document");
    index
        .delete_document(&TenantId::parse("acme").unwrap(), "acme-handbook")
        .await
        .unwrap();
    assert!(
        index
            .search(&TenantId::parse("acme").unwrap(), "launch", None, 5)
            .await
            .unwrap()
            .is_empty()
    );

    // A search key the service refuses is a clear 502, never echoed.
    let wrong = app
        .create_instance_with(
            "gamma",
            json!({"azureOpenaiEndpoint": sim.base, "azureSearchEndpoint": search.base,
                   "credentials": {"azureOpenaiKey": "key-acme", "azureSearchKey": "WRONG-SEARCH-KEY"}}),
        )
        .await;
    let token = app.service_token("gamma", &wrong.key).await;
    let body = assert_problem(
        chat(&app, &token, json!({"message": "launch?"})).await,
        StatusCode::BAD_GATEWAY,
        "upstream_rejected",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("search service rejected the credentials")
    );
    assert!(!body.to_string().contains("WRONG-SEARCH-KEY"));
    // A search endpoint without a key is a configuration error.
    let keyless = app
        .create_instance_with("delta", json!({"azureOpenaiEndpoint": sim.base, "azureSearchEndpoint": search.base, "credentials": {"azureOpenaiKey": "key-acme"}}))
        .await;
    let token = app.service_token("delta", &keyless.key).await;
    assert_problem(
        chat(&app, &token, json!({"message": "launch?"})).await,
        StatusCode::CONFLICT,
        "instance_not_configured",
    )
    .await;
}

#[tokio::test]
async fn hybrid_retrieval_embeds_the_question_with_the_tenants_own_deployment() {
    let (app, sim) = setup(&[]).await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o", "azureEmbeddingDeployment": "text-embedding-3-small",
                   "credentials": {"azureOpenaiKey": "key-acme"}}),
        )
        .await;
    let tenant = TenantId::parse("acme").unwrap();
    let texts = [
        (
            "returns",
            "Items can be returned within 30 days with the receipt.",
        ),
        ("shipping", "Shipping takes five business days."),
    ];
    let chunks: Vec<Chunk> = texts
        .iter()
        .map(|(doc, text)| Chunk {
            id: format!("{doc}#0"),
            document_id: (*doc).into(),
            title: format!("{doc}.md"),
            text: (*text).into(),
            vector: Some(sophia::dev::simulator::embed(text)),
        })
        .collect();
    app.state.knowledge.upsert(&tenant, &chunks).await.unwrap();
    let token = app.service_token("acme", &acme.key).await;
    let body: Value = chat(
        &app,
        &token,
        json!({"message": "How many days to return items with a receipt?"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["citations"][0]["documentId"], "returns");
    let requests = sim.sim.requests();
    let embedding = requests
        .iter()
        .find(|r| r.kind == "embeddings")
        .expect("the question was embedded");
    assert_eq!(
        embedding.deployment.as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(embedding.key.as_deref(), Some("key-acme"));
    assert_eq!(
        embedding.body["input"][0],
        "How many days to return items with a receipt?"
    );
    // An embedding failure degrades to keyword search rather than failing the turn.
    sim.sim.push_fault(Fault {
        deployment: Some("text-embedding-3-small".into()),
        status: Some(400),
        ..Default::default()
    });
    let resp = chat(&app, &token, json!({"message": "shipping business days?"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["citations"][0]["documentId"], "shipping");
}
