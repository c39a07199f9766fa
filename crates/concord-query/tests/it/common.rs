use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use concord_query::owner::run_subquery;
use concord_query::{Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryError};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;

pub type Row = (Option<String>, Option<i64>, Option<i64>, Option<f64>);

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("g2", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
        Field::new("y", DataType::Float64, true),
    ]))
}

pub fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(rows.iter().map(|r| r.0.clone()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.3).collect::<Float64Array>()),
        ],
    )
    .expect("valid batch")
}

/// The default policy: aggregates for every member, every column a group key, no rows.
pub fn permissive() -> concord_query::release::Rules {
    let columns: Vec<String> = schema().fields().iter().map(|f| f.name().clone()).collect();
    concord_query::release::Rules {
        policy: Arc::new(
            concord_policy::Policy::default_for(&columns, &concord_policy::AllowList::Everyone)
                .expect("default policy"),
        ),
        baseline: concord_policy::Baseline::default(),
        own: false,
        unit_is_row: false,
    }
}

/// Open data: every column plain, rows for every member.
pub fn open_data() -> concord_query::release::Rules {
    let policy = r#"
classification = "public"
[columns]
k = "plain"
g2 = "plain"
x = "plain"
y = "plain"
[access]
rules = '''
permit (principal, action, resource);
'''
"#;
    concord_query::release::Rules {
        policy: Arc::new(concord_policy::Policy::parse(policy, "open.policy.toml").expect("open policy")),
        baseline: concord_policy::Baseline::default(),
        own: false,
        unit_is_row: false,
    }
}

pub fn mem(rows: &[Row]) -> Arc<dyn TableProvider> {
    Arc::new(MemTable::try_new(schema(), vec![vec![batch(rows)]]).expect("mem table"))
}

/// Owners in this process, each answering with the real owner-side check and execution.
pub struct LocalOwners {
    pub tables: BTreeMap<String, Arc<dyn TableProvider>>,
    /// The rules every owner applies: the permissive default unless a test sets others.
    pub rules: concord_query::release::Rules,
}

#[async_trait]
impl OwnerClient for LocalOwners {
    async fn partial(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError> {
        let table = self.tables.get(&part.owner).cloned().ok_or_else(|| QueryError::Unreachable {
            member: part.owner.clone(),
            reason: "not running".into(),
        })?;
        let answer = run_subquery(&part.dataset, table, sql, &self.rules, &Default::default()).await?;
        Ok(PartialAnswer {
            batches: answer.batches,
            contribution: Contribution {
                member: part.owner.clone(),
                dataset: part.dataset.clone(),
                rows_scanned: answer.rows_scanned,
                groups_released: answer.groups_released,
                receipt_digest: None,
                release: answer.report,
            },
        })
    }
}

/// A federation of members `m0..mN` holding the given row splits, plus the pooled context.
pub fn federation(splits: &[Vec<Row>]) -> (SessionContext, LocalOwners, SessionContext) {
    let fed = SessionContext::new();
    let members: Vec<String> = (0..splits.len()).map(|i| format!("m{i}")).collect();
    let table = FederatedTable {
        display: "t".into(),
        schema: schema(),
        parts: members.iter().map(|m| Part { owner: m.clone(), dataset: "data".into() }).collect(),
        shared: true,
        unreachable: vec![],
        withheld: vec![],
    };
    fed.register_table("t", Arc::new(table)).expect("register");
    let single = FederatedTable {
        display: "m0.data".into(),
        schema: schema(),
        parts: vec![Part { owner: "m0".into(), dataset: "data".into() }],
        shared: false,
        unreachable: vec![],
        withheld: vec![],
    };
    fed.register_table("m0_data", Arc::new(single)).expect("register");
    let owners = LocalOwners {
        tables: members.iter().zip(splits).map(|(m, rows)| (m.clone(), mem(rows))).collect(),
        rules: permissive(),
    };
    let pooled = SessionContext::new();
    let all: Vec<Row> = splits.iter().flatten().cloned().collect();
    pooled.register_table("t", mem(&all)).expect("register");
    pooled.register_table("m0_data", mem(&splits[0])).expect("register");
    (fed, owners, pooled)
}

pub use concord_query::compare::{Cell, cells as try_cells};

pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    try_cells(batches).expect("formattable")
}

/// Equal up to the relative float tolerance of `concord_query::compare`.
pub fn assert_same(sql: &str, fed: &[RecordBatch], pooled: &[RecordBatch]) {
    if let Err(diff) = concord_query::compare::compare(fed, pooled) {
        panic!("{sql}: {diff}\nfederated {:?}\npooled {:?}", cells(fed), cells(pooled));
    }
}
