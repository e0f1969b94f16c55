//! Tenants' models: the Azure OpenAI / OpenAI-compatible client, its wire types, and the SSE
//! parser its streams go through.

pub mod client;
pub mod endpoint;
pub mod foundry;
pub mod pool;
pub mod responses;
pub mod sse;
pub mod wire;

pub use client::{
    Call, ChatParams, ChatStream, Completion, EmbedInput, ModelClient, ModelEndpoint, UpstreamAuth,
    UpstreamTimeouts,
};
pub use wire::{ChatExtras, StreamPart, ToolCall, ToolCallDelta, WireMessage, WireUsage};
