//! Talking to other nodes: mutual TLS pinned by the charter (`tls`), HTTP clients (`client`:
//! HTTP/2 to peers over connections kept in `pool`, HTTP/1.1 to local listeners) and the peer
//! protocol's signed notes (`protocol`).

pub mod client;
pub mod local;
pub mod pool;
pub mod protocol;
pub mod tls;
