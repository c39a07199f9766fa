//! Integration tests of federated planning: federated = pooled, refusals, the owner's check.

mod chain;
mod common;
mod datasets;
mod every_type;
mod federated_equals_pooled;
mod ipc;
mod limits;
mod owner_check;
mod policy;
mod refusals;
