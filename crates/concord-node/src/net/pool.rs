//! Open HTTP/2 connections to peers, reused across calls: one per peer endpoint and expected
//! pin, multiplexing concurrent calls. A connection is opened (TCP, pinned mutual TLS with
//! ALPN `h2`) only when none is open; it is forgotten after [`IDLE`] without a call or
//! [`MAX_AGE`] after it opened, and then closes once its last call has its answer.
//!
//! Invariant: a pooled connection is found only under the pin it was verified against, so a
//! charter version that changes a member's pin never reuses a connection to the old key; and
//! the pool belongs to one set of this node's TLS keys, so new keys open new connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;

/// A pooled connection unused this long is forgotten (and closes).
pub const IDLE: Duration = Duration::from_secs(10);
/// A pooled connection this old takes no new calls: well within a peer listener's connection
/// lifetime (a query timeout plus the idle time), so a listener seldom has to close one.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Most connections kept: more endpoints than members of any charter.
const MAX_ENTRIES: usize = 1024;

/// Where a connection goes and whom it must reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// `host:port` of the peer listener.
    pub endpoint: String,
    /// The pin the server's key was checked against (`None`: a candidate's call to any server).
    pub pin: Option<String>,
}

struct Entry {
    send: SendRequest<Full<Bytes>>,
    /// The pin the server presented at the handshake.
    server_pin: String,
    opened: Instant,
    used: Instant,
    id: u64,
}

/// The open connections of one set of this node's TLS keys.
#[derive(Default)]
pub struct Pool {
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Pool {
    /// A connection to `key` that can take a call now, with the server's pin; `None` when there
    /// is none, or it closed, or it is too old for new calls.
    pub fn get(&self, key: &Key) -> Option<(SendRequest<Full<Bytes>>, String)> {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map.get_mut(key)?;
        if e.send.is_closed() || e.opened.elapsed() >= MAX_AGE {
            map.remove(key);
            return None;
        }
        e.used = Instant::now();
        Some((e.send.clone(), e.server_pin.clone()))
    }

    /// Keeps a newly opened connection to `key` for later calls, and forgets it once it has been
    /// idle for [`IDLE`]. Must be called within a Tokio runtime.
    pub fn put(&self, key: Key, send: SendRequest<Full<Bytes>>, server_pin: String) {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key.clone(), Entry { send, server_pin, opened: now, used: now, id });
        }
        let entries = Arc::downgrade(&self.entries);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE).await;
                let Some(entries) = entries.upgrade() else { return };
                let mut map = entries.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get(&key) {
                    Some(e) if e.id == id => {
                        if e.used.elapsed() >= IDLE || e.send.is_closed() || e.opened.elapsed() >= MAX_AGE {
                            map.remove(&key);
                            return;
                        }
                    }
                    // Replaced by a newer connection, or already forgotten.
                    _ => return,
                }
            }
        });
    }

    /// Forgets the connection to `key` (after it failed a call).
    pub fn forget(&self, key: &Key) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Connections kept now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
