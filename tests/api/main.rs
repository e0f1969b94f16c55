//! HTTP API tests: one binary, one module per feature, every request over real HTTP to an
//! in-process app on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod admin_instances;
mod architecture;
mod audit;
mod azure_storage;
mod chat;
mod config_test;
mod errors;
mod hostile_admin;
mod isolation;
mod jwks_admin;
mod jwt_attacks;
mod packaging;
mod refresh;
mod restart;
mod token_exchange;
