use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use concord_lab::demo::{DemoMember, MemberSpec, setup, start_all};
use concord_node::run::RunningNode;

static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A base port such that `n` consecutive ports are free now and not handed to another test.
pub fn free_ports(n: u16) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut base = 20_000 + (std::process::id() % 200) as u16 * 100;
    loop {
        let range: Vec<u16> = (base..base + n).collect();
        if range.iter().all(|p| !taken.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            taken.extend(range);
            return base;
        }
        base = base.wrapping_add(n).max(20_000);
    }
}

pub fn cases_schema() -> SharedSchema {
    SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
            SchemaColumn { name: "days".into(), ty: ColumnType::Int64, personal: true },
        ],
    }
}

/// Writes `cases.csv` for a member: `rows` of (region, days).
pub fn write_cases(dir: &Path, member: &str, rows: &[(&str, Option<i64>)]) -> PathBuf {
    let folder = dir.join("data").join(member);
    std::fs::create_dir_all(&folder).expect("data folder");
    let path = folder.join("cases.csv");
    let mut s = String::from("region,days\n");
    for (r, d) in rows {
        s.push_str(&format!("{r},{}\n", d.map(|d| d.to_string()).unwrap_or_default()));
    }
    std::fs::write(&path, s).expect("write csv");
    path
}

type CaseRow = (&'static str, Option<i64>);

/// Three members with small `cases` datasets, started.
pub struct Fed {
    pub dir: tempfile::TempDir,
    pub members: Vec<DemoMember>,
    pub nodes: Vec<RunningNode>,
}

impl Fed {
    /// Stops every node; the folder lives on in the returned handle.
    pub async fn stop(self) -> tempfile::TempDir {
        for n in self.nodes {
            n.stop().await;
        }
        self.dir
    }

    pub fn member(&self, id: &str) -> &DemoMember {
        self.members.iter().find(|m| m.id == id).expect("member exists")
    }
}

pub async fn three_members() -> Fed {
    let dir = tempfile::tempdir().expect("temp dir");
    let data: [(&str, Vec<CaseRow>); 3] = [
        ("alpha", vec![("north", Some(3)), ("south", Some(5)), ("north", None)]),
        ("bravo", vec![("north", Some(10)), ("east", Some(1))]),
        ("charlie", vec![("south", Some(2)), ("south", Some(4)), ("east", Some(7)), ("west", None)]),
    ];
    let specs: Vec<MemberSpec> = data
        .iter()
        .map(|(id, rows)| MemberSpec {
            id: (*id).into(),
            name: format!("Member {id}"),
            jurisdiction: id.to_uppercase(),
            files: vec![write_cases(dir.path(), id, rows)],
        })
        .collect();
    let members =
        setup(dir.path(), "test", &specs, vec![cases_schema()], free_ports(6)).await.expect("setup");
    let nodes = start_all(&members).await.expect("nodes start");
    Fed { dir, members, nodes }
}
