//! SOPHIA: a multi-tenant AI agent gateway, served as an Azure Functions custom handler.
//!
//! The binary (`src/main.rs`) is a thin shell over this library: [`startup::Application`]
//! builds everything from [`config::Settings`] and serves [`router::router`].

pub mod admin;
pub mod auth;
pub mod azure_auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod dev;
pub mod diagnostics;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod knowledge;
pub mod limits;
pub mod llm;
pub mod router;
pub mod routes;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod upstream;
pub mod usage;
