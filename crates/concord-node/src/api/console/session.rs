//! Console sessions: in memory, bound to a token that is checked again on every request; CSRF
//! tokens and same-origin checks for every form.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Console;
use crate::NodeError;
use crate::wire::Role;

/// A result kept for a session's CSV download and chart.
pub struct StoredResult {
    pub(super) schema: arrow::datatypes::SchemaRef,
    pub(super) batches: Vec<arrow::record_batch::RecordBatch>,
}

/// A session ends this long after its login, whatever it does.
pub const MAX_AGE_SECS: u64 = 8 * 3600;
/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(3600);
/// Sessions held at once; a login beyond them ends the least recently used.
const MAX_SESSIONS: usize = 256;
/// Sessions of one token at once; a login beyond them ends that token's least recently used.
const MAX_PER_TOKEN: usize = 8;
/// Query results a session keeps for its CSV download and chart.
const RESULTS_KEPT: usize = 4;
/// Largest result (Arrow memory) the console keeps.
pub const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of results kept by all sessions together; beyond them the oldest results go first.
const MAX_KEPT_BYTES: usize = 256 * 1024 * 1024;

struct Kept {
    id: String,
    seq: u64,
    bytes: usize,
    result: Arc<StoredResult>,
}

struct Session {
    token: String,
    role: Role,
    csrf: String,
    opened: Instant,
    seen: Instant,
    results: VecDeque<Kept>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    kept_bytes: usize,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, id: &str) {
        if let Some(s) = self.sessions.remove(id) {
            self.kept_bytes -= s.results.iter().map(|k| k.bytes).sum::<usize>();
        }
    }

    /// Ends the least recently seen of the sessions `which` picks.
    fn remove_oldest(&mut self, which: impl Fn(&Session) -> bool) {
        let oldest = self
            .sessions
            .iter()
            .filter(|(_, s)| which(s))
            .min_by_key(|(_, s)| s.seen)
            .map(|(k, _)| k.clone());
        if let Some(id) = oldest {
            self.remove(&id);
        }
    }

    /// Drops the oldest kept result of any session.
    fn drop_oldest_result(&mut self) -> bool {
        let oldest = self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.results.front().map(|k| (k.seq, id.clone())))
            .min()
            .map(|(_, id)| id);
        let Some(id) = oldest else { return false };
        if let Some(k) = self.sessions.get_mut(&id).and_then(|s| s.results.pop_front()) {
            self.kept_bytes -= k.bytes;
        }
        true
    }
}

/// The console's sessions, and the names of its cookies, which carry this node's member id:
/// nodes on one host (cookies do not tell ports apart) keep their own sessions.
pub struct Sessions {
    inner: Mutex<Inner>,
    /// The session cookie's name.
    pub session_cookie: String,
    /// The login form's CSRF cookie's name (double submit: there is no session yet).
    pub login_cookie: String,
}

/// The user of a request: a live session whose token still has an allowed role.
pub struct Authed {
    /// The session's id (the cookie's value).
    pub session: String,
    /// The token's role.
    pub role: Role,
    /// The session's CSRF token, which every form carries.
    pub csrf: String,
    /// This node's member id.
    pub member: String,
    /// The federation's name.
    pub federation: String,
}

