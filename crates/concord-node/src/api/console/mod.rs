//! The web console: server-rendered pages on the local listener, for analysts, stewards,
//! auditors and delegates who would rather look at a page than read JSON.
//!
//! A user logs in with a local API token; the node keeps the session in memory (a random id in
//! an HttpOnly, SameSite=Strict cookie scoped to `/console`) and checks the token again on
//! every request, so a token removed from the node ends its sessions. Every form carries the
//! session's CSRF token, and a POST whose token or `Origin` does not match is refused. Pages
//! are HTML from `maud` templates, which escape every value taken from data; no page needs
//! JavaScript and none is served. The content security policy allows only this node's own
//! style sheet and images.
//!
//! Invariant: every console page calls the same `Node` methods as the JSON API, with the
//! same role checks; the console adds no power a token does not already have.

mod chart;
mod pages;
mod query;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::NodeError;
use crate::node::Node;
use crate::wire::Role;
use session::Authed;
pub use session::Sessions;

/// The console's state: the node and the sessions of its users.
pub struct Console {
    node: Arc<Node>,
    sessions: Sessions,
    /// Cookies get `Secure` when the listener serves TLS.
    secure: bool,
    /// The members' health as last read, shared by overviews for a few seconds; its lock makes
    /// concurrent overviews wait for one round of calls.
    health: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<crate::wire::MemberHealth>>)>>,
}

/// How long one round of health calls serves the overview.
const HEALTH_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Console {
    /// Every member's health, read at most once per [`HEALTH_TTL`].
    async fn health(&self) -> Arc<Vec<crate::wire::MemberHealth>> {
        let mut held = self.health.lock().await;
        if let Some((at, h)) = held.as_ref()
            && at.elapsed() < HEALTH_TTL
        {
            return h.clone();
        }
        let h = Arc::new(self.node.member_health().await);
        *held = Some((std::time::Instant::now(), h.clone()));
        h
    }
}

/// Largest form a console user may post.
const MAX_FORM: usize = 1024 * 1024;

/// The content security policy of every console page: nothing but this node's own style sheet
/// and images; no script, no frame, forms only to this node.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's routes under `/console`, and `/` leading to it. `secure` marks its cookies
/// `Secure` (the listener serves TLS).
pub fn router(node: Arc<Node>, secure: bool) -> Router {
    let sessions = Sessions::new(&node.cfg.member);
    let console = Arc::new(Console { node, sessions, secure, health: tokio::sync::Mutex::new(None) });
    let pages = Router::new()
        .route("/console", get(pages::overview))
        .route("/console/logout", post(logout))
        .route("/console/query", get(query::form).post(query::run))
        .route("/console/results/{id}/result.csv", get(query::csv))
        .route("/console/results/{id}/chart.svg", get(query::chart))
        .route("/console/datasets", get(pages::datasets))
        .route("/console/budgets.svg", get(pages::budgets_chart))
        .route("/console/access", get(pages::access).post(pages::access_file))
        .route("/console/access/{id}/decide", post(pages::access_decide))
        .route("/console/governance", get(pages::governance).post(pages::propose))
        .route("/console/governance/{id}/vote", post(pages::vote))
        .route("/console/audit", get(pages::audit_page).post(pages::audit_run))
        .route_layer(axum::middleware::from_fn_with_state(console.clone(), require_session));
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/style.css", get(style))
        .merge(pages)
        .layer(axum::middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(console)
}

/// Sends a request without a live session to the login page before its body is read: a
/// client without one holds no connection for longer than its headers take.
async fn require_session(
    State(c): State<Arc<Console>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match session::cookie_value(req.headers(), &c.sessions.session_cookie) {
        Some(id) if c.sessions.is_live(&id) => next.run(req).await,
        _ => Redirect::to("/console/login").into_response(),
    }
}

/// Headers every console answer carries: the content security policy, no sniffing, no
/// framing, no referrer to other sites (a form's `Origin` must name this node), nothing cached.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")],
        include_str!("style.css"),
    )
        .into_response()
}

