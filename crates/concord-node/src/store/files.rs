//! Files the node writes that others must not read: created 0600, kept 0600.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::NodeError;

/// Opens (creating it with mode 0600) an SQLite database file, and makes it and its WAL and
/// shared-memory files private: they hold the whole log and the token hashes. SQLite creates the
/// `-wal` and `-shm` files with the database file's mode.
///
/// Invariant: an existing database file is never opened here, only its mode changed by path.
/// Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
/// included: a descriptor opened and closed beside a live connection would let another
/// process take the database for unused, checkpoint it and delete the WAL under the node.
pub fn private_database(path: &Path) -> Result<(), NodeError> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(NodeError::io(path, e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        // The WAL and shared-memory files come and go with connections (SQLite removes them
        // when the last one closes, maybe another process's or a closing log writer's): one
        // gone meanwhile needs no mode.
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(&p, e)),
        }
    }
    Ok(())
}
