//! Starting and stopping a node: its listeners (peer, local, and Flight SQL where configured),
//! the checkpoint loop and the governance pull loop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::NodeError;
use crate::node::Node;
use crate::store::config::NodeDir;

/// Binds a listener, with an error that names the address and what to do.
pub async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    let sa: SocketAddr = addr.parse().map_err(|_| NodeError::Listen {
        addr: addr.to_owned(),
        reason: "not HOST:PORT".into(),
        source: None,
    })?;
    TcpListener::bind(sa).await.map_err(|e| NodeError::Listen {
        addr: addr.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::AddrInUse {
            "the port is already in use; stop the other process or choose another port in concord.toml".into()
        } else {
            e.to_string()
        },
        source: Some(e),
    })
}

/// Handles of a running node.
pub struct RunningNode {
    /// The loaded node both listeners serve.
    pub node: Arc<Node>,
    /// Where the local listener is bound (the port the system chose, if the configuration said 0).
    pub local_addr: SocketAddr,
    /// Where the peer listener is bound (likewise).
    pub peer_addr: SocketAddr,
    /// Where the Arrow Flight SQL listener is bound, if the configuration names one.
    pub flight_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops both listeners and waits for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens a node folder and starts both listeners.
pub async fn start(dir: &NodeDir) -> Result<RunningNode, NodeError> {
    let node = Arc::new(Node::open(dir).await?);
    let peer_listener = bind(&node.cfg.peer_listen).await?;
    let local_listener = bind(&node.cfg.local_listen).await?;
    let local_addr = local_listener.local_addr().map_err(|e| NodeError::io(&dir.root, e))?;
    let peer_addr = peer_listener.local_addr().map_err(|e| NodeError::io(&dir.root, e))?;
    let flight_listener = match &node.cfg.flight_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let flight_addr = flight_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| NodeError::io(&dir.root, e))?;
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(listener) = flight_listener {
        tasks.push(tokio::spawn(crate::api::flight::serve(node.clone(), listener, rx.clone())));
    }
    let peer_task = tokio::spawn(crate::api::peer::serve(node.clone(), peer_listener, rx.clone()));
    let local_task = tokio::spawn(crate::api::serve_local(node.clone(), local_listener, rx.clone()));
    let publish_task = tokio::spawn(crate::node::witness::publish_loop(node.clone(), rx.clone()));
    let pull_task = tokio::spawn(crate::node::governance::pull_loop(node.clone(), rx));
    tracing::info!(member = %node.cfg.member, %local_addr, %peer_addr, ?flight_addr, "node started");
    tasks.extend([peer_task, local_task, publish_task, pull_task]);
    Ok(RunningNode { node, local_addr, peer_addr, flight_addr, shutdown, tasks })
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
