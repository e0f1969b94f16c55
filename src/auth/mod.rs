//! Authentication: access keys, service tokens, admin tokens, rate limits.

pub mod admin;
pub mod authenticator;
pub mod key_checks;
pub mod keys;
pub mod rate_limit;
pub mod service_token;
