//! Member nodes in processes of their own (`concord node run`), for the benchmarks that need a
//! node's own memory figures or its death: `concord bench load` and `concord bench crash`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord_node::NodeError;
use concord_node::net::client::local_call;

use crate::demo::DemoMember;

/// How long a node may take to answer its status after it was started.
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// The members' node processes, in the members' order. Dropping them stops each: SIGTERM (the
/// node finishes its appends), then SIGKILL if it has not stopped within 10 s.
pub struct NodeProcesses {
    exe: PathBuf,
    members: Vec<DemoMember>,
    /// `None` once killed and reaped: its pid may belong to another process by now.
    children: Vec<Option<Child>>,
}

impl NodeProcesses {
    /// Starts `exe node run` for each member and waits until each answers its status.
    pub async fn start(exe: &Path, members: &[DemoMember]) -> Result<Self, NodeError> {
        let mut nodes = Self { exe: exe.to_owned(), members: members.to_vec(), children: Vec::new() };
        for m in members {
            let child = nodes.spawn(m)?;
            nodes.children.push(Some(child));
        }
        for m in members {
            wait_up(m).await?;
        }
        Ok(nodes)
    }

    /// The process id of member `i`'s node, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Kills member `i`'s node with SIGKILL, wherever it is, and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i`'s node again (killing it first if it still runs) and waits until it
    /// answers.
    pub async fn restart(&mut self, i: usize) -> Result<(), NodeError> {
        let Some(m) = self.members.get(i).cloned() else {
            return Err(NodeError::Internal(format!("no member {i} among {}", self.members.len())));
        };
        self.kill(i);
        self.children[i] = Some(self.spawn(&m)?);
        wait_up(&m).await
    }

    /// `exe node run DIR`, its output appended to [`output_of`] the member's folder.
    fn spawn(&self, m: &DemoMember) -> Result<Child, NodeError> {
        let out_path = output_of(&m.dir);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| NodeError::io(&out_path, e))?;
        Command::new(&self.exe)
            .args(["node", "run"])
            .arg(&m.dir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| NodeError::io(&self.exe, e))
    }
}

impl Drop for NodeProcesses {
    fn drop(&mut self) {
        for c in self.children.iter().flatten() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for c in self.children.iter_mut().flatten() {
            while !matches!(c.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Where a node's own output goes, beside its folder (appended across restarts), so that a node
/// that does not come up says why.
pub fn output_of(dir: &Path) -> PathBuf {
    dir.with_extension("out")
}

/// Waits until member `m`'s node answers its status; an error quotes the node's last lines.
async fn wait_up(m: &DemoMember) -> Result<(), NodeError> {
    let deadline = Instant::now() + START_WITHIN;
    loop {
        let up = local_call(&m.local_url, "GET", "/v1/status", Some(&m.analyst_token), None)
            .await
            .is_ok_and(|r| r.status == 200);
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            let out = std::fs::read_to_string(output_of(&m.dir)).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(30).collect();
            return Err(NodeError::Internal(format!(
                "{} did not come up within {} s; the last lines it wrote ({}):\n{}",
                m.id,
                START_WITHIN.as_secs(),
                output_of(&m.dir).display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
