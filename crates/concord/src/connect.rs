//! Which node a command talks to, and with which token: `--node`/`--token`, else
//! `CONCORD_NODE`/`CONCORD_TOKEN`, else the profile `concord login` wrote (mode 0600).

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use concord_node::net::local::LocalClient;
use serde::{Deserialize, Serialize};

use crate::out::say;

/// How a command reaches a node's local API.
#[derive(Args, Clone, Debug)]
pub struct Connect {
    /// The node's local listener, e.g. http://127.0.0.1:7100 (default: CONCORD_NODE, then the
    /// profile of `concord login`).
    #[arg(long, env = "CONCORD_NODE", value_name = "URL")]
    pub node: Option<String>,
    /// A bearer token of that node (`concord token create`). Prefer CONCORD_TOKEN or
    /// `concord login`: a token on the command line shows in the process list.
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// What `concord login` keeps.
#[derive(Serialize, Deserialize)]
struct Profile {
    node: String,
    token: String,
}

/// The profile file: `CONCORD_PROFILE`, else `$XDG_CONFIG_HOME/concord/profile.toml`, else
/// `~/.config/concord/profile.toml`.
pub fn profile_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONCORD_PROFILE") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set; set CONCORD_PROFILE to a file")?)
                .join(".config")
        }
    };
    Ok(base.join("concord").join("profile.toml"))
}

fn read_profile() -> Result<Option<Profile>> {
    let path = profile_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read the profile {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the profile {} holds a token and is readable by others (mode {mode:o}); run `chmod 600 {}` or `concord login` again",
                path.display(),
                path.display()
            );
        }
    }
    let p: Profile = toml::from_str(&text)
        .with_context(|| format!("the profile {} is malformed; run `concord login` again", path.display()))?;
    Ok(Some(p))
}

/// Whether the token was written on this command line (not taken from the environment).
fn token_on_command_line() -> bool {
    std::env::args().any(|a| a == "--token" || a.starts_with("--token="))
}

impl Connect {
    /// The client these flags, the environment or the profile name.
    pub fn client(&self) -> Result<LocalClient> {
        if self.token.is_some() && token_on_command_line() {
            eprintln!(
                "warning: a token on the command line shows in the process list; set CONCORD_TOKEN or run `concord login` instead"
            );
        }
        let profile = if self.node.is_none() || self.token.is_none() { read_profile()? } else { None };
        let node = self.node.clone().or_else(|| profile.as_ref().map(|p| p.node.clone())).context(
            "which node? pass --node http://HOST:PORT, set CONCORD_NODE, or run `concord login --node URL`",
        )?;
        let token = self.token.clone().or_else(|| profile.map(|p| p.token)).context(
            "no token: set CONCORD_TOKEN, run `concord login`, or pass --token (it shows in the process list)",
        )?;
        Ok(LocalClient::new(&node, &token))
    }
}

/// `concord login`: checks the token against the node, then keeps both in the profile, 0600.
pub async fn login(node: &str, token_stdin: bool) -> Result<()> {
    let token = if token_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the token from standard input")?;
        line.trim().to_owned()
    } else {
        eprint!("token for {node}: ");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the token")?;
        line.trim().to_owned()
    };
    if token.is_empty() {
        bail!("no token given; create one on the node's host with `concord token create DIR --role ROLE`");
    }
    let client = LocalClient::new(node, &token);
    let status = client.status().await.context("the node did not accept the token")?;
    let path = profile_path()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = toml::to_string(&Profile { node: client.base().to_owned(), token })?;
    write_private(&path, text.as_bytes())?;
    say!(
        "logged in to {} ({} of federation {}) as {}; kept in {}",
        client.base(),
        status.member,
        status.federation,
        status.role,
        path.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` readable by its owner only, replacing it whole.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `concord login`.
#[derive(Args)]
pub struct LoginArgs {
    /// The node's local listener, e.g. http://127.0.0.1:7100.
    #[arg(long, value_name = "URL")]
    pub node: String,
    /// Read the token from standard input (it is read from there anyway when that is not a
    /// terminal); without it, the token is asked for.
    #[arg(long)]
    pub token_stdin: bool,
}
