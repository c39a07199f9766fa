//! Every column type a shared schema can name: random values and NULLs split at random over
//! three owners give, federated, exactly what DataFusion gives over the pooled rows, in the same
//! result types, with every partial result travelling as Arrow IPC.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use concord_charter::ColumnType;
use concord_query::dataset::arrow_type;
use concord_query::ipc::{IpcLimits, decode_limited, encode};
use concord_query::owner::run_subquery;
use concord_query::{
    Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryError, run_federated,
};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Decimal256Array, Int64Array, IntervalDayTimeArray,
    IntervalMonthDayNanoArray, IntervalYearMonthArray, PrimitiveArray, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, IntervalDayTime, IntervalMonthDayNano, IntervalUnit, Schema,
    SchemaRef, Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType,
    TimeUnit, i256,
};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;

/// One row: a group key, the raw value the typed value is made from, and its owner.
type Raw = (Option<u8>, Option<i64>, usize);

fn schema(ty: &DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("v", ty.clone(), true)]))
}

/// The typed values of `raw` in `ty`: in range for the type, sums that stay in range.
fn values(ty: &DataType, raw: &[Option<i64>]) -> ArrayRef {
    let ints = |f: &dyn Fn(i64) -> i64| -> ArrayRef {
        Arc::new(raw.iter().map(|r| r.map(f)).collect::<Int64Array>())
    };
    let cast_to = |a: ArrayRef| cast(&a, ty).expect("castable");
    let strings = |f: &dyn Fn(i64) -> String| -> ArrayRef {
        Arc::new(raw.iter().map(|r| r.map(f)).collect::<StringArray>())
    };
    match ty {
        DataType::Int8 => cast_to(ints(&|r| r % 100)),
        DataType::Int16 => cast_to(ints(&|r| r % 30_000)),
        DataType::Int32 => cast_to(ints(&|r| r * 7_919)),
        DataType::Int64 => cast_to(ints(&|r| r * 1_000_000_007)),
        DataType::UInt8 => cast_to(ints(&|r| r.abs() % 200)),
        DataType::UInt16 => cast_to(ints(&|r| r.abs() % 60_000)),
        DataType::UInt32 => cast_to(ints(&|r| r.abs() * 40_009)),
        DataType::UInt64 => cast_to(ints(&|r| r.abs() * 1_000_000_000_039)),
        DataType::Float32 | DataType::Float64 => {
            let f: PrimitiveArray<datafusion::arrow::datatypes::Float64Type> =
                raw.iter().map(|r| r.map(|r| r as f64 / 8.0)).collect();
            cast_to(Arc::new(f))
        }
        DataType::Decimal128(p, s) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| i128::from(r) * 10i128.pow(u32::from(*p).saturating_sub(10))))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*p, *s)
                .expect("decimal"),
        ),
        DataType::Decimal256(p, s) => Arc::new(
            raw.iter()
                .map(|r| {
                    r.map(|r| i256::from_i128(i128::from(r)).wrapping_mul(i256::from_i128(10i128.pow(30))))
                })
                .collect::<Decimal256Array>()
                .with_precision_and_scale(*p, *s)
                .expect("decimal256"),
        ),
        DataType::Date32 => Arc::new(
            raw.iter().map(|r| r.map(|r| (r % 40_000) as i32)).collect::<PrimitiveArray<Date32Type>>(),
        ),
        DataType::Date64 => Arc::new(
            raw.iter().map(|r| r.map(|r| (r % 40_000) * 86_400_000)).collect::<PrimitiveArray<Date64Type>>(),
        ),
        DataType::Timestamp(..) | DataType::Duration(_) => cast_to(ints(&|r| r * 1_000_003)),
        DataType::Time32(TimeUnit::Second) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| (r.abs() % 86_400) as i32))
                .collect::<PrimitiveArray<Time32SecondType>>(),
        ),
        DataType::Time32(_) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| (r.abs() * 997 % 86_400_000) as i32))
                .collect::<PrimitiveArray<Time32MillisecondType>>(),
        ),
        DataType::Time64(TimeUnit::Microsecond) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| r.abs() * 997_003 % 86_400_000_000))
                .collect::<PrimitiveArray<Time64MicrosecondType>>(),
        ),
        DataType::Time64(_) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| r.abs() * 997_003_001 % 86_400_000_000_000))
                .collect::<PrimitiveArray<Time64NanosecondType>>(),
        ),
        DataType::Interval(IntervalUnit::YearMonth) => {
            Arc::new(raw.iter().map(|r| r.map(|r| (r % 1000) as i32)).collect::<IntervalYearMonthArray>())
        }
        DataType::Interval(IntervalUnit::DayTime) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| IntervalDayTime::new((r % 100) as i32, (r * 7 % 86_400_000) as i32)))
                .collect::<IntervalDayTimeArray>(),
        ),
        DataType::Interval(IntervalUnit::MonthDayNano) => Arc::new(
            raw.iter()
                .map(|r| r.map(|r| IntervalMonthDayNano::new((r % 12) as i32, (r % 30) as i32, r * 1_000)))
                .collect::<IntervalMonthDayNanoArray>(),
        ),
        DataType::Boolean => Arc::new(raw.iter().map(|r| r.map(|r| r % 2 == 0)).collect::<BooleanArray>()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let b: ArrayRef = Arc::new(
                raw.iter()
                    .map(|r| r.map(|r| format!("b{}\u{0}", r % 5).into_bytes()))
                    .collect::<datafusion::arrow::array::BinaryArray>(),
            );
            cast(&b, ty).expect("bytes")
        }
        // Strings of every encoding: few distinct values, so that groups repeat.
        _ => cast_to(strings(&|r| format!("s{}", r % 7))),
    }
}

