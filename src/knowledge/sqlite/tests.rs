//! Unit tests of the embedded knowledge index.

use super::*;

fn chunk(doc: &str, n: usize, text: &str) -> Chunk {
    Chunk {
        id: format!("{doc}#{n}"),
        document_id: doc.into(),
        title: format!("{doc} title"),
        text: text.into(),
        vector: Some(crate::dev::simulator::embed(text)),
    }
}

#[tokio::test]
async fn keyword_and_vector_search_stay_in_the_tenant() {
    let index = SqliteIndex::open_in_memory().unwrap();
    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    let same = "Refunds are accepted within 30 days of purchase.";
    index
        .upsert(
            &a,
            &[
                chunk("policy", 0, same),
                chunk("hours", 0, "The shop opens at nine."),
            ],
        )
        .await
        .unwrap();
    index
        .upsert(&b, &[chunk("b-policy", 0, same)])
        .await
        .unwrap();
    let q = "how many days for refunds?";
    let hits = index
        .search(&a, q, Some(&crate::dev::simulator::embed(q)), 3)
        .await
        .unwrap();
    assert_eq!(hits[0].document_id, "policy");
    assert!(hits.iter().all(|h| h.document_id != "b-policy"));
    let hits_b = index.search(&b, q, None, 3).await.unwrap();
    assert_eq!(hits_b.len(), 1);
    assert_eq!(hits_b[0].document_id, "b-policy");
}

#[tokio::test]
async fn upsert_replaces_and_delete_removes() {
    let index = SqliteIndex::open_in_memory().unwrap();
    let t = TenantId::parse("t").unwrap();
    index
        .upsert(&t, &[chunk("d", 0, "alpha beta")])
        .await
        .unwrap();
    index
        .upsert(&t, &[chunk("d", 0, "gamma delta")])
        .await
        .unwrap();
    assert!(index.search(&t, "alpha", None, 5).await.unwrap().is_empty());
    assert_eq!(index.search(&t, "gamma", None, 5).await.unwrap().len(), 1);
    index.delete_document(&t, "d").await.unwrap();
    assert!(index.search(&t, "gamma", None, 5).await.unwrap().is_empty());
}

fn fts_rows(index: &SqliteIndex) -> Vec<(String, String)> {
    let conn = index.conn.lock().unwrap();
    let mut stmt = conn
        .prepare("SELECT tenant_id, text FROM chunks_fts ORDER BY tenant_id, text")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn replacing_and_deleting_touch_only_that_tenants_text() {
    let index = SqliteIndex::open_in_memory().unwrap();
    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    // The same chunk id in two tenants, and a second document in tenant a.
    index
        .upsert(&a, &[chunk("d", 0, "alpha"), chunk("e", 0, "epsilon")])
        .await
        .unwrap();
    index.upsert(&b, &[chunk("d", 0, "alpha")]).await.unwrap();
    index.upsert(&a, &[chunk("d", 0, "gamma")]).await.unwrap();
    let rows = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(t, x)| (t.to_string(), x.to_string()))
            .collect()
    };
    assert_eq!(
        fts_rows(&index),
        rows(&[("a", "epsilon"), ("a", "gamma"), ("b", "alpha")])
    );
    index.delete_document(&a, "d").await.unwrap();
    assert_eq!(fts_rows(&index), rows(&[("a", "epsilon"), ("b", "alpha")]));
    assert_eq!(index.search(&a, "epsilon", None, 5).await.unwrap().len(), 1);
    assert_eq!(index.search(&b, "alpha", None, 5).await.unwrap().len(), 1);
}

/// A refresh holding the write transaction does not make other companies' searches wait.
#[tokio::test]
async fn searches_do_not_wait_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let index = SqliteIndex::open(&dir.path().join("k.db")).unwrap();
    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    index
        .upsert(&b, &[chunk("d", 0, "parking is free on weekends")])
        .await
        .unwrap();
    let writer = Arc::clone(&index.conn);
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut conn = writer.lock().unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO chunks (tenant_id, id, document_id, title, text) VALUES ('a', 'x', 'x', 'x', 'x')",
            [],
        )
        .unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(tx);
    });
    locked_rx.recv().unwrap();
    let started = std::time::Instant::now();
    let hits = index.search(&b, "parking", None, 3).await.unwrap();
    let waited = started.elapsed();
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(hits.len(), 1);
    assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
    let _ = a;
}

/// A search past its work budget stops and answers (with nothing) instead of running on.
#[tokio::test]
async fn a_search_stops_at_its_work_budget() {
    let dir = tempfile::tempdir().unwrap();
    let index = SqliteIndex::open(&dir.path().join("k.db"))
        .unwrap()
        .with_search_budget(std::time::Duration::ZERO);
    let t = TenantId::parse("big").unwrap();
    let chunks: Vec<Chunk> = (0..2_000)
        .map(|n| {
            chunk(
                "manual",
                n,
                &format!("warranty section {n} covers parts and labour"),
            )
        })
        .collect();
    index.upsert(&t, &chunks).await.unwrap();
    let hits = index
        .search(
            &t,
            "warranty parts labour",
            Some(&crate::dev::simulator::embed("warranty")),
            5,
        )
        .await
        .unwrap();
    assert!(hits.is_empty(), "the budget was not applied");
    // With a budget, the same search answers.
    let index = SqliteIndex::open(&dir.path().join("k.db")).unwrap();
    assert_eq!(
        index
            .search(&t, "warranty parts labour", None, 5)
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn a_version_0_index_is_migrated_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knowledge.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE chunks (tenant_id TEXT NOT NULL, id TEXT NOT NULL, document_id TEXT NOT NULL,
                title TEXT NOT NULL, text TEXT NOT NULL, vector BLOB, PRIMARY KEY (tenant_id, id));
             CREATE INDEX chunks_by_document ON chunks (tenant_id, document_id);
             CREATE VIRTUAL TABLE chunks_fts USING fts5(text, title, tenant_id UNINDEXED, chunk_id UNINDEXED);
             INSERT INTO chunks VALUES ('a', 'd#0', 'd', 'D', 'refunds within thirty days', NULL);
             INSERT INTO chunks_fts VALUES ('refunds within thirty days', 'D', 'a', 'd#0');",
        )
        .unwrap();
    }
    let index = SqliteIndex::open(&path).unwrap();
    let a = TenantId::parse("a").unwrap();
    let hits = index.search(&a, "refunds", None, 5).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].document_id, "d");
    index.upsert(&a, &[chunk("d", 0, "gamma")]).await.unwrap();
    assert_eq!(fts_rows(&index), vec![("a".into(), "gamma".into())]);
    drop(index);
    // Opening again finds version 1 and changes nothing.
    let index = SqliteIndex::open(&path).unwrap();
    assert_eq!(index.search(&a, "gamma", None, 5).await.unwrap().len(), 1);
}

#[tokio::test]
async fn queries_cannot_inject_fts_syntax() {
    let index = SqliteIndex::open_in_memory().unwrap();
    let t = TenantId::parse("t").unwrap();
    index
        .upsert(&t, &[chunk("d", 0, "plain text")])
        .await
        .unwrap();
    for q in ["\"", "text OR tenant_id:*", "NEAR(", "*", "", "-- ;"] {
        assert!(index.search(&t, q, None, 5).await.is_ok(), "{q}");
    }
}
