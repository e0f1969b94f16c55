//! A restart on the same data dir keeps instances, keys, signing keys and the local admin
//! secret.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::spawn_app_in;

#[tokio::test]
async fn restart_keeps_data() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // No configured admin secret: the local one is generated into the data dir.
    let first = spawn_app_in(dir.clone(), &[("SOPHIA_ADMIN_JWT_SECRET", "")]).await;
    let created = first.create_instance("acme").await;
    let service_token = first.service_token("acme", &created.key).await;
    let admin = first.platform_token();
    let jwks_before: Value = first
        .client
        .get(first.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    first.stop().await;
    assert!(dir.path().join("admin-jwt.secret").exists());
    assert!(dir.path().join("master.key").exists());

    let second = spawn_app_in(dir.clone(), &[("SOPHIA_ADMIN_JWT_SECRET", "")]).await;
    // The admin token minted before the restart still works (same generated secret).
    let resp = second
        .get(&format!("/admin/agent-instances/{}", created.id), &admin)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The service token still verifies (same signing key), and the key still exchanges.
    assert_eq!(
        second.get("/agents/me", &service_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        second.exchange("acme", &created.key).await.status(),
        StatusCode::OK
    );
    let jwks_after: Value = second
        .client
        .get(second.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks_before, jwks_after);
    // The audit trail survived.
    assert!(second.audit("companyId=acme").await.len() >= 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["admin-jwt.secret", "master.key"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others");
        }
    }
}

/// The data dir and every file in it are private (0700 / 0600) even when the directory was
/// made by hand with looser modes and its files already existed.
#[cfg(unix)]
#[tokio::test]
async fn data_dir_files_are_private_even_when_they_already_existed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["sophia.db", "knowledge.db"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let app = crate::support::spawn_app_in(std::sync::Arc::clone(&dir), &[]).await;
    // Writes create the WAL files too.
    app.create_instance("acme").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    app.stop().await;
}
