//! The SQLite store against the `Store` contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use sophia::store::Store;
use sophia::store::sqlite::SqliteStore;

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

store_contract_tests!(sqlite);

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
