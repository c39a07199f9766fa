//! Datasets read from files: CSV options, conformance errors that say what was found, columns
//! no shared schema can hold named and left out.

use std::sync::Arc;

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use concord_query::dataset::{CsvOptions, DatasetFormat, open};
use datafusion::arrow::array::{Int64Array, ListBuilder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;

fn sales() -> SharedSchema {
    let c = |name: &str, ty: &str| SchemaColumn {
        name: name.into(),
        ty: ColumnType::parse(ty).expect("type"),
        personal: false,
    };
    SharedSchema {
        name: "sales".into(),
        version: 1,
        columns: vec![
            c("region", "utf8"),
            c("price", "decimal(10,2)"),
            c("sold_on", "date32"),
            c("sold_at", "timestamp(s,UTC)"),
        ],
        privacy_unit: None,
    }
}

async fn rows(table: Arc<dyn TableProvider>, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_table("t", table).expect("register");
    let batches = ctx.sql(sql).await.expect("plans").collect().await.expect("runs");
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).expect("formats").to_string();
    text.lines().map(str::to_owned).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn csv_options_read_delimiters_null_markers_and_formats_into_the_shared_types() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("sales.csv");
        std::fs::write(
            &file,
            "region;price;sold_on;sold_at\nnorth;12.50;31/01/2025;31/01/2025 14:05:09\nsouth;NA;01/02/2025;NA\nNA;0.10;15/02/2025;15/02/2025 00:00:00\neast;;20/02/2025;\n",
        )
        .expect("write");
        let csv = CsvOptions {
            delimiter: Some(';'),
            null: Some("NA".into()),
            date_format: Some("%d/%m/%Y".into()),
            timestamp_format: Some("%d/%m/%Y %H:%M:%S".into()),
            ..Default::default()
        };
        let table = open("sales", &file, DatasetFormat::Csv, Some(&sales()), &csv).await.expect("opens");
        let types: Vec<String> = table.schema().fields().iter().map(|f| f.data_type().to_string()).collect();
        assert_eq!(types, ["Utf8", "Decimal128(10, 2)", "Date32", "Timestamp(s, \"UTC\")"]);
        let out = rows(
            table,
            "SELECT region, price, sold_on, sold_at FROM t ORDER BY sold_on",
        )
        .await;
        assert!(out.iter().any(|l| l.contains("north") && l.contains("12.50") && l.contains("2025-01-31") && l.contains("2025-01-31T14:05:09Z")), "{out:#?}");
        assert!(out.iter().any(|l| l.contains("south") && l.contains("2025-02-01") && !l.contains("NA")), "NA is NULL: {out:#?}");
        assert!(out.iter().any(|l| l.contains("0.10") && l.contains("2025-02-15T00:00:00Z")), "{out:#?}");
        assert!(
            out.iter().any(|l| l.contains("east") && l.contains("2025-02-20")),
            "empty fields are NULL beside the NA marker: {out:#?}"
        );
        // The sum of decimals stays exact.
        let table = open("sales", &file, DatasetFormat::Csv, Some(&sales()), &csv).await.expect("opens");
        let sum = rows(table, "SELECT sum(price) AS s FROM t").await;
        assert!(sum.iter().any(|l| l.contains("12.60")), "{sum:#?}");

        // Without the options the same file is one column, and the error says so.
        let e = open("sales", &file, DatasetFormat::Csv, Some(&sales()), &CsvOptions::default())
            .await
            .expect_err("read as comma-separated")
            .to_string();
        assert!(e.contains("is the delimiter ';'?") && e.contains("--delimiter"), "{e}");

        // A value that is not of its column's type is named with its line, and nothing is
        // said about the file's existence.
        let typo = dir.path().join("typo.csv");
        std::fs::write(&typo, "region;price;sold_on;sold_at\nnorth;1.00;31/01/2025;NA\nsouth;n/a;01/02/2025;NA\n")
            .expect("write");
        let e = open("typo", &typo, DatasetFormat::Csv, Some(&sales()), &csv).await.expect_err("n/a").to_string();
        assert!(e.contains("column price") && e.contains("line 3: \"n/a\""), "{e}");
        assert!(!e.contains("exists"), "{e}");

        // A date that does not match the format is an error that names the value's column.
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "region;price;sold_on;sold_at\nnorth;1.00;2025-01-31;31/01/2025 14:05:09\n").expect("write");
        let table = open("bad", &bad, DatasetFormat::Csv, Some(&sales()), &csv).await.expect("opens lazily");
        let ctx = SessionContext::new();
        let e = ctx.read_table(table).expect("reads").collect().await.expect_err("a date in another format");
        assert!(e.to_string().contains("2025-01-31"), "{e}");
    });
}

#[test]
fn a_csv_without_header_takes_the_shared_schemas_names_in_order() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("sales.csv");
        std::fs::write(&file, "north|3.25|2025-03-01|2025-03-01T10:00:00Z|extra\n").expect("write");
        let csv = CsvOptions { delimiter: Some('|'), header: Some(false), ..Default::default() };
        let table = open("sales", &file, DatasetFormat::Csv, Some(&sales()), &csv).await.expect("opens");
        let names: Vec<String> = table.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["region", "price", "sold_on", "sold_at", "column_5"]);
        let out = rows(table, "SELECT price, sold_at FROM t").await;
        assert!(out.iter().any(|l| l.contains("3.25") && l.contains("2025-03-01T10:00:00Z")), "{out:#?}");
    });
}

