//! An instance's model deployments for failover (`deployments`): e.g. a PTU deployment first
//! and a pay-as-you-go one after it, or the same model in two regions. Each entry is the
//! company's own — its endpoint passes the upstream policy (the admin layer checks it) and its
//! credential is a key of the company's own credential bundle, named by reference.
//!
//! Parsed once here from what an admin wrote, naming the first bad field
//! (`deployments[1].priority`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most entries an instance may list.
pub const MAX_DEPLOYMENTS: usize = 8;

/// The fields of an entry, as written in JSON.
pub const FIELDS: &[&str] = &[
    "name",
    "endpoint",
    "deployment",
    "priority",
    "weight",
    "credential",
    "timeoutSeconds",
];

/// One model deployment of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The entry's name (`[a-z0-9-]{1,32}`, unique in the list): what usage, telemetry and
    /// config-test call it.
    pub name: String,
    /// The Azure OpenAI (or OpenAI) endpoint, normalised.
    pub endpoint: String,
    /// The deployment (or, for the `openai` provider and the v1 API, the model).
    pub deployment: String,
    /// Lower first: an entry is tried only when every entry of a lower priority failed or is
    /// unavailable.
    pub priority: u32,
    /// Share of the turns among available entries of one priority.
    pub weight: u32,
    /// The key of the company's credential bundle (`credentials.deploymentKeys.<name>`) this
    /// entry calls with; absent: the instance's own (`azureOpenaiKey`, or its managed identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// How long to wait for the first byte before moving on to the next entry (the process's
    /// first-byte timeout when absent, and always for the last entry tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// A bad entry: the field (`deployments[i].<key>`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentError {
    pub field: String,
    pub detail: String,
}

