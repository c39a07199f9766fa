//! Talking to other nodes: mutual TLS pinned by the charter (`tls`), HTTP/1.1 clients (`client`)
//! and the peer protocol's signed notes (`protocol`).

pub mod client;
pub mod local;
pub mod protocol;
pub mod tls;
