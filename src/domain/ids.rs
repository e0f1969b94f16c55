//! Identifiers. `TenantId` is the company id (and the partition key of every document);
//! `InstanceId` is a UUID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A company id: 1–64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
/// It partitions every document, so it never contains anything a query or a path could
/// misread.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct IdError(pub &'static str);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let starts_well = raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
        if raw.is_empty() || raw.len() > 64 || !valid_chars || !starts_well {
            return Err(IdError(
                "companyId must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// An agent-instance id (a UUID, rendered hyphenated and lower-case).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(uuid::Uuid);

impl InstanceId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| IdError("instance id must be a UUID"))
    }

    /// Its text (what `Display` writes), in `buf`.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for InstanceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<InstanceId> for String {
    fn from(value: InstanceId) -> Self {
        value.0.to_string()
    }
}

impl FromStr for InstanceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_parse_strictly() {
        for ok in ["acme", "ACME-01", "a.b_c", "1", &"x".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-acme", ".x", "a b", "a/b", "a'b", "ü", &"x".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_id_deserialization_rejects_bad_values() {
        assert!(serde_json::from_str::<TenantId>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::from_str::<TenantId>("\"acme\"")
                .unwrap()
                .as_str(),
            "acme"
        );
    }

    #[test]
    fn instance_ids_are_uuids() {
        let id = InstanceId::new();
        assert_eq!(InstanceId::parse(&id.to_string()).unwrap(), id);
        assert!(InstanceId::parse("not-a-uuid").is_err());
    }
}
