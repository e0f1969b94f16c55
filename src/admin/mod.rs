//! The admin API below its handlers: agent instances' create / patch / rotate / disable
//! (`instances`), the request and response bodies (`views`), the validation of admin-written
//! values.

pub mod credentials;
mod error;
pub mod instances;
pub mod provision;
pub mod validate;
pub mod views;

pub use error::AdminError;
