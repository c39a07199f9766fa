//! Datasets as DataFusion tables: CSV and Parquet files registered by reference, their inferred
//! schemas, and conformance to a shared schema of the charter.

use std::path::Path;
use std::sync::Arc;

use concord_charter::{ColumnType, SharedSchema};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::logical_expr::TableProviderFilterPushDown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{CsvReadOptions, Expr, ParquetReadOptions, SessionContext, cast, col};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// File formats a dataset may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    Csv,
    Parquet,
}

impl DatasetFormat {
    /// The format from a file's extension.
    pub fn of_path(path: &Path) -> Result<Self, QueryError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("parquet" | "pq") => Ok(Self::Parquet),
            _ => Err(QueryError::Dataset {
                name: path.display().to_string(),
                reason: "unknown file type; use a .csv or .parquet file".into(),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

/// The Arrow type of a shared-schema column type.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date32 => DataType::Date32,
    }
}

/// The shared-schema column type an Arrow type can be read as without loss, if any.
pub fn column_type_of(t: &DataType) -> Option<ColumnType> {
    Some(match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ColumnType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => ColumnType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Utf8,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Date32 | DataType::Date64 => ColumnType::Date32,
        _ => return None,
    })
}

/// The Arrow schema of a shared schema.
pub fn shared_arrow_schema(s: &SharedSchema) -> SchemaRef {
    Arc::new(Schema::new(
        s.columns.iter().map(|c| Field::new(&c.name, arrow_type(c.ty), true)).collect::<Vec<_>>(),
    ))
}

