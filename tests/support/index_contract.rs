//! The `KnowledgeIndex` contract, run against every backend (the embedded SQLite index and
//! Azure AI Search through its stand-in): tenant scoping of search and delete, replacement by
//! chunk id, `top_k`. Invoke `index_contract_tests!(factory)` with an async factory returning
//! `Arc<dyn KnowledgeIndex>` (already prepared for writes).

use std::sync::Arc;

use sophia::domain::TenantId;
use sophia::knowledge::{Chunk, KnowledgeIndex};

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

pub fn chunk(document: &str, n: usize, text: &str) -> Chunk {
    Chunk {
        id: format!("{document}#{n}"),
        document_id: document.to_owned(),
        title: format!("Title of {document}"),
        text: text.to_owned(),
        vector: None,
    }
}

fn documents(passages: &[sophia::knowledge::Passage]) -> Vec<String> {
    let mut ids: Vec<String> = passages.iter().map(|p| p.document_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Two tenants with the same text: each query sees its own tenant's passages only.
pub async fn search_is_scoped_to_the_tenant(index: Arc<dyn KnowledgeIndex>) {
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    let text = "The refund window is thirty days from delivery.";
    index
        .upsert(&acme, &[chunk("acme-policy", 0, text)])
        .await
        .unwrap();
    index
        .upsert(&beta, &[chunk("beta-policy", 0, text)])
        .await
        .unwrap();
    let found = index
        .search(&acme, "refund window", None, 10)
        .await
        .unwrap();
    assert_eq!(documents(&found), ["acme-policy"]);
    let found = index
        .search(&beta, "refund window", None, 10)
        .await
        .unwrap();
    assert_eq!(documents(&found), ["beta-policy"]);
    let none = index
        .search(&tenant("gamma"), "refund window", None, 10)
        .await
        .unwrap();
    assert!(
        none.is_empty(),
        "a tenant without documents finds nothing: {none:?}"
    );
}

/// Upserting a chunk id again replaces its text.
pub async fn upsert_replaces_by_chunk_id(index: Arc<dyn KnowledgeIndex>) {
    let acme = tenant("acme");
    index
        .upsert(&acme, &[chunk("handbook", 0, "Parking is on level two.")])
        .await
        .unwrap();
    index
        .upsert(&acme, &[chunk("handbook", 0, "Parking is on level five.")])
        .await
        .unwrap();
    let found = index
        .search(&acme, "parking level", None, 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "one chunk, replaced: {found:?}");
    assert!(found[0].text.contains("five"), "{found:?}");
}

/// Deleting a document removes its chunks for that tenant only.
pub async fn delete_touches_only_the_tenants_document(index: Arc<dyn KnowledgeIndex>) {
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    for t in [&acme, &beta] {
        index
            .upsert(
                t,
                &[
                    chunk("shared-name", 0, "Holidays are booked in the portal."),
                    chunk("shared-name", 1, "Holidays need two weeks of notice."),
                ],
            )
            .await
            .unwrap();
    }
    index.delete_document(&acme, "shared-name").await.unwrap();
    assert!(
        index
            .search(&acme, "holidays", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let left = index.search(&beta, "holidays", None, 10).await.unwrap();
    assert_eq!(left.len(), 2, "acme's delete left beta's chunks: {left:?}");
}

/// At most `top_k` passages come back.
pub async fn search_returns_at_most_top_k(index: Arc<dyn KnowledgeIndex>) {
    let acme = tenant("acme");
    let chunks: Vec<Chunk> = (0..6)
        .map(|n| {
            chunk(
                &format!("doc-{n}"),
                0,
                &format!("Invoice number {n} is due in May."),
            )
        })
        .collect();
    index.upsert(&acme, &chunks).await.unwrap();
    let found = index.search(&acme, "invoice due", None, 3).await.unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
}

#[macro_export]
macro_rules! index_contract_tests {
    ($factory:path) => {
        mod index_contract {
            use super::*;
            use $crate::support::index_contract as contract;

            #[tokio::test]
            async fn search_is_scoped_to_the_tenant() {
                contract::search_is_scoped_to_the_tenant($factory().await).await;
            }

            #[tokio::test]
            async fn upsert_replaces_by_chunk_id() {
                contract::upsert_replaces_by_chunk_id($factory().await).await;
            }

            #[tokio::test]
            async fn delete_touches_only_the_tenants_document() {
                contract::delete_touches_only_the_tenants_document($factory().await).await;
            }

            #[tokio::test]
            async fn search_returns_at_most_top_k() {
                contract::search_returns_at_most_top_k($factory().await).await;
            }
        }
    };
}
