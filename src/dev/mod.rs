//! Development tools shipped in the binary: the Azure OpenAI simulator (`sophia simulator`).

pub mod simulator;
