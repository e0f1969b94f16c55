//! HTTP API tests: one binary, one module per route family or feature, every request over
//! real HTTP to an in-process app on port 0; `cli` and `azure_e2e` run the real binary (its
//! start-up, signals and logs; on the Azure backends).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod admin_instances;
mod architecture;
mod audit;
mod azure_e2e;
mod azure_storage;
mod chat;
mod cli;
mod config_test;
mod errors;
mod failover;
mod foundry;
mod hostile_admin;
mod infra;
mod isolation;
mod jwks_admin;
mod jwt_attacks;
mod limits;
mod openai;
mod packaging;
mod refresh;
mod responses;
mod restart;
mod retrieval;
mod telemetry;
mod token_exchange;
mod upstream_faults;
mod usage;
