//! The backend contract suites: the SQLite store against the `Store` contract, and both
//! knowledge indexes — the embedded SQLite one and Azure AI Search (its stand-in) — against the
//! `KnowledgeIndex` contract.

use crate::support;

use std::sync::Arc;

use sophia::store::sqlite::SqliteStore;
use sophia::store::{InstanceStore, Store};

async fn sqlite() -> Arc<dyn Store> {
    Arc::new(SqliteStore::open_in_memory().unwrap())
}

mod sqlite_file {
    use super::*;

    /// The same contract on a file database (WAL), as the service runs it.
    async fn file_store() -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        // Keep the directory alive for the test's lifetime.
        std::mem::forget(dir);
        Arc::new(SqliteStore::open(&path).unwrap())
    }

    crate::store_contract_tests!(file_store);
}

crate::store_contract_tests!(sqlite);

mod embedded_index {
    use super::*;
    use sophia::knowledge::KnowledgeIndex;

    async fn embedded() -> Arc<dyn KnowledgeIndex> {
        Arc::new(sophia::knowledge::sqlite::SqliteIndex::open_in_memory().unwrap())
    }

    crate::index_contract_tests!(embedded);
}

mod azure_search_index {
    use super::*;
    use sophia::knowledge::KnowledgeIndex;
    use sophia::knowledge::azure_search::{AzureSearchIndex, DEFAULT_INDEX, SearchAuth};

    /// A fresh stand-in per test, reached over HTTP by the production client.
    async fn azure_search() -> Arc<dyn KnowledgeIndex> {
        let search = crate::support::search_standin::SearchStandIn::start("search-key").await;
        let index = AzureSearchIndex::new(
            reqwest::Client::new(),
            url::Url::parse(&search.base).unwrap(),
            DEFAULT_INDEX,
            SearchAuth::ApiKey("search-key".to_owned().into()),
        );
        index.prepare(None).await.unwrap();
        // The stand-in lives as long as its server task; its handle may go.
        std::mem::forget(search);
        Arc::new(index)
    }

    crate::index_contract_tests!(azure_search);
}

#[tokio::test]
async fn reopening_keeps_documents_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let t = support::store_contract::tenant();
    let inst = support::store_contract::instance(&t, sophia::domain::InstanceStatus::Active);
    {
        let store = SqliteStore::open(&path).unwrap();
        store.insert_instance(&inst).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let got = store
        .get_instance(&sophia::store::TenantScope::Tenant(t), &inst.id)
        .await
        .unwrap();
    assert_eq!(got.id, inst.id);
}
