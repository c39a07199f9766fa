//! What the node keeps on disk: its folder and keys (`config`), the SQLite state database
//! (`state`), the transparency log in the same database (`tlog`) and what is logged (`entry`).

pub mod config;
pub mod entry;
pub mod state;
pub mod tlog;
