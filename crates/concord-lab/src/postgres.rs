//! A PostgreSQL server of Debian's packages, started for the scenario tests and `concord bench
//! scale` in a folder of their own, on loopback, as an unprivileged user (`postgres` when this
//! process is root, since PostgreSQL refuses to run as root; this process's own user otherwise).
//! The cluster is made with `initdb` in the C locale (text compares byte by byte, as DataFusion
//! compares it) and password authentication (SCRAM), and stopped when the handle is dropped.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use concord_node::NodeError;

/// The superuser the cluster is made with.
pub const SUPERUSER: &str = "concord";

/// A running PostgreSQL server; stopped (immediately) on drop.
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    password: String,
}

fn failed(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Config(format!("PostgreSQL for the tests: {what}: {e}"))
}

/// The folder of PostgreSQL's server programs (`initdb`, `pg_ctl`), the newest installed.
pub fn server_bin() -> Result<PathBuf, NodeError> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        NodeError::Config(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
                .into(),
        )
    })
}

impl PgServer {
    /// Makes a cluster under `folder` (which it takes over: with root, it is handed to user
    /// `postgres`) and starts it on `127.0.0.1:port`.
    pub fn start(folder: &Path, port: u16) -> Result<Self, NodeError> {
        let bin = server_bin()?;
        // Absolute: the server resolves its socket folder from its data folder.
        let folder = &std::path::absolute(folder).map_err(|e| NodeError::io(folder, e))?;
        // /proc/self belongs to this process's effective user.
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let run_as = root.then(|| "postgres".to_owned());
        std::fs::create_dir_all(folder).map_err(|e| NodeError::io(folder, e))?;
        let data = folder.join("pgdata");
        let password = format!(
            "pw-{:016x}",
            crate::demo::SplitMix::new(u64::from(port) ^ std::process::id() as u64).next_u64()
        );
        let pwfile = folder.join("pwfile");
        std::fs::write(&pwfile, &password).map_err(|e| NodeError::io(&pwfile, e))?;
        let server = Self { bin, data, port, run_as, password };
        if let Some(user) = &server.run_as {
            run(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(folder), "chown")?;
        }
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(&server.data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb, "initdb")?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off",
            folder.display()
        );
        let mut start = server.command("pg_ctl");
        start
            .arg("-D")
            .arg(&server.data)
            .arg("-l")
            .arg(folder.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(&mut start, "pg_ctl start")?;
        Ok(server)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A URL of database `db` for `user`, without a password.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection as the superuser to database `db`.
    pub async fn client(&self, db: &str) -> Result<tokio_postgres::Client, NodeError> {
        let mut config: tokio_postgres::Config =
            self.url(SUPERUSER, db).parse().map_err(|e| failed("the URL", e))?;
        config.password(self.password.as_str());
        let (client, connection) =
            config.connect(tokio_postgres::NoTls).await.map_err(|e| failed("connect", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL statements (separated by `;`, in one transaction) as the superuser in
    /// database `db`.
    pub async fn execute(&self, db: &str, sql: &str) -> Result<(), NodeError> {
        self.client(db).await?.batch_execute(sql).await.map_err(|e| {
            let said = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
            let start: String = sql.chars().take(120).collect();
            failed(&start, said)
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = run(&mut stop, "pg_ctl stop") {
            eprintln!("{e}");
        }
    }
}

fn run(c: &mut Command, what: &str) -> Result<(), NodeError> {
    let out = c.output().map_err(|e| failed(what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(what, format!("{}; {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))
    }
}
