//! How the other members' nodes answer: each one's peer status, read over pinned mutual TLS
//! with a short deadline, all at once.

use std::time::{Duration, Instant};

use crate::net::client::{Budget, peer_call_with};
use crate::node::Node;
use crate::wire::{MemberHealth, PeerStatus};

/// How long a member's node has to answer a status call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

impl Node {
    /// Every member of the current charter with how its node answers now; this node answers
    /// for itself without a call.
    pub async fn member_health(&self) -> Vec<MemberHealth> {
        let charter = self.charter();
        let keys = self.keys();
        let calls = charter.charter.members.iter().map(|m| {
            let keys = keys.clone();
            async move {
                let mut h = MemberHealth {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    jurisdiction: m.jurisdiction.clone(),
                    charter_version: None,
                    latency_ms: None,
                    problem: None,
                };
                if m.id == self.cfg.member {
                    h.charter_version = Some(self.charter_version());
                    h.latency_ms = Some(0);
                    return h;
                }
                let started = Instant::now();
                let budget = Budget { timeout: STATUS_TIMEOUT, max_bytes: 64 * 1024 };
                match peer_call_with(&keys.tls, m, "GET", "/v1/status", Vec::new(), budget).await {
                    Ok(r) if r.status == 200 => match serde_json::from_slice::<PeerStatus>(&r.body) {
                        Ok(s) if s.member == m.id && s.federation == self.federation() => {
                            h.charter_version = Some(s.charter_version);
                            h.latency_ms = Some(started.elapsed().as_millis() as u64);
                        }
                        Ok(s) => {
                            h.problem = Some(format!(
                                "answers as member {:?} of federation {:?}",
                                s.member, s.federation
                            ))
                        }
                        Err(e) => h.problem = Some(format!("its status cannot be read: {e}")),
                    },
                    Ok(r) => h.problem = Some(r.error_parts().1),
                    Err(e) => h.problem = Some(e.to_string()),
                }
                h
            }
        });
        futures::future::join_all(calls).await
    }
}