/// A page of the console around `body`, with the navigation `who`'s role may use.
fn page(who: &Authed, title: &str, body: Markup) -> Markup {
    let links: &[(&str, &str, &[Role])] = &[
        ("/console", "Overview", &[]),
        ("/console/query", "Query", &[Role::Analyst]),
        ("/console/datasets", "Datasets", &[]),
        ("/console/access", "Access requests", &[Role::Analyst, Role::Steward]),
        ("/console/governance", "Governance", &[Role::Delegate, Role::Auditor]),
        ("/console/audit", "Audit", &[Role::Auditor]),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Concord " (who.member) }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    span.brand { "Concord" }
                    span.who { (who.member) " · " (who.federation) " · " (who.role.as_str()) }
                    nav {
                        @for (href, name, roles) in links {
                            @if roles.is_empty() || roles.contains(&who.role) {
                                a href=(href) { (name) }
                            }
                        }
                    }
                    form.logout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(who.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page that says what went wrong, in words, with the HTTP status of the error.
fn error_page(who: Option<&Authed>, e: &NodeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = html! {
        p.refusal role="alert" {
            strong { (e.code().as_str()) } ": " (e.to_string())
        }
    };
    let markup = match who {
        Some(w) => page(w, "Not done", body),
        None => bare_page("Not done", body),
    };
    (status, Html(markup.into_string())).into_response()
}

/// A page without navigation: the login page and errors before a session exists.
fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Concord" }
                link rel="stylesheet" href="/console/style.css";
            }
            body { main.narrow { h1 { (title) } (body) } }
        }
    }
}

/// The login form, with a CSRF token of its own in a short-lived cookie (double submit).
async fn login_page(State(c): State<Arc<Console>>) -> Response {
    login_form(&c, StatusCode::OK, None)
}

fn login_form(c: &Console, status: StatusCode, problem: Option<&str>) -> Response {
    let csrf = session::random_id();
    let body = html! {
        @if let Some(p) = problem { p.refusal role="alert" { (p) } }
        form method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(csrf);
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="off" required;
            p.hint { "A token of this node, from " code { "concord token create --role ROLE" } "." }
            button type="submit" { "Log in" }
        }
    };
    let cookie = session::cookie(&c.sessions.login_cookie, &csrf, 600, c.secure);
    (status, [(header::SET_COOKIE, cookie)], Html(bare_page("Log in to Concord", body).into_string()))
        .into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(State(c): State<Arc<Console>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return login_form(&c, StatusCode::BAD_REQUEST, Some("The form could not be read; log in again."));
    };
    let expected = session::cookie_value(&headers, &c.sessions.login_cookie).unwrap_or_default();
    if !session::same_origin(&headers) || expected.is_empty() || !session::equal(&expected, &form.csrf) {
        return login_form(
            &c,
            StatusCode::FORBIDDEN,
            Some("This form was not sent from this console's login page (CSRF check failed); log in again."),
        );
    }
    let role = match c.node.state.token_role(form.token.trim()) {
        Ok(Some(r)) => Role::parse(&r),
        Ok(None) => None,
        Err(e) => return error_page(None, &e),
    };
    let Some(role) = role else {
        tracing::info!("console login refused: unknown token");
        return login_form(
            &c,
            StatusCode::UNAUTHORIZED,
            Some("Unknown token: this node holds no such token. Create one with `concord token create`."),
        );
    };
    // A login replaces the session this browser held, if any.
    let held = session::cookie_value(&headers, &c.sessions.session_cookie);
    let id = c.sessions.open(form.token.trim(), role, held.as_deref());
    tracing::info!(role = role.as_str(), "console login");
    let mut resp = Redirect::to("/console").into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&session::cookie(
        &c.sessions.session_cookie,
        &id,
        session::MAX_AGE_SECS,
        c.secure,
    )) {
        h.append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session::cookie(&c.sessions.login_cookie, "", 0, c.secure)) {
        h.append(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let who = match session::posted::<session::CsrfOnly>(&c, &headers, &body, &[]) {
        Ok((who, _)) => who,
        Err(r) => return *r,
    };
    c.sessions.close(&who.session);
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::cookie(&c.sessions.session_cookie, "", 0, c.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// A Unix time as RFC 3339 in UTC, to the second.
fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