impl Sessions {
    /// No sessions yet, for the node of `member`.
    pub fn new(member: &str) -> Self {
        Self {
            inner: Mutex::default(),
            session_cookie: format!("concord_session_{member}"),
            login_cookie: format!("concord_login_{member}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `token` of `role`, ending `replacing` (the session the browser
    /// held, if any); returns its id.
    pub fn open(&self, token: &str, role: Role, replacing: Option<&str>) -> String {
        let mut inner = self.lock();
        let now = Instant::now();
        if let Some(old) = replacing {
            inner.remove(old);
        }
        let dead: Vec<String> =
            inner.sessions.iter().filter(|(_, s)| !live(s, now)).map(|(k, _)| k.clone()).collect();
        for id in dead {
            inner.remove(&id);
        }
        if inner.sessions.values().filter(|s| equal(&s.token, token)).count() >= MAX_PER_TOKEN {
            inner.remove_oldest(|s| equal(&s.token, token));
        }
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.remove_oldest(|_| true);
        }
        let id = random_id();
        let session = Session {
            token: token.to_owned(),
            role,
            csrf: random_id(),
            opened: now,
            seen: now,
            results: VecDeque::new(),
        };
        inner.sessions.insert(id.clone(), session);
        id
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Whether `id` is a live session (checked before a request's body is read).
    pub fn is_live(&self, id: &str) -> bool {
        self.lock().sessions.get(id).is_some_and(|s| live(s, Instant::now()))
    }

    /// The token, role and CSRF token of a live session, touched as seen.
    fn get(&self, id: &str) -> Option<(String, Role, String)> {
        let mut inner = self.lock();
        let now = Instant::now();
        let s = inner.sessions.get_mut(id)?;
        if !live(s, now) {
            inner.remove(id);
            return None;
        }
        s.seen = now;
        Some((s.token.clone(), s.role, s.csrf.clone()))
    }

    /// Keeps a query result of `bytes` for the session's downloads; returns its id, or `None`
    /// when it is over [`MAX_RESULT_BYTES`]. A session keeps its last four; all sessions
    /// together keep at most 256 MiB, the oldest results going first.
    pub fn keep_result(&self, session: &str, result: Arc<StoredResult>, bytes: usize) -> Option<String> {
        if bytes > MAX_RESULT_BYTES {
            return None;
        }
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let id = random_id();
        let s = inner.sessions.get_mut(session)?;
        s.results.push_back(Kept { id: id.clone(), seq, bytes, result });
        let dropped =
            if s.results.len() > RESULTS_KEPT { s.results.pop_front().map_or(0, |k| k.bytes) } else { 0 };
        inner.kept_bytes = inner.kept_bytes + bytes - dropped;
        while inner.kept_bytes > MAX_KEPT_BYTES && inner.drop_oldest_result() {}
        Some(id)
    }

    /// A result this session kept.
    pub fn result(&self, session: &str, id: &str) -> Option<Arc<StoredResult>> {
        let inner = self.lock();
        inner.sessions.get(session)?.results.iter().find(|k| equal(&k.id, id)).map(|k| k.result.clone())
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.opened) < Duration::from_secs(MAX_AGE_SECS) && now.duration_since(s.seen) < IDLE
}

/// 32 random bytes as hex.
pub fn random_id() -> String {
    let raw: [u8; 32] = rand::random();
    concord_charter::hex(&raw)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to `/console`, `Secure` over TLS.
pub fn cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in the request; none when the request carries two different
/// values for it (a cookie set for a narrower path by someone else must not pick the session).
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = values.next()?;
    values.all(|v| v == first).then(|| first.to_owned())
}

/// Whether a POST comes from a page of this node: its `Origin` (or, lacking one, its
/// `Referer`), when sent, names the host the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from =
        headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER)).and_then(|v| v.to_str().ok());
    match from {
        // Browsers send `Origin: null` from opaque origins (sandboxed frames, data: URLs).
        Some(o) => {
            let rest = o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")).unwrap_or("");
            rest.split('/').next() == Some(host)
        }
        None => true,
    }
}

/// The user of a page: a live session whose token still has one of `roles` (any when empty).
/// Without a session the answer leads to the login page; a role that may not see the page
/// gets it said in words.
pub fn viewer(c: &Console, headers: &HeaderMap, roles: &[Role]) -> Result<Authed, Denied> {
    let Some(id) = cookie_value(headers, &c.sessions.session_cookie) else {
        return Err(Box::new(Redirect::to("/console/login").into_response()));
    };
    let Some((token, role, csrf)) = c.sessions.get(&id) else {
        return Err(Box::new(Redirect::to("/console/login").into_response()));
    };
    // The token must still be this node's, with the same role: removing it ends the session.
    match c.node.state.token_role(&token) {
        Ok(Some(r)) if Role::parse(&r) == Some(role) => {}
        Ok(_) => {
            c.sessions.close(&id);
            return Err(Box::new(Redirect::to("/console/login").into_response()));
        }
        Err(e) => return Err(Box::new(super::error_page(None, &e))),
    }
    let who = Authed {
        session: id,
        role,
        csrf,
        member: c.node.cfg.member.clone(),
        federation: c.node.federation().to_owned(),
    };
    if !roles.is_empty() && !roles.contains(&role) {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let e = NodeError::Forbidden(format!(
            "role {role} may not use this page; it needs a token of role {}",
            names.join(", ")
        ));
        return Err(Box::new(super::error_page(Some(&who), &e)));
    }
    Ok(who)
}

/// The answer to a request the console does not serve: the login page, or a page that says why.
pub type Denied = Box<Response>;

/// A form with nothing but its CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfOnly {}

#[derive(serde::Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// The user and the form of a POST: a live session of one of `roles`, the session's CSRF
/// token in the form and, when the browser says where the form came from, this node.
pub fn posted<T: serde::de::DeserializeOwned>(
    c: &Console,
    headers: &HeaderMap,
    body: &[u8],
    roles: &[Role],
) -> Result<(Authed, T), Denied> {
    let who = viewer(c, headers, roles)?;
    let sent = serde_urlencoded::from_bytes::<CsrfField>(body).map(|f| f.csrf).unwrap_or_default();
    if !same_origin(headers) || !equal(&sent, &who.csrf) {
        tracing::info!("console form refused: CSRF check failed");
        let e = NodeError::Forbidden(
            "this form was not sent from a page of this console (CSRF check failed); reload the page and send it again"
                .into(),
        );
        return Err(Box::new(super::error_page(Some(&who), &e)));
    }
    let form = serde_urlencoded::from_bytes::<T>(body).map_err(|e| {
        let e = NodeError::BadRequest(format!(
            "the form cannot be read: {e}; reload the page and fill it in again"
        ));
        Box::new(super::error_page(Some(&who), &e))
    })?;
    Ok((who, form))
}

/// A result this session does not hold (another session's, or one no longer kept).
pub fn not_found() -> Denied {
    Box::new((StatusCode::NOT_FOUND, "no such result in this session; run the query again").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, axum::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_form_from_another_origin_or_an_opaque_one_is_not_this_nodes() {
        let host = ("host", "127.0.0.1:7100");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:7100")])));
        assert!(same_origin(&headers(&[host, ("referer", "http://127.0.0.1:7100/console/query")])));
        assert!(same_origin(&headers(&[host])), "a client that says nothing is judged by its CSRF token");
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:7101")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:7100.evil.example")])));
        assert!(!same_origin(&headers(&[("origin", "http://127.0.0.1:7100")])), "no host, no match");
    }

    fn empty() -> Arc<StoredResult> {
        Arc::new(StoredResult { schema: Arc::new(arrow::datatypes::Schema::empty()), batches: Vec::new() })
    }

    #[test]
    fn sessions_are_bounded_per_token_and_a_login_replaces_the_browsers_session() {
        let s = Sessions::new("alpha");
        assert_eq!(s.session_cookie, "concord_session_alpha");
        let first = s.open("tok", Role::Analyst, None);
        let ids: Vec<String> = (0..MAX_PER_TOKEN).map(|_| s.open("tok", Role::Analyst, None)).collect();
        assert!(!s.is_live(&first), "the token's least recently used session ended");
        assert!(ids.iter().all(|id| s.is_live(id)));
        let other = s.open("other", Role::Steward, None);
        let again = s.open("other", Role::Steward, Some(&other));
        assert!(!s.is_live(&other) && s.is_live(&again));
    }

    #[test]
    fn kept_results_are_bounded_per_session_and_in_all() {
        let s = Sessions::new("alpha");
        let a = s.open("a", Role::Analyst, None);
        assert_eq!(s.keep_result(&a, empty(), MAX_RESULT_BYTES + 1), None, "too large to keep");
        let kept: Vec<String> = (0..5).map(|_| s.keep_result(&a, empty(), 1).expect("kept")).collect();
        assert!(s.result(&a, &kept[0]).is_none(), "a session keeps its last four");
        assert!(kept[1..].iter().all(|id| s.result(&a, id).is_some()));
        // Other sessions' large results push out the oldest, whoever kept them.
        let mut big = Vec::new();
        for i in 0..=(MAX_KEPT_BYTES / MAX_RESULT_BYTES) {
            let b = s.open(&format!("b{i}"), Role::Analyst, None);
            big.push((b.clone(), s.keep_result(&b, empty(), MAX_RESULT_BYTES).expect("kept")));
        }
        assert!(s.result(&a, &kept[1]).is_none(), "the oldest result went first");
        assert!(s.result(&big[0].0, &big[0].1).is_none());
        let (last, id) = big.last().expect("one");
        assert!(s.result(last, id).is_some());
        assert!(s.lock().kept_bytes <= MAX_KEPT_BYTES);
        assert!(s.result(&a, "not-an-id").is_none() && s.result("no-session", id).is_none());
    }

    #[test]
    fn cookies_are_read_by_exact_name_and_secrets_compared_whole() {
        let h = headers(&[("cookie", "x_concord_session=bad; concord_session=good"), ("cookie", "other=1")]);
        assert_eq!(cookie_value(&h, "concord_session").as_deref(), Some("good"));
        assert_eq!(cookie_value(&h, "other").as_deref(), Some("1"));
        let twice = headers(&[("cookie", "concord_session=mine; concord_session=planted")]);
        assert_eq!(cookie_value(&twice, "concord_session"), None, "two values pick no session");
        assert!(equal("abc", "abc") && !equal("abc", "abd") && !equal("abc", "ab") && !equal("", "a"));
        assert!(cookie("n", "v", 10, true).ends_with("; Secure"));
        assert!(!cookie("n", "v", 10, false).contains("Secure"));
    }
}
