//! The Cosmos DB store against the `Store` contract, on the local emulator (`rig/cosmos.js`),
//! plus what only Cosmos needs: tenant scoping that does not trust the partition routing,
//! start-up checks of the containers, and throttling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use secrecy::SecretString;
use sophia::store::Store;
use sophia::store::cosmos::{CosmosAuth, CosmosConfig, CosmosStore};

/// The emulator's well-known key (it ignores auth, but the SDK signs every request).
const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

fn config(database: &str) -> CosmosConfig {
    CosmosConfig {
        endpoint: format!("{}/", support::rig::cosmos_endpoint()),
        database: database.to_owned(),
        auth: CosmosAuth::Key(SecretString::from(EMULATOR_KEY)),
        create_containers: true,
        audit_ttl_days: 30,
        region: "South Central US".into(),
    }
}

async fn cosmos() -> Arc<dyn Store> {
    Arc::new(
        CosmosStore::connect(config(&support::rig::fresh_database()))
            .await
            .unwrap(),
    )
}

store_contract_tests!(cosmos);
