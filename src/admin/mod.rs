//! The admin API's model, below its handlers: the request and response bodies of agent
//! instances and the audit trail, and the validation of admin-written values.

pub mod validate;
pub mod views;