#[test]
fn options_that_cannot_apply_are_refused_before_reading() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let csv_file = dir.path().join("x.csv");
        std::fs::write(&csv_file, "a,b\n1,2\n").expect("write");
        for (opts, says) in [
            (CsvOptions { delimiter: Some('a'), ..Default::default() }, "cannot separate fields"),
            (CsvOptions { null: Some(String::new()), ..Default::default() }, "--null"),
            (CsvOptions { date_format: Some("dd/mm/yyyy".into()), ..Default::default() }, "strftime"),
            (
                CsvOptions { date_format: Some("%d/%m/%Y".into()), ..Default::default() },
                "name it with --schema",
            ),
        ] {
            let e = open("x", &csv_file, DatasetFormat::Csv, None, &opts).await.expect_err(says).to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        let pq = dir.path().join("x.parquet");
        write_nested_parquet(&pq);
        let opts = CsvOptions { delimiter: Some(';'), ..Default::default() };
        let e = open("x", &pq, DatasetFormat::Parquet, None, &opts).await.expect_err("csv only").to_string();
        assert!(e.contains("apply to CSV files only"), "{e}");
    });
}

fn write_nested_parquet(path: &std::path::Path) {
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("a");
    tags.append(true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(vec![1])), Arc::new(tags.finish())],
    )
    .expect("batch");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[test]
fn a_column_no_shared_schema_can_hold_is_named_and_left_out() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pq = dir.path().join("x.parquet");
        write_nested_parquet(&pq);
        let table =
            open("x", &pq, DatasetFormat::Parquet, None, &CsvOptions::default()).await.expect("opens");
        let names: Vec<String> = table.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id"]);
        let [w] = table.left_out() else { panic!("one column left out: {:?}", table.left_out()) };
        assert!(w.contains("tags") && w.contains("List") && w.contains("nested"), "{w}");
    });
}

#[test]
fn a_timestamp_format_with_an_offset_keeps_the_instant_in_a_zoned_column() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("t.csv");
        std::fs::write(&file, "at\n31/01/2025 14:05:09 +0100\n").expect("write");
        let schema = SharedSchema {
            name: "t".into(),
            version: 1,
            columns: vec![SchemaColumn {
                name: "at".into(),
                ty: ColumnType::parse("timestamp(s,+02:00)").expect("type"),
                personal: false,
            }],
            privacy_unit: None,
        };
        let csv = CsvOptions { timestamp_format: Some("%d/%m/%Y %H:%M:%S %z".into()), ..Default::default() };
        let table = open("t", &file, DatasetFormat::Csv, Some(&schema), &csv).await.expect("opens");
        // The instant is 13:05:09 UTC, shown at +02:00 as 15:05:09.
        let out = rows(table, "SELECT at FROM t").await;
        assert!(out.iter().any(|l| l.contains("2025-01-31T15:05:09+02:00")), "{out:#?}");
    });
}

#[test]
fn a_csv_decimal_with_more_digits_than_its_scale_is_an_error_not_a_rounding() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        for (csv, opts) in [
            (
                "region,price,sold_on,sold_at\nnorth,12.505,2025-01-31,2025-01-31T00:00:00Z\n",
                CsvOptions::default(),
            ),
            (
                "region,price,sold_on,sold_at\nnorth,12.505,2025-01-31,NA\n",
                CsvOptions { null: Some("NA".into()), ..Default::default() },
            ),
        ] {
            let file = dir.path().join("p.csv");
            std::fs::write(&file, csv).expect("write");
            let table =
                open("p", &file, DatasetFormat::Csv, Some(&sales()), &opts).await.expect("opens lazily");
            let ctx = SessionContext::new();
            let e = ctx
                .read_table(table)
                .expect("reads")
                .collect()
                .await
                .expect_err("12.505 is not decimal(10,2)");
            assert!(e.to_string().contains("12.505") && e.to_string().contains("more decimals"), "{e}");
        }
    });
}

#[test]
fn a_time_zone_arrow_does_not_know_is_refused_before_any_charter_holds_it() {
    let with_zone = |tz: &str| SharedSchema {
        name: "t".into(),
        version: 1,
        columns: vec![SchemaColumn {
            name: "at".into(),
            ty: ColumnType::parse(&format!("timestamp(us,{tz})")).expect("the form is right"),
            personal: false,
        }],
        privacy_unit: None,
    };
    for good in ["UTC", "+02:00", "Europe/Paris", "America/Argentina/Buenos_Aires"] {
        concord_query::dataset::check_types(&with_zone(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let e = concord_query::dataset::check_types(&with_zone("Mars/Olympus_Mons"))
        .expect_err("no such zone")
        .to_string();
    assert!(e.contains("Mars/Olympus_Mons") && e.contains("column at"), "{e}");
}
