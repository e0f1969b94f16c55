//! The admin API (admin JWT): agent instances and the audit trail.

pub mod audit;
pub mod instances;
pub mod usage;
