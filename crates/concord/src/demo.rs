//! `concord demo`: a three-member federation on loopback with sample data.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use concord_lab::{demo, smoke};

use crate::out::say;

/// `concord demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// The folder to build the federation in; `demo.json` there lists URLs and tokens.
    #[arg(long, default_value = "concord-demo")]
    dir: PathBuf,
    /// One sub-folder per member, each with CSV or Parquet files, instead of the sample data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The first of the ports the members listen on (two a member: local, peer).
    #[arg(long, default_value_t = 7100)]
    port_base: u16,
    /// Run a scripted tour and exit instead of waiting.
    #[arg(long)]
    smoke: bool,
}

pub async fn run(a: DemoArgs) -> Result<()> {
    let DemoArgs { dir, data, port_base, smoke: smoke_only } = a;
    let sample = data.is_none();
    eprintln!("building the demo federation in {}", dir.display());
    let d = demo::launch(&demo::DemoOptions { dir: dir.clone(), data, port_base, smoke: smoke_only }).await?;
    eprintln!("wrote {}", dir.join("demo.json").display());
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    if smoke_only {
        let steps = smoke::tour(&d, sample).await;
        d.stop().await;
        let mut failed = 0;
        for s in &steps {
            match &s.outcome {
                Ok(detail) => say!("ok      {}\n        {detail}", s.name),
                Err(why) => {
                    failed += 1;
                    say!("FAILED  {}\n        {why}", s.name);
                }
            }
        }
        say!("{} passed, {failed} failed", steps.len() - failed);
        if failed > 0 {
            bail!("{failed} smoke step(s) failed");
        }
        return Ok(());
    }
    let queries: Vec<String> = if sample {
        demo::sample_queries().into_iter().map(String::from).collect()
    } else {
        demo::data_queries(&d.schemas)
    };
    say!("{}", demo::guide(&d.file, &queries));
    if sample {
        say!("{}", demo::showcase(&d.file).await);
    }
    concord_node::run::shutdown_signal().await;
    eprintln!("stopping the demo federation");
    d.stop().await;
    Ok(())
}