fn batch(ty: &DataType, rows: &[&Raw]) -> RecordBatch {
    let k: ArrayRef =
        Arc::new(rows.iter().map(|r| r.0.map(|k| format!("k{}", k % 3))).collect::<StringArray>());
    let raw: Vec<Option<i64>> = rows.iter().map(|r| r.1).collect();
    RecordBatch::try_new(schema(ty), vec![k, values(ty, &raw)]).expect("batch")
}

/// Owners in this process that answer as a node does: the owner's check and run, then the
/// answer encoded as Arrow IPC and decoded within the limits a requester applies.
struct IpcOwners {
    tables: BTreeMap<String, Arc<dyn TableProvider>>,
    rules: concord_query::release::Rules,
}

#[async_trait]
impl OwnerClient for IpcOwners {
    async fn partial(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError> {
        let table = self.tables.get(&part.owner).cloned().expect("owner");
        let answer = run_subquery(&part.dataset, table, sql, &self.rules, &Default::default()).await?;
        let bytes = encode(&answer.schema, &answer.batches)?;
        let (schema, batches) = decode_limited(&bytes, &IpcLimits::RESULT)?;
        assert_eq!(schema.as_ref(), answer.schema.as_ref(), "the schema travels unchanged");
        assert_eq!(batches, answer.batches, "the batches travel unchanged");
        Ok(PartialAnswer {
            batches,
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

/// Rules that release aggregates and rows of both columns to every member.
fn open_rules() -> concord_query::release::Rules {
    let policy = "classification = \"public\"\n[columns]\nk = \"plain\"\nv = \"plain\"\n[access]\nrules = '''\npermit (principal, action, resource);\n'''\n";
    concord_query::release::Rules {
        policy: Arc::new(concord_policy::Policy::parse(policy, "open.policy.toml").expect("policy")),
        baseline: concord_policy::Baseline::default(),
        own: false,
        unit_is_row: false,
    }
}

const QUERIES: &[&str] = &[
    "SELECT count(*), count(v), min(v), max(v) FROM t",
    "SELECT k, count(v), min(v), max(v) FROM t GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT v, count(*) AS n FROM t GROUP BY v ORDER BY v NULLS FIRST",
    "SELECT k, sum(v) FROM t GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT sum(v), avg(v), count(v) FROM t",
    "SELECT k, avg(v) FROM t WHERE v IS NOT NULL GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT k, v FROM t ORDER BY k NULLS FIRST, v NULLS FIRST",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Three owners holding `splits` of a table of type `dt` behind IPC, and the pooled rows.
fn federation(dt: &DataType, splits: [RecordBatch; 3]) -> (SessionContext, IpcOwners, SessionContext) {
    let fed = SessionContext::new();
    let owners: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
    fed.register_table(
        "t",
        Arc::new(FederatedTable {
            display: "t".into(),
            schema: schema(dt),
            parts: owners.iter().map(|m| Part { owner: m.clone(), dataset: "data".into() }).collect(),
            shared: true,
            unreachable: vec![],
            withheld: vec![],
        }),
    )
    .expect("register");
    let all = datafusion::arrow::compute::concat_batches(&schema(dt), &splits).expect("pooled rows");
    let tables = owners
        .into_iter()
        .zip(splits)
        .map(|(m, b)| {
            let t: Arc<dyn TableProvider> =
                Arc::new(MemTable::try_new(schema(dt), vec![vec![b]]).expect("mem"));
            (m, t)
        })
        .collect();
    let pooled = SessionContext::new();
    pooled
        .register_table("t", Arc::new(MemTable::try_new(schema(dt), vec![vec![all]]).expect("mem")))
        .expect("register");
    (fed, IpcOwners { tables, rules: open_rules() }, pooled)
}

/// Runs every query over one type; returns the queries DataFusion itself cannot run over the
/// pooled rows (the federated run must then fail too).
async fn one_type(ty: &ColumnType, rows: &[Raw]) -> BTreeSet<usize> {
    let dt = arrow_type(ty);
    let split = |i: usize| batch(&dt, &rows.iter().filter(|r| r.2 == i).collect::<Vec<_>>());
    let (fed, client, pooled) = federation(&dt, [split(0), split(1), split(2)]);
    let mut unsupported = BTreeSet::new();
    for (q, sql) in QUERIES.iter().enumerate() {
        let p = match pooled.sql(sql).await {
            Ok(df) => df.collect().await,
            Err(e) => Err(e),
        };
        let f = run_federated(&fed, sql, &client).await;
        match (p, f) {
            (Ok(p), Ok(f)) => {
                if let Err(diff) = concord_query::compare::compare(&f.batches, &p) {
                    panic!("{ty}: {sql}: {diff}");
                }
                let pooled_types: Vec<DataType> = match p.first() {
                    Some(b) => b.schema().fields().iter().map(|x| x.data_type().clone()).collect(),
                    None => continue,
                };
                let fed_types: Vec<DataType> =
                    f.schema.fields().iter().map(|x| x.data_type().clone()).collect();
                assert_eq!(fed_types, pooled_types, "{ty}: {sql}: result types");
            }
            (Err(_), Err(_)) => {
                unsupported.insert(q);
            }
            (Ok(_), Err(e)) => panic!("{ty}: {sql}: pooled runs, federated fails: {e}; rows {rows:?}"),
            (Err(e), Ok(_)) => panic!("{ty}: {sql}: pooled fails ({e}), federated runs"),
        }
    }
    unsupported
}

fn rows() -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (prop::option::weighted(0.9, 0u8..6), prop::option::weighted(0.8, -5_000i64..5_000), 0usize..3),
        0..60,
    )
}

/// What DataFusion itself cannot compute over a type (the federated run refuses it too):
/// SUM and AVG of non-numbers (durations and intervals sum; durations average).
fn expected_unsupported(ty: &ColumnType) -> BTreeSet<usize> {
    let sums = ty.is_numeric() || matches!(ty, ColumnType::Duration(_) | ColumnType::Interval(_));
    let avgs = ty.is_numeric() || matches!(ty, ColumnType::Duration(_));
    let mut out = BTreeSet::new();
    if !sums {
        out.insert(3);
    }
    if !avgs {
        out.extend([4, 5]);
    }
    if !sums && avgs {
        out.insert(4);
    }
    if sums && !avgs {
        // SUM alone would run; the query asks AVG too.
        out.insert(4);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    #[test]
    fn every_type_federated_equals_pooled(rows in rows()) {
        runtime().block_on(async {
            for ty in ColumnType::examples() {
                let unsupported = one_type(&ty, &rows).await;
                assert_eq!(unsupported, expected_unsupported(&ty), "{ty}: queries DataFusion cannot run");
            }
        });
    }
}

/// A sum past the range of its type: AVG of int64 epoch nanoseconds (whose integer sum would
/// wrap) gives what the pooled AVG gives, which sums in Float64.
#[test]
fn averages_of_values_whose_sum_leaves_the_type_match_the_pooled_average() {
    runtime().block_on(async {
        let cases: [(DataType, ArrayRef); 1] = [(
            DataType::Int64,
            Arc::new(Int64Array::from(
                [[Some(1_700_000_000_000_000_000), Some(1_800_000_000_000_000_000)]; 4].concat(),
            )),
        )];
        for (dt, values) in cases {
            let n = values.len();
            let keys: ArrayRef =
                Arc::new((0..n).map(|i| Some(format!("k{}", i % 2))).collect::<StringArray>());
            let all = RecordBatch::try_new(schema(&dt), vec![keys, values]).expect("batch");
            let part = |i: usize| all.slice(i * n / 3, (i + 1) * n / 3 - i * n / 3);
            let (fed, client, pooled) = federation(&dt, [part(0), part(1), part(2)]);
            for sql in ["SELECT avg(v) FROM t", "SELECT k, avg(v) FROM t GROUP BY k ORDER BY k"] {
                let p = pooled.sql(sql).await.expect("plans").collect().await.expect("pooled runs");
                let f =
                    run_federated(&fed, sql, &client).await.unwrap_or_else(|e| panic!("{dt}: {sql}: {e}"));
                if let Err(diff) = concord_query::compare::compare(&f.batches, &p) {
                    panic!("{dt}: {sql}: {diff}");
                }
            }
        }
    });
}
