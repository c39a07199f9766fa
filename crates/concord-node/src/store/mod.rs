//! What the node keeps on disk: its folder and keys (`config`), the SQLite state database
//! (`state`), the transparency log in the same database (`tlog`), what is logged (`entry`) and the
//! private files' modes (`files`, below the others).

pub mod config;
pub mod entry;
pub mod files;
pub mod state;
pub mod tlog;
