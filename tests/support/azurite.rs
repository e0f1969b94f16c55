//! Azurite (Blob + Queue) from the tests' side: account SAS tokens signed with the emulator's
//! well-known key (HMAC-SHA256 over the account-SAS string-to-sign, version 2019-12-12), and
//! the few REST calls the tests make directly — create a container or queue, put and delete a
//! blob, read queue messages — as an operator's tooling would.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};

pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const SAS_VERSION: &str = "2019-12-12";

/// An account SAS (query string without `?`) for `services` (`b`, `q`, `bq`) with
/// `permissions` (e.g. `rl`, `a`, `rwdlacup`), valid for a day.
pub fn account_sas(services: &str, permissions: &str) -> String {
    account_sas_with_key(ACCOUNT_KEY, services, permissions)
}

/// The same, signed with another key (a SAS the account will refuse).
pub fn account_sas_with_key(key: &str, services: &str, permissions: &str) -> String {
    let expiry = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (resource_types, protocol) = ("sco", "https,http");
    let to_sign = format!(
        "{ACCOUNT}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n"
    );
    let key = STANDARD.decode(key).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &sig);
    query.finish()
}

fn admin_sas() -> String {
    account_sas("bq", "rwdlacup")
}

async fn expect(resp: reqwest::Response, ok: &[u16], what: &str) -> String {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert!(ok.contains(&status), "{what}: {status} {text}");
    text
}

/// `http://…/devstoreaccount1/<container>`
pub fn container_url(blob: &str, container: &str) -> String {
    format!("{blob}/{ACCOUNT}/{container}")
}

pub async fn create_container(blob: &str, container: &str) {
    let resp = reqwest::Client::new()
        .put(format!(
            "{}?restype=container&{}",
            container_url(blob, container),
            admin_sas()
        ))
        .header("x-ms-version", "2021-08-06")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect(resp, &[201, 409], "create container").await;
}

pub async fn put_blob(blob: &str, container: &str, name: &str, bytes: impl Into<Vec<u8>>) {
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/{name}?{}",
            container_url(blob, container),
            admin_sas()
        ))
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-blob-type", "BlockBlob")
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    expect(resp, &[201], "put blob").await;
}

pub async fn delete_blob(blob: &str, container: &str, name: &str) {
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/{name}?{}",
            container_url(blob, container),
            admin_sas()
        ))
        .header("x-ms-version", "2021-08-06")
        .send()
        .await
        .unwrap();
    expect(resp, &[202], "delete blob").await;
}

/// `http://…/devstoreaccount1/<queue>`
pub fn queue_url(queue_service: &str, queue: &str) -> String {
    format!("{queue_service}/{ACCOUNT}/{queue}")
}

pub async fn create_queue(queue_service: &str, queue: &str) {
    let resp = reqwest::Client::new()
        .put(format!(
            "{}?{}",
            queue_url(queue_service, queue),
            admin_sas()
        ))
        .header("x-ms-version", "2021-08-06")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    expect(resp, &[201, 204], "create queue").await;
}

/// Dequeues up to 32 messages and returns their `MessageText`s (as stored: the sender's
/// encoding).
pub async fn receive(queue_service: &str, queue: &str) -> Vec<String> {
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/messages?numofmessages=32&{}",
            queue_url(queue_service, queue),
            admin_sas()
        ))
        .header("x-ms-version", "2021-08-06")
        .send()
        .await
        .unwrap();
    let xml = expect(resp, &[200], "get messages").await;
    xml.split("<MessageText>")
        .skip(1)
        .filter_map(|rest| rest.split("</MessageText>").next())
        .map(|t| {
            t.replace("&quot;", "\"")
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
        })
        .collect()
}