/// Checks that a file's schema offers every column of the shared schema in a compatible type.
/// Integer columns may stand for float64 columns; the dataset is then read with the shared types.
pub fn check_conformance(name: &str, file: &Schema, shared: &SharedSchema) -> Result<(), QueryError> {
    let mut problems = Vec::new();
    for c in &shared.columns {
        match file.field_with_name(&c.name) {
            Err(_) => {
                // Say what was found instead: a header in another case, or one column that
                // holds every name (another delimiter).
                let hint = match file.fields().iter().find(|f| f.name().eq_ignore_ascii_case(&c.name)) {
                    Some(f) => {
                        format!(" (found {}; did you mean {}? names are case-sensitive)", f.name(), c.name)
                    }
                    None => match file.fields().as_ref() {
                        [only] => {
                            let d = [';', '\t', '|'].into_iter().find(|d| only.name().contains(*d));
                            match d {
                                Some(d) => format!(
                                    " (one column found, {:?}: is the delimiter {:?}? the file is read as comma-separated)",
                                    only.name(),
                                    d
                                ),
                                None => format!(" (one column found: {})", only.name()),
                            }
                        }
                        _ => String::new(),
                    },
                };
                problems.push(format!("column {} is missing{hint}", c.name))
            }
            Ok(f) => {
                let have = column_type_of(f.data_type());
                let fits =
                    have == Some(c.ty) || (have == Some(ColumnType::Int64) && c.ty == ColumnType::Float64);
                if !fits {
                    problems.push(format!(
                        "column {} is {} but shared schema {} wants {}",
                        c.name,
                        f.data_type(),
                        shared.name,
                        c.ty.as_str()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(QueryError::Dataset {
            name: name.to_owned(),
            reason: format!("does not conform to shared schema {}: {}", shared.name, problems.join("; ")),
        })
    }
}

fn unreadable(name: &str, path: &Path, e: impl std::fmt::Display) -> QueryError {
    QueryError::Dataset {
        name: name.to_owned(),
        reason: format!(
            "cannot read {}: {e}; check that the file exists, is readable by the node, and is valid {}",
            path.display(),
            DatasetFormat::of_path(path).map(DatasetFormat::as_str).unwrap_or("CSV or Parquet")
        ),
    }
}

/// Opens a dataset file as a table. With `shared`, the shared columns are read with the shared
/// schema's types (and must be convertible), and the other columns as they are.
pub async fn open(
    name: &str,
    path: &Path,
    format: DatasetFormat,
    shared: Option<&SharedSchema>,
) -> Result<Arc<dyn TableProvider>, QueryError> {
    if !path.is_file() {
        return Err(QueryError::Dataset {
            name: name.to_owned(),
            reason: format!(
                "file {} does not exist; register the dataset again with its new path",
                path.display()
            ),
        });
    }
    let ctx = SessionContext::new();
    let p = path.to_str().ok_or_else(|| unreadable(name, path, "path is not UTF-8"))?;
    let df = match format {
        DatasetFormat::Csv => {
            ctx.read_csv(p, CsvReadOptions::new().file_extension(ext(path)).schema_infer_max_records(10_000))
                .await
        }
        DatasetFormat::Parquet => {
            ctx.read_parquet(p, ParquetReadOptions::new().file_extension(ext(path))).await
        }
    }
    .map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    let Some(shared) = shared else {
        return Ok(Arc::new(DatasetTable { inner: df.into_view() }));
    };
    check_conformance(name, df.schema().as_arrow(), shared)?;
    let exprs: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| match shared.columns.iter().find(|c| &c.name == f.name()) {
            // Cast where the value domain changes (narrower integers, floats, dates); string
            // encodings (Utf8View, LargeUtf8) are kept, as a cast would copy every value.
            Some(c)
                if column_type_of(f.data_type()) != Some(ColumnType::Utf8)
                    && f.data_type() != &arrow_type(c.ty) =>
            {
                cast(col(quoted(f.name())), arrow_type(c.ty)).alias(f.name())
            }
            _ => col(quoted(f.name())),
        })
        .collect();
    let df = df.select(exprs).map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    Ok(Arc::new(DatasetTable { inner: df.into_view() }))
}

/// A dataset as a base table. The file's reading (and casts to the shared types) sit inside a
/// view, but a view would be inlined into the plans that read it; the owner's check must see
/// exactly one scan of the dataset, so the view is hidden behind this table.
#[derive(Debug)]
pub struct DatasetTable {
    inner: Arc<dyn TableProvider>,
}

#[async_trait::async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

fn ext(path: &Path) -> &str {
    // read_csv and read_parquet filter files by extension; take the file's own.
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

/// A column name as `col` must see it: quoted, so that dots and capitals are kept.
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads every row once, so that a file that cannot be parsed with its schema is found at
/// registration and not at a peer's first query. Returns the number of rows.
pub async fn scan_all(name: &str, path: &Path, table: Arc<dyn TableProvider>) -> Result<u64, QueryError> {
    let ctx = SessionContext::new();
    let df = ctx.read_table(table).map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    let mut stream = df.execute_stream().await.map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        rows += batch.map_err(|e| unreadable(name, path, e.strip_backtrace()))?.num_rows() as u64;
    }
    Ok(rows)
}

#[cfg(test)]
mod conformance_tests {
    use super::*;
    use concord_charter::SchemaColumn;
    use datafusion::arrow::datatypes::{DataType, Field};

    fn shared() -> SharedSchema {
        SharedSchema {
            name: "cases".into(),
            version: 1,
            columns: vec![
                SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
                SchemaColumn { name: "days".into(), ty: ColumnType::Int64, personal: false },
            ],
        }
    }

    #[test]
    fn a_missing_column_says_what_was_found() {
        let case = Schema::new(vec![
            Field::new("Region", DataType::Utf8, true),
            Field::new("days", DataType::Int64, true),
        ]);
        let e = check_conformance("d", &case, &shared()).expect_err("case differs").to_string();
        assert!(e.contains("found Region; did you mean region?"), "{e}");
        let semicolons = Schema::new(vec![Field::new("region;days", DataType::Utf8, true)]);
        let e = check_conformance("d", &semicolons, &shared()).expect_err("one column").to_string();
        assert!(e.contains("is the delimiter ';'?"), "{e}");
        let fine = Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("days", DataType::Int64, true),
        ]);
        check_conformance("d", &fine, &shared()).expect("conforms");
    }
}
