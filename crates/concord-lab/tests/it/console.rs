//! The web console as a forger and a curious user would try it, over plain HTTP: logins, CSRF,
//! origins, roles, other sessions' results and values that are HTML. The browser tests in
//! `.ci/console` drive the same pages in Chromium.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::three_members;

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value a `Set-Cookie` header gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..at + 64].to_owned()
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One HTTP/1.1 request to `base` (`http://host:port`), read to its end.
async fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let host = base.strip_prefix("http://").expect("http URL");
    let mut tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

/// Logs in to the console at `base` with `token`; returns the session cookie.
async fn login(base: &str, token: &str) -> String {
    let page = http(base, "GET", "/console/login", &[], "").await;
    let pre = page.cookie("concord_login_alpha").expect("login CSRF cookie");
    let cookie = format!("concord_login_alpha={pre}");
    let a = http(
        base,
        "POST",
        "/console/login",
        &[("cookie", &cookie), ("origin", base)],
        &form(&[("csrf", &pre), ("token", token)]),
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let set = a.headers.iter().find(|(k, v)| k == "set-cookie" && v.starts_with("concord_session_alpha="));
    let (_, set) = set.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    format!("concord_session_alpha={}", a.cookie("concord_session_alpha").expect("session"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_forged_forms_wrong_tokens_and_roles_and_escapes_data() {
    let fed = three_members().await;
    let alpha = fed.member("alpha");
    let base = alpha.local_url.as_str();

    // No session: the console asks to log in; every page carries the security policy.
    let a = http(base, "GET", "/console", &[], "").await;
    assert_eq!((a.status, a.header("location")), (303, Some("/console/login")));
    let page = http(base, "GET", "/console/login", &[], "").await;
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("default-src 'none'")));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));

    // A wrong token, and a right token without the login page's CSRF cookie, make no session.
    let pre = page.cookie("concord_login_alpha").expect("cookie");
    let cookie = format!("concord_login_alpha={pre}");
    let wrong = form(&[("csrf", &pre), ("token", &format!("concord_{}", "0".repeat(64)))]);
    let a = http(base, "POST", "/console/login", &[("cookie", &cookie)], &wrong).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("Unknown token") && a.cookie("concord_session_alpha").is_none());
    let no_cookie = form(&[("csrf", &pre), ("token", &alpha.analyst_token)]);
    let a = http(base, "POST", "/console/login", &[], &no_cookie).await;
    assert_eq!(a.status, 403);
    assert!(a.cookie("concord_session_alpha").is_none());

    let analyst = login(base, &alpha.analyst_token).await;
    let query = http(base, "GET", "/console/query", &[("cookie", &analyst)], "").await;
    assert_eq!(query.status, 200);
    let csrf = query.csrf();
    let sql = "SELECT '<b id=injected>bold</b>' AS label, 1 AS n";

    // Forms without the session's CSRF token, or from another origin, run nothing.
    let forged = form(&[("sql", sql)]);
    let a = http(base, "POST", "/console/query", &[("cookie", &analyst)], &forged).await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("CSRF check failed"), "{}", a.body);
    let other = form(&[("csrf", &csrf), ("sql", sql), ("purpose", "analysis")]);
    let evil = [("cookie", analyst.as_str()), ("origin", "http://evil.example")];
    assert_eq!(http(base, "POST", "/console/query", &evil, &other).await.status, 403);
    let opaque = [("cookie", analyst.as_str()), ("origin", "null")];
    assert_eq!(http(base, "POST", "/console/query", &opaque, &other).await.status, 403);

    // A blank purpose is refused, as the JSON API refuses it.
    let blank = form(&[("csrf", &csrf), ("sql", sql), ("purpose", " ")]);
    let a = http(base, "POST", "/console/query", &[("cookie", &analyst), ("origin", base)], &blank).await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("purpose must be one line of text"), "{}", a.body);

    // A value that is HTML comes back as text.
    let a = http(base, "POST", "/console/query", &[("cookie", &analyst), ("origin", base)], &other).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("&lt;b id=injected&gt;bold&lt;/b&gt;"), "{}", a.body);
    assert!(!a.body.contains("<b id=injected>"));
    let csv_path = {
        let at = a.body.find("/console/results/").expect("a CSV link");
        a.body[at..].split('"').next().expect("link").to_owned()
    };
    let csv = http(base, "GET", &csv_path, &[("cookie", &analyst)], "").await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("label,n\n"), "{}", csv.body);

    // Another session, even of the same token, cannot read this session's result.
    let second = login(base, &alpha.analyst_token).await;
    assert_eq!(http(base, "GET", &csv_path, &[("cookie", &second)], "").await.status, 404);

    // A role sees the pages of its role only, and says which role a page needs.
    let steward = login(base, &alpha.steward_token).await;
    let a = http(base, "GET", "/console/query", &[("cookie", &steward)], "").await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("needs a token of role analyst"), "{}", a.body);
    assert!(!a.body.contains("href=\"/console/query\""), "no link to a page the role cannot use");

    // A session id that is not one leads to the login page.
    let made_up = format!("concord_session_alpha={}", "ab".repeat(32));
    let a = http(base, "GET", "/console/query", &[("cookie", &made_up)], "").await;
    assert_eq!((a.status, a.header("location")), (303, Some("/console/login")));

    // A cookie planted beside the session's, with another value, picks no session.
    let planted = format!("{analyst}; concord_session_alpha={}", "cd".repeat(32));
    let a = http(base, "GET", "/console/query", &[("cookie", &planted)], "").await;
    assert_eq!((a.status, a.header("location")), (303, Some("/console/login")));
    // Without a session a form is not even read: the answer leads to the login page.
    let a = http(base, "POST", "/console/query", &[("origin", base)], &other).await;
    assert_eq!((a.status, a.header("location")), (303, Some("/console/login")));

    // Logging out ends the session.
    let logout = form(&[("csrf", &csrf)]);
    let a = http(base, "POST", "/console/logout", &[("cookie", &analyst), ("origin", base)], &logout).await;
    assert_eq!(a.status, 303);
    let a = http(base, "GET", "/console/query", &[("cookie", &analyst)], "").await;
    assert_eq!(a.status, 303);
    fed.stop().await;
}