/// Whether `name` is an entry (or credential) name: `[a-z0-9-]{1,32}`, not starting with '-'.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses the list an admin wrote. `endpoint` and `deployment` are checked (and normalised)
/// by `check`, the admin layer's rules for those fields (`(field, value)` → normalised value).
pub fn parse(
    raw: &Value,
    check: impl Fn(&str, &str, &str) -> Result<String, DeploymentError>,
) -> Result<Vec<Deployment>, DeploymentError> {
    let bad = |field: String, detail: &str| DeploymentError {
        field,
        detail: detail.to_owned(),
    };
    let Some(items) = raw.as_array() else {
        return Err(bad(
            "deployments".into(),
            "must be a list of deployments ({name, endpoint, deployment, priority?, weight?, \
             credential?, timeoutSeconds?})",
        ));
    };
    if items.len() > MAX_DEPLOYMENTS {
        return Err(bad(
            "deployments".into(),
            &format!("must list at most {MAX_DEPLOYMENTS} deployments"),
        ));
    }
    let mut out: Vec<Deployment> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |key: &str| format!("deployments[{i}].{key}");
        let Some(map) = item.as_object() else {
            return Err(bad(format!("deployments[{i}]"), "must be an object"));
        };
        if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(DeploymentError {
                field: at(key),
                detail: format!("unknown field; known: {}", FIELDS.join(", ")),
            });
        }
        let text = |key: &str| -> Result<Option<&str>, DeploymentError> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(bad(at(key), "must be a string")),
            }
        };
        let number = |key: &str, max: u32| -> Result<Option<u32>, DeploymentError> {
            match map.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=u64::from(max)).contains(n))
                    .map(|n| Some(n as u32))
                    .ok_or_else(|| bad(at(key), &format!("must be an integer from 1 to {max}"))),
            }
        };
        let name = text("name")?
            .filter(|n| is_name(n))
            .ok_or_else(|| {
                bad(
                    at("name"),
                    "must be 1-32 lower-case letters, digits or '-' (the entry's name)",
                )
            })?
            .to_owned();
        if out.iter().any(|d| d.name == name) {
            return Err(bad(at("name"), "must be unique in the list"));
        }
        let endpoint = text("endpoint")?
            .ok_or_else(|| bad(at("endpoint"), "is required: the deployment's endpoint"))?;
        let endpoint = check(&at("endpoint"), "endpoint", endpoint)?;
        let deployment = text("deployment")?
            .ok_or_else(|| bad(at("deployment"), "is required: the deployment's name"))?;
        let deployment = check(&at("deployment"), "deployment", deployment)?;
        let credential = match text("credential")? {
            None => None,
            Some(c) if is_name(c) => Some(c.to_owned()),
            Some(_) => {
                return Err(bad(
                    at("credential"),
                    "must name a key of credentials.deploymentKeys (1-32 lower-case letters, \
                     digits or '-')",
                ));
            }
        };
        out.push(Deployment {
            name,
            endpoint,
            deployment,
            priority: number("priority", 100)?.unwrap_or(1),
            weight: number("weight", 1000)?.unwrap_or(1),
            credential,
            timeout_seconds: number("timeoutSeconds", 600)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_ok(raw: Value) -> Result<Vec<Deployment>, DeploymentError> {
        parse(&raw, |field, kind, v| {
            if kind == "endpoint" && !v.starts_with("https://") {
                return Err(DeploymentError {
                    field: field.to_owned(),
                    detail: "must be https".into(),
                });
            }
            Ok(v.trim_end_matches('/').to_owned())
        })
    }

    #[test]
    fn entries_parse_with_defaults() {
        let list = parse_ok(json!([
            {"name": "ptu", "endpoint": "https://a.openai.azure.com/", "deployment": "gpt-4o"},
            {"name": "payg", "endpoint": "https://b.openai.azure.com", "deployment": "gpt-4o",
             "priority": 2, "weight": 3, "credential": "payg", "timeoutSeconds": 5}
        ]))
        .unwrap();
        assert_eq!(list[0].endpoint, "https://a.openai.azure.com");
        assert_eq!((list[0].priority, list[0].weight), (1, 1));
        assert_eq!(list[1].credential.as_deref(), Some("payg"));
        assert_eq!(list[1].timeout_seconds, Some(5));
        let back = serde_json::to_value(&list).unwrap();
        assert_eq!(back[0].get("credential"), None, "unset fields are absent");
        assert_eq!(
            serde_json::from_value::<Vec<Deployment>>(back).unwrap(),
            list
        );
    }

    #[test]
    fn each_bad_entry_names_its_field() {
        let ok = json!({"name": "a", "endpoint": "https://a.openai.azure.com", "deployment": "d"});
        let with = |key: &str, value: Value| {
            let mut entry = ok.clone();
            entry[key] = value;
            json!([entry])
        };
        for (raw, field) in [
            (json!({"name": "a"}), "deployments"),
            (json!(["x"]), "deployments[0]"),
            (with("name", json!("A B")), "deployments[0].name"),
            (with("name", json!(1)), "deployments[0].name"),
            (
                with("endpoint", json!("http://x")),
                "deployments[0].endpoint",
            ),
            (with("priority", json!(0)), "deployments[0].priority"),
            (with("priority", json!(101)), "deployments[0].priority"),
            (with("weight", json!(1.5)), "deployments[0].weight"),
            (with("weight", json!("1")), "deployments[0].weight"),
            (
                with("credential", json!("../k")),
                "deployments[0].credential",
            ),
            (
                with("timeoutSeconds", json!(601)),
                "deployments[0].timeoutSeconds",
            ),
            (with("colour", json!("red")), "deployments[0].colour"),
            (json!([ok, ok]), "deployments[1].name"),
            (
                json!([{"name": "a", "deployment": "d"}]),
                "deployments[0].endpoint",
            ),
            (
                json!([{"name": "a", "endpoint": "https://a.openai.azure.com"}]),
                "deployments[0].deployment",
            ),
            (json!(vec![ok.clone(); 9]), "deployments"),
        ] {
            assert_eq!(parse_ok(raw.clone()).unwrap_err().field, field, "{raw}");
        }
    }
}
