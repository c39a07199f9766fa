//! Console sessions: in memory, bound to a token that is checked again on every request; CSRF
//! tokens and same-origin checks for every form.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Console;
use super::query::StoredResult;
use crate::NodeError;
use crate::wire::Role;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "concord_session";
/// The login form's CSRF cookie (double submit: there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "concord_login_csrf";
/// A session ends this long after its login, whatever it does.
pub const MAX_AGE_SECS: u64 = 8 * 3600;
/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(3600);
/// Sessions held at once; a login beyond them ends the least recently used.
const MAX_SESSIONS: usize = 256;
/// Query results a session keeps for its CSV download and chart.
const RESULTS_KEPT: usize = 4;

struct Session {
    token: String,
    role: Role,
    csrf: String,
    opened: Instant,
    seen: Instant,
    results: VecDeque<(String, Arc<StoredResult>)>,
}

/// The console's sessions.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `token` of `role`; returns its id.
    pub fn open(&self, token: &str, role: Role) -> String {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let id = random_id();
        map.insert(
            id.clone(),
            Session {
                token: token.to_owned(),
                role,
                csrf: random_id(),
                opened: now,
                seen: now,
                results: VecDeque::new(),
            },
        );
        id
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The token, role and CSRF token of a live session, touched as seen.
    fn get(&self, id: &str) -> Option<(String, Role, String)> {
        let mut map = self.lock();
        let now = Instant::now();
        let s = map.get_mut(id)?;
        if !live(s, now) {
            map.remove(id);
            return None;
        }
        s.seen = now;
        Some((s.token.clone(), s.role, s.csrf.clone()))
    }

    /// Keeps a query result for the session's downloads; returns its id.
    pub fn keep_result(&self, session: &str, result: Arc<StoredResult>) -> Option<String> {
        let mut map = self.lock();
        let s = map.get_mut(session)?;
        let id = random_id();
        s.results.push_back((id.clone(), result));
        while s.results.len() > RESULTS_KEPT {
            s.results.pop_front();
        }
        Some(id)
    }

    /// A result this session kept.
    pub fn result(&self, session: &str, id: &str) -> Option<Arc<StoredResult>> {
        let map = self.lock();
        map.get(session)?.results.iter().find(|(k, _)| equal(k, id)).map(|(_, r)| r.clone())
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

/// The value of cookie `name` in the request.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
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
    let Some(id) = cookie_value(headers, SESSION_COOKIE) else {
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

    #[test]
    fn cookies_are_read_by_exact_name_and_secrets_compared_whole() {
        let h = headers(&[("cookie", "x_concord_session=bad; concord_session=good"), ("cookie", "other=1")]);
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("good"));
        assert_eq!(cookie_value(&h, "other").as_deref(), Some("1"));
        assert!(equal("abc", "abc") && !equal("abc", "abd") && !equal("abc", "ab") && !equal("", "a"));
        assert!(cookie("n", "v", 10, true).ends_with("; Secure"));
        assert!(!cookie("n", "v", 10, false).contains("Secure"));
    }
}
