//! The typed client of a node's local API: one method per route, taking and returning the
//! types of [`crate::wire`], as the server does. The CLI and the tests use it; nothing else
//! builds a local API request.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::net::client::{Response, local_request};
use crate::wire::{
    AccessAsk, AccessRecord, AuditRequest, AuditResponse, CharterHistory, CharterView, DatasetInfo,
    DecideRequest, Decision, ErrorBody, ErrorCode, EvidencePage, PolicyTest, PolicyTestRequest, Proposals,
    ProposeRequest, Proposed, QueryRequest, QueryResponse, Status, TableList, VoteReport, VoteRequest,
};

/// Why a call to the local API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached, or its URL is malformed.
    #[error(transparent)]
    Unreachable(#[from] crate::NodeError),
    /// The node answered with an error.
    #[error("{message} [{code}]")]
    Api {
        /// The HTTP status of the answer.
        status: u16,
        /// The error's stable code, the same in every API.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// The node's answer is not what the API says.
    #[error("the node's answer is malformed ({0}); are the node and this command the same version?")]
    Malformed(String),
}

impl ClientError {
    /// The error's stable code, when the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A node's local API, as one user (one bearer token) calls it.
#[derive(Clone, Debug)]
pub struct LocalClient {
    base: String,
    token: String,
}

/// A path segment with every byte outside RFC 3986's unreserved set percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl LocalClient {
    /// A client of the node at `base` (`http://host:port`) with `token`.
    pub fn new(base: &str, token: &str) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), token: token.trim().to_owned() }
    }

    /// The node's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Response, ClientError> {
        let resp = local_request(&self.base, method, path, Some(&self.token), body).await?;
        if resp.status == 200 {
            return Ok(resp);
        }
        match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) => {
                Err(ClientError::Api { status: resp.status, code: e.error.code, message: e.error.message })
            }
            Err(_) => Err(ClientError::Malformed(format!(
                "HTTP {} with {}",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).trim()
            ))),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Malformed(e.to_string()))?,
            None => Vec::new(),
        };
        let resp = self.raw(method, path, bytes).await?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Malformed(format!("{path}: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>("GET", path, None).await
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.raw("GET", path, Vec::new()).await?;
        String::from_utf8(resp.body.to_vec()).map_err(|e| ClientError::Malformed(format!("{path}: {e}")))
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/tables`.
    pub async fn tables(&self) -> Result<TableList, ClientError> {
        self.get("/v1/tables").await
    }

    /// `GET /v1/datasets`.
    pub async fn datasets(&self) -> Result<Vec<DatasetInfo>, ClientError> {
        self.get("/v1/datasets").await
    }

    /// `POST /v1/query`.
    pub async fn query(&self, q: &QueryRequest) -> Result<QueryResponse, ClientError> {
        self.call("POST", "/v1/query", Some(q)).await
    }

    /// `GET /v1/log/checkpoint`: the signed note.
    pub async fn checkpoint(&self) -> Result<String, ClientError> {
        self.text("/v1/log/checkpoint").await
    }

    /// `GET /v1/log/tile/{path}`: a tile's bytes.
    pub async fn tile(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        Ok(self.raw("GET", &format!("/v1/log/tile/{path}"), Vec::new()).await?.body.to_vec())
    }

    /// `GET /v1/log/receipt/{index}`: a C2SP tlog-proof.
    pub async fn receipt(&self, index: u64) -> Result<String, ClientError> {
        self.text(&format!("/v1/log/receipt/{index}")).await
    }

    /// `POST /v1/audit`.
    pub async fn audit(&self, a: &AuditRequest) -> Result<AuditResponse, ClientError> {
        self.call("POST", "/v1/audit", Some(a)).await
    }

    /// `POST /v1/policy/test`.
    pub async fn policy_test(&self, t: &PolicyTestRequest) -> Result<PolicyTest, ClientError> {
        self.call("POST", "/v1/policy/test", Some(t)).await
    }

    /// `POST /v1/access/requests`.
    pub async fn file_access_request(&self, ask: &AccessAsk) -> Result<AccessRecord, ClientError> {
        self.call("POST", "/v1/access/requests", Some(ask)).await
    }

    /// `GET /v1/access/requests`.
    pub async fn access_requests(&self) -> Result<Vec<AccessRecord>, ClientError> {
        self.get("/v1/access/requests").await
    }

    /// `POST /v1/access/requests/{id}/{decision}`.
    pub async fn decide(
        &self,
        id: &str,
        decision: Decision,
        d: &DecideRequest,
    ) -> Result<AccessRecord, ClientError> {
        let path = format!("/v1/access/requests/{}/{}", segment(id), decision.as_str());
        self.call("POST", &path, Some(d)).await
    }

    /// `GET /v1/governance/proposals`.
    pub async fn proposals(&self) -> Result<Proposals, ClientError> {
        self.get("/v1/governance/proposals").await
    }

    /// `POST /v1/governance/proposals`.
    pub async fn propose(&self, p: &ProposeRequest) -> Result<Proposed, ClientError> {
        self.call("POST", "/v1/governance/proposals", Some(p)).await
    }

    /// `POST /v1/governance/proposals/{id}/vote`.
    pub async fn vote(&self, id: &str, v: &VoteRequest) -> Result<VoteReport, ClientError> {
        self.call("POST", &format!("/v1/governance/proposals/{}/vote", segment(id)), Some(v)).await
    }

    /// `POST /v1/governance/leave`.
    pub async fn leave(&self) -> Result<VoteReport, ClientError> {
        self.call::<(), _>("POST", "/v1/governance/leave", None).await
    }

    /// `GET /v1/governance/evidence`.
    pub async fn evidence(&self, after: Option<i64>) -> Result<EvidencePage, ClientError> {
        match after {
            Some(a) => self.get(&format!("/v1/governance/evidence?after={a}")).await,
            None => self.get("/v1/governance/evidence").await,
        }
    }

    /// `GET /v1/charter`.
    pub async fn charter(&self, version: Option<u64>) -> Result<CharterView, ClientError> {
        match version {
            Some(v) => self.get(&format!("/v1/charter?version={v}")).await,
            None => self.get("/v1/charter").await,
        }
    }

    /// `GET /v1/charter/history`.
    pub async fn charter_history(&self) -> Result<CharterHistory, ClientError> {
        self.get("/v1/charter/history").await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.text("/metrics").await
    }

    /// `GET /api/openapi.json`.
    pub async fn openapi(&self) -> Result<String, ClientError> {
        self.text("/api/openapi.json").await
    }
}
