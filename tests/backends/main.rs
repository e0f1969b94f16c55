//! Backend and component tests: the `Store`, `SecretStore` and `KnowledgeIndex` contract
//! suites on every backend (SQLite, the Cosmos DB emulator, the Key Vault and AI Search
//! stand-ins), the model client over HTTP and the tenant runtime cache. One binary, one module
//! per backend or component.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod cosmos;
mod llm_client;
mod runtime_cache;
mod secrets;
mod store;
