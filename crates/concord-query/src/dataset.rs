//! Datasets as DataFusion tables: CSV and Parquet files registered by reference, their inferred
//! schemas, and conformance to a shared schema of the charter.

use std::path::Path;
use std::sync::Arc;

use concord_charter::{ColumnType, SharedSchema};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::functions::expr_fn::nullif;
use datafusion::logical_expr::{LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, ParquetReadOptions, SessionContext, cast, col, lit,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// Where a dataset's rows are read from: a file in one of two formats, or a member's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// Comma-separated (or otherwise delimited) text, read as [`CsvOptions`] say.
    Csv,
    /// Apache Parquet, read with the types it stores.
    Parquet,
    /// A table of the member's PostgreSQL database, where the owner's plans run.
    Postgres,
    /// Parquet files on the member's Apache DataFusion Ballista cluster, where the owner's plans
    /// run.
    Ballista,
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

    /// The format of this lowercase name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Csv, Self::Parquet, Self::Postgres, Self::Ballista].into_iter().find(|f| f.as_str() == s)
    }

    /// The format's lowercase name, as serialized: `csv`, `parquet`, `postgres` or `ballista`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
            Self::Postgres => "postgres",
            Self::Ballista => "ballista",
        }
    }

    /// Whether the rows are in a file beside the node.
    pub fn is_file(self) -> bool {
        matches!(self, Self::Csv | Self::Parquet)
    }
}

/// The Arrow type of a shared-schema column type.
pub fn arrow_type(t: &ColumnType) -> DataType {
    use concord_charter::{DictionaryKey as K, IntervalUnit as I, TimeUnit as T};
    use datafusion::arrow::datatypes::{IntervalUnit, TimeUnit};
    let unit = |u: &T| match u {
        T::Second => TimeUnit::Second,
        T::Millisecond => TimeUnit::Millisecond,
        T::Microsecond => TimeUnit::Microsecond,
        T::Nanosecond => TimeUnit::Nanosecond,
    };
    match t {
        ColumnType::Int8 => DataType::Int8,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::UInt8 => DataType::UInt8,
        ColumnType::UInt16 => DataType::UInt16,
        ColumnType::UInt32 => DataType::UInt32,
        ColumnType::UInt64 => DataType::UInt64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal128 { precision, scale } => DataType::Decimal128(*precision, *scale as i8),
        ColumnType::Decimal256 { precision, scale } => DataType::Decimal256(*precision, *scale as i8),
        ColumnType::Date32 => DataType::Date32,
        ColumnType::Date64 => DataType::Date64,
        ColumnType::Timestamp { unit: u, tz } => DataType::Timestamp(unit(u), tz.as_deref().map(Arc::from)),
        ColumnType::Time32(u) => DataType::Time32(unit(u)),
        ColumnType::Time64(u) => DataType::Time64(unit(u)),
        ColumnType::Duration(u) => DataType::Duration(unit(u)),
        ColumnType::Interval(I::YearMonth) => DataType::Interval(IntervalUnit::YearMonth),
        ColumnType::Interval(I::DayTime) => DataType::Interval(IntervalUnit::DayTime),
        ColumnType::Interval(I::MonthDayNano) => DataType::Interval(IntervalUnit::MonthDayNano),
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::LargeUtf8 => DataType::LargeUtf8,
        ColumnType::Utf8View => DataType::Utf8View,
        ColumnType::Dictionary { key, large } => DataType::Dictionary(
            Box::new(match key {
                K::Int8 => DataType::Int8,
                K::Int16 => DataType::Int16,
                K::Int32 => DataType::Int32,
                K::Int64 => DataType::Int64,
                K::UInt8 => DataType::UInt8,
                K::UInt16 => DataType::UInt16,
                K::UInt32 => DataType::UInt32,
                K::UInt64 => DataType::UInt64,
            }),
            Box::new(if *large { DataType::LargeUtf8 } else { DataType::Utf8 }),
        ),
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Binary => DataType::Binary,
        ColumnType::LargeBinary => DataType::LargeBinary,
        ColumnType::BinaryView => DataType::BinaryView,
    }
}

/// The SQL name of an Arrow type, as people write it in SQL (`BIGINT`, `DECIMAL(15,2)`,
/// `TIMESTAMP WITH TIME ZONE`); Arrow's own spelling for the few types SQL has no word for.
pub fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INTEGER UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "BYTEA".into()
        }
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Interval(_) => "INTERVAL".into(),
        DataType::Dictionary(_, v) => sql_type(v),
        other => other.to_string(),
    }
}

/// The shared-schema column type of a file's column: its own type where a shared schema can
/// name it, else the type it is read as without loss (float16 as float32, 32- and 64-bit
/// decimals as 128-bit, fixed-size binary as binary, dictionaries of other values as their
/// values). A column that cannot be shared gets the reason, for the owner to read.
pub fn column_type_of(t: &DataType) -> Result<ColumnType, String> {
    use concord_charter::IntervalUnit as I;
    use datafusion::arrow::datatypes::IntervalUnit;
    Ok(match t {
        DataType::Int8 => ColumnType::Int8,
        DataType::Int16 => ColumnType::Int16,
        DataType::Int32 => ColumnType::Int32,
        DataType::Int64 => ColumnType::Int64,
        DataType::UInt8 => ColumnType::UInt8,
        DataType::UInt16 => ColumnType::UInt16,
        DataType::UInt32 => ColumnType::UInt32,
        DataType::UInt64 => ColumnType::UInt64,
        DataType::Float16 | DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => decimal_type_of(t)?,
        DataType::Date32 => ColumnType::Date32,
        DataType::Date64 => ColumnType::Date64,
        DataType::Timestamp(u, tz) => {
            ColumnType::Timestamp { unit: time_unit_of(u), tz: tz.as_deref().map(str::to_owned) }
        }
        DataType::Time32(u) => ColumnType::Time32(time_unit_of(u)),
        DataType::Time64(u) => ColumnType::Time64(time_unit_of(u)),
        DataType::Duration(u) => ColumnType::Duration(time_unit_of(u)),
        DataType::Interval(IntervalUnit::YearMonth) => ColumnType::Interval(I::YearMonth),
        DataType::Interval(IntervalUnit::DayTime) => ColumnType::Interval(I::DayTime),
        DataType::Interval(IntervalUnit::MonthDayNano) => ColumnType::Interval(I::MonthDayNano),
        DataType::Utf8 => ColumnType::Utf8,
        DataType::LargeUtf8 => ColumnType::LargeUtf8,
        DataType::Utf8View => ColumnType::Utf8View,
        DataType::Dictionary(key, value) => dictionary_type_of(key, value)?,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Binary | DataType::FixedSizeBinary(_) => ColumnType::Binary,
        DataType::LargeBinary => ColumnType::LargeBinary,
        DataType::BinaryView => ColumnType::BinaryView,
        DataType::Null
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..)
        | DataType::Union(..)
        | DataType::RunEndEncoded(..) => return Err(unshareable(t)),
    })
}

/// The shared time unit of an Arrow time unit.
fn time_unit_of(u: &datafusion::arrow::datatypes::TimeUnit) -> concord_charter::TimeUnit {
    use concord_charter::TimeUnit as T;
    use datafusion::arrow::datatypes::TimeUnit;
    match u {
        TimeUnit::Second => T::Second,
        TimeUnit::Millisecond => T::Millisecond,
        TimeUnit::Microsecond => T::Microsecond,
        TimeUnit::Nanosecond => T::Nanosecond,
    }
}

/// The shared type of an Arrow decimal: 32-, 64- and 128-bit ones as 128-bit.
fn decimal_type_of(t: &DataType) -> Result<ColumnType, String> {
    Ok(match t {
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s)
            if *s >= 0 && *p >= 1 =>
        {
            ColumnType::Decimal128 { precision: *p, scale: *s as u8 }
        }
        DataType::Decimal256(p, s) if *s >= 0 && *p >= 1 => {
            ColumnType::Decimal256 { precision: *p, scale: *s as u8 }
        }
        _ => {
            return Err(
                "a decimal with a negative scale cannot be shared; store it with scale 0 or more".into()
            );
        }
    })
}

/// The shared type of an Arrow dictionary: a dictionary of strings with the same keys, or the
/// type of the values it encodes.
fn dictionary_type_of(key: &DataType, value: &DataType) -> Result<ColumnType, String> {
    use concord_charter::DictionaryKey as K;
    if !matches!(value, DataType::Utf8 | DataType::LargeUtf8) {
        return column_type_of(value);
    }
    let key = match key {
        DataType::Int8 => K::Int8,
        DataType::Int16 => K::Int16,
        DataType::Int32 => K::Int32,
        DataType::Int64 => K::Int64,
        DataType::UInt8 => K::UInt8,
        DataType::UInt16 => K::UInt16,
        DataType::UInt32 => K::UInt32,
        DataType::UInt64 => K::UInt64,
        other => return Err(format!("a dictionary with {other} keys is not an Arrow dictionary")),
    };
    Ok(ColumnType::Dictionary { key, large: value == &DataType::LargeUtf8 })
}

/// Why a column of type `t` (untyped, nested or run-end encoded) cannot be shared.
fn unshareable(t: &DataType) -> String {
    match t {
        DataType::Null => "holds only empty values, so its type is unknown; give the file a typed column (Parquet) or some values".into(),
        DataType::RunEndEncoded(..) => {
            "is run-end encoded, which DataFusion cannot aggregate; write it plain or dictionary-encoded".into()
        }
        _ => "is nested (a list, struct, map or union); shared schemas hold flat columns: store one column per field".into(),
    }
}

/// Whether a file's column of type `file` is read as the shared type `shared` without loss:
/// the same type, a wider integer, a float from a narrower float or any integer, a decimal with
/// at least as many digits on both sides of the point, the same instant in a finer unit, another
/// encoding of strings or of bytes, a date in the other width.
pub fn fits(file: &DataType, shared: &ColumnType) -> bool {
    let want = arrow_type(shared);
    if file == &want {
        return true;
    }
    if let DataType::Dictionary(_, value) = file {
        return fits(value, shared);
    }
    match (file, &want) {
        (f, w) if int_range(f).is_some() && int_range(w).is_some() => {
            let (a, b) = (int_range(f), int_range(w));
            matches!((a, b), (Some((fl, fh)), Some((wl, wh))) if wl <= fl && fh <= wh)
        }
        // Integers stand for float64 values (the rule of the first shared schemas; 64-bit values
        // beyond 2^53 are rounded), for float32 values only up to 16 bits (exact).
        (f, DataType::Float64) if int_range(f).is_some() => true,
        (f, DataType::Float32) if int_range(f).is_some() => int_digits(f).is_some_and(|d| d <= 5),
        (DataType::Float16, DataType::Float32 | DataType::Float64)
        | (DataType::Float32, DataType::Float64) => true,
        (f, DataType::Decimal128(p, s) | DataType::Decimal256(p, s)) if int_digits(f).is_some() => {
            int_digits(f).is_some_and(|d| i16::from(*p) - i16::from(*s) >= d)
        }
        (
            DataType::Decimal32(fp, fs)
            | DataType::Decimal64(fp, fs)
            | DataType::Decimal128(fp, fs)
            | DataType::Decimal256(fp, fs),
            DataType::Decimal128(p, s) | DataType::Decimal256(p, s),
        ) => *fs >= 0 && s >= fs && i16::from(*p) - i16::from(*s) >= i16::from(*fp) - i16::from(*fs),
        (DataType::Date32, DataType::Date64) | (DataType::Date64, DataType::Date32) => true,
        (DataType::Timestamp(fu, ftz), DataType::Timestamp(u, tz)) => {
            // The same instants: both with a zone or both without, in a unit as fine or finer.
            ftz.is_some() == tz.is_some() && unit_rank(u) >= unit_rank(fu)
        }
        (DataType::Time32(fu) | DataType::Time64(fu), DataType::Time32(u) | DataType::Time64(u))
        | (DataType::Duration(fu), DataType::Duration(u)) => unit_rank(u) >= unit_rank(fu),
        (f, w) if plain_string(f) && (plain_string(w) || matches!(w, DataType::Dictionary(..))) => true,
        (f, w) if any_bytes(f) && any_bytes(w) => true,
        _ => false,
    }
}

/// Digits before the point an integer type needs (whether it is signed or not).
fn int_digits(t: &DataType) -> Option<i16> {
    match t {
        DataType::Int8 | DataType::UInt8 => Some(3),
        DataType::Int16 | DataType::UInt16 => Some(5),
        DataType::Int32 | DataType::UInt32 => Some(10),
        DataType::Int64 => Some(19),
        DataType::UInt64 => Some(20),
        _ => None,
    }
}

/// The smallest and largest values of an integer type.
fn int_range(t: &DataType) -> Option<(i128, i128)> {
    Some(match t {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// Time units from the coarsest (seconds, 0) to the finest (nanoseconds, 3).
fn unit_rank(u: &datafusion::arrow::datatypes::TimeUnit) -> u8 {
    use datafusion::arrow::datatypes::TimeUnit::*;
    match u {
        Second => 0,
        Millisecond => 1,
        Microsecond => 2,
        Nanosecond => 3,
    }
}

/// Bytes in any encoding: plain, large, view or fixed-size.
fn any_bytes(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_)
    )
}

/// Checks what the charter crate checks by form only: every time zone is one Arrow knows (an
/// offset or an IANA name), so that no dataset fails to read for it later.
pub fn check_types(schema: &SharedSchema) -> Result<(), QueryError> {
    for c in &schema.columns {
        if let ColumnType::Timestamp { tz: Some(tz), .. } = &c.ty {
            tz.parse::<datafusion::arrow::array::timezone::Tz>().map_err(|e| {
                QueryError::Refused(format!(
                    "shared schema {}: column {} has time zone {tz:?}, which is not one: {e}; write UTC, an offset like +02:00, or an IANA name like Europe/Paris",
                    schema.name, c.name
                ))
            })?;
        }
    }
    Ok(())
}

/// The Arrow schema of a shared schema.
pub fn shared_arrow_schema(s: &SharedSchema) -> SchemaRef {
    Arc::new(Schema::new(
        s.columns.iter().map(|c| Field::new(&c.name, arrow_type(&c.ty), true)).collect::<Vec<_>>(),
    ))
}

/// Checks that a file's schema offers every column of the shared schema in a compatible type.
/// Integer columns may stand for float64 columns; the dataset is then read with the shared types.
/// With `types` false (a CSV file, whose values are parsed as the shared types), names only.
pub fn check_conformance(
    name: &str,
    file: &Schema,
    shared: &SharedSchema,
    types: bool,
) -> Result<(), QueryError> {
    check_conformance_at(name, file, shared, types, &|_, _| None)
}

/// [`check_conformance`], with `locate` naming where a column's first value that is not of
/// its shared type is (`line 4: "n/a"`).
fn check_conformance_at(
    name: &str,
    file: &Schema,
    shared: &SharedSchema,
    types: bool,
    locate: &dyn Fn(&str, &ColumnType) -> Option<String>,
) -> Result<(), QueryError> {
    let mut problems = Vec::new();
    for c in &shared.columns {
        match file.field_with_name(&c.name) {
            Err(_) => {
                let hint = missing_hint(file, &c.name);
                problems.push(format!("column {} is missing{hint}", c.name))
            }
            // Read as text by a CSV reader that would parse a number: some value is not one.
            Ok(f)
                if !types
                    && (c.ty.is_numeric() || c.ty == ColumnType::Boolean)
                    && plain_string(f.data_type()) =>
            {
                let at = locate(&c.name, &c.ty).map(|w| format!(", first at {w}")).unwrap_or_default();
                problems.push(format!(
                    "column {} holds text that is not a {} for shared schema {}{at} (a marker such as NA for NULL is given with --null)",
                    c.name, c.ty, shared.name
                ));
            }
            Ok(f) => {
                if types && !fits(f.data_type(), &c.ty) {
                    problems.push(format!(
                        "column {} is {} but shared schema {} wants {}, and {} cannot be read as {} without loss",
                        c.name,
                        f.data_type(),
                        shared.name,
                        c.ty,
                        f.data_type(),
                        c.ty
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

/// What a file has instead of a missing column `name`, in parentheses: a header in another case,
/// or one column that holds every name (another delimiter); else nothing.
fn missing_hint(file: &Schema, name: &str) -> String {
    // Say what was found instead: a header in another case, or one column that
    // holds every name (another delimiter).
    match file.fields().iter().find(|f| f.name().eq_ignore_ascii_case(name)) {
        Some(f) => format!(" (found {}; did you mean {}? names are case-sensitive)", f.name(), name),
        None => match file.fields().as_ref() {
            [only] => {
                let d = [';', '\t', '|'].into_iter().find(|d| only.name().contains(*d));
                match d {
                    Some(d) => format!(
                        " (one column found, {:?}: is the delimiter {:?}? give it with --delimiter)",
                        only.name(),
                        d
                    ),
                    None => format!(" (one column found: {})", only.name()),
                }
            }
            _ => String::new(),
        },
    }
}

fn unreadable(name: &str, path: &Path, e: impl std::fmt::Display) -> QueryError {
    let format = DatasetFormat::of_path(path).map(DatasetFormat::as_str).unwrap_or("CSV or Parquet");
    let hint = match std::fs::File::open(path) {
        Err(_) => "check that the file exists and is readable by the node".to_owned(),
        Ok(_) => format!("check that it is valid {format}"),
    };
    QueryError::Dataset {
        name: name.to_owned(),
        reason: format!("cannot read {}: {e}; {hint}", path.display()),
    }
}

/// Where the first value of `column` that is not a `ty` is in a CSV file: `line N: "value"`
/// (lines counted from 1, the header included; a field that spans lines shifts the count).
/// Read again from the start, as text; only on the way to an error.
fn first_bad_value(
    path: &Path,
    csv: &CsvOptions,
    names: &Schema,
    column: &str,
    ty: &ColumnType,
) -> Option<String> {
    use datafusion::arrow::array::{Array as _, AsArray as _};
    let index = names.index_of(column).ok()?;
    let text = Schema::new(
        names.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect::<Vec<_>>(),
    );
    let header = csv.header.unwrap_or(true);
    let mut builder = datafusion::arrow::csv::ReaderBuilder::new(Arc::new(text))
        .with_header(header)
        .with_delimiter(csv.delimiter.map(|d| d as u8).unwrap_or(b','));
    if let Some(n) = &csv.null {
        builder = builder.with_null_regex(regex::Regex::new(&exactly(n)).ok()?);
    }
    let reader = builder.build(std::fs::File::open(path).ok()?).ok()?;
    let target = arrow_type(ty);
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.ok()?;
        let values = batch.column(index);
        let cast = datafusion::arrow::compute::cast(values, &target).ok()?;
        let strings = values.as_string::<i32>();
        for i in 0..batch.num_rows() {
            if values.is_valid(i) && cast.is_null(i) {
                return Some(format!("line {}: {:?}", row + i + 1 + usize::from(header), strings.value(i)));
            }
        }
        row += batch.num_rows();
    }
    None
}

/// How a CSV file is read. Every option left out takes its default: comma-separated, a header
/// line, empty fields as NULL, dates and timestamps as ISO 8601 / RFC 3339 text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvOptions {
    /// The one ASCII character between fields; `None` for a comma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// `Some(false)`: the file has no header line; with a shared schema its columns are the
    /// schema's, in order, else `column_1`, `column_2`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// A field that stands for NULL (besides an empty one), such as `NA` or `\N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<String>,
    /// How the shared schema's date columns are written, in `strftime` form (`%d/%m/%Y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_format: Option<String>,
    /// How the shared schema's timestamp columns are written (`%d/%m/%Y %H:%M:%S`, with `%z`
    /// for an offset); a value without an offset is read as UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_format: Option<String>,
}

impl CsvOptions {
    /// Whether every option is left out, so the file is read the default way.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Checks the options before any file is read.
    pub fn check(&self, name: &str) -> Result<(), QueryError> {
        let bad = |reason: String| QueryError::Dataset { name: name.to_owned(), reason };
        if let Some(d) = self.delimiter
            && (!d.is_ascii() || d.is_ascii_alphanumeric() || matches!(d, '"' | '\n' | '\r'))
        {
            return Err(bad(format!(
                "delimiter {d:?} cannot separate fields; use one ASCII character such as ';', '|' or a tab"
            )));
        }
        if let Some(n) = &self.null
            && (n.is_empty() || n.contains(['\n', '\r']) || n.len() > 64)
        {
            return Err(bad(
                "--null takes the text that stands for NULL, such as NA (one line, at most 64 bytes)".into(),
            ));
        }
        for (what, f) in
            [("--date-format", &self.date_format), ("--timestamp-format", &self.timestamp_format)]
        {
            if let Some(f) = f
                && (!f.contains('%') || f.len() > 128)
            {
                return Err(bad(format!("{what} {f:?} is not a strftime format such as %d/%m/%Y")));
            }
        }
        Ok(())
    }

    /// The options that differ from the defaults, in words.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = self.delimiter {
            out.push(format!("delimiter {d:?}"));
        }
        if self.header == Some(false) {
            out.push("no header line".into());
        }
        if let Some(n) = &self.null {
            out.push(format!("null {n:?}"));
        }
        if let Some(f) = &self.date_format {
            out.push(format!("dates {f:?}"));
        }
        if let Some(f) = &self.timestamp_format {
            out.push(format!("timestamps {f:?}"));
        }
        out
    }
}

/// The text of a regular expression that matches exactly `s`.
/// A regular expression for a CSV field that is `s` or empty: with a null marker, an empty
/// field stays NULL as it is without one.
fn exactly(s: &str) -> String {
    let mut out = String::from("^(?:");
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str(")?$");
    out
}

/// Types the CSV reader parses itself; others are read as text and cast.
fn csv_parses(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
            | DataType::Date32
            | DataType::Date64
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Timestamp(..)
            | DataType::Utf8
            | DataType::Utf8View
            | DataType::Boolean
    ) || matches!(t, DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8)
}

/// Opens a dataset file as a table. With `shared`, the shared columns are read with the shared
/// schema's types (and must be convertible), and the other columns as they are; a column no
/// shared schema could hold (nested, untyped) is left out and named in
/// [`DatasetTable::left_out`]. `csv` applies to CSV files only.
pub async fn open(
    name: &str,
    path: &Path,
    format: DatasetFormat,
    shared: Option<&SharedSchema>,
    csv: &CsvOptions,
) -> Result<Arc<DatasetTable>, QueryError> {
    check_open(name, path, format, shared, csv)?;
    let ctx = SessionContext::new();
    let p = path.to_str().ok_or_else(|| unreadable(name, path, "path is not UTF-8"))?;
    // Columns read as text that become another type: (name, the shared type, the format).
    let (df, parsed) = match format {
        DatasetFormat::Csv => read_csv_file(&ctx, name, path, p, shared, csv).await?,
        DatasetFormat::Parquet => {
            let read = ctx.read_parquet(p, ParquetReadOptions::new().file_extension(ext(path))).await;
            (read.map_err(|e| unreadable(name, path, e.strip_backtrace()))?, Vec::new())
        }
        DatasetFormat::Postgres | DatasetFormat::Ballista => {
            return Err(QueryError::Dataset {
                name: name.to_owned(),
                reason: format!("is in {}, not a file the node reads", format.as_str()),
            });
        }
    };
    if let Some(shared) = shared
        && format != DatasetFormat::Csv
    {
        check_conformance(name, df.schema().as_arrow(), shared, true)?;
    }
    let mut left_out = Vec::new();
    let mut exprs: Vec<Expr> = Vec::new();
    for f in df.schema().fields() {
        match served_column(f, shared, csv, &parsed) {
            Ok(e) => exprs.push(e),
            Err(why) => left_out.push(why),
        }
    }
    let df = df.select(exprs).map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    let plan = df.logical_plan().clone();
    Ok(Arc::new(DatasetTable { inner: df.into_view(), plan, left_out }))
}

/// Refuses, before anything is read, a file that is not there and CSV options that cannot
/// apply: to another format, or date formats without a shared schema.
fn check_open(
    name: &str,
    path: &Path,
    format: DatasetFormat,
    shared: Option<&SharedSchema>,
    csv: &CsvOptions,
) -> Result<(), QueryError> {
    // A directory of Parquet files is one dataset (as a Ballista cluster's executors share it).
    let readable = path.is_file() || (format == DatasetFormat::Parquet && path.is_dir());
    if !readable {
        return Err(QueryError::Dataset {
            name: name.to_owned(),
            reason: format!(
                "file {} does not exist; register the dataset again with its new path",
                path.display()
            ),
        });
    }
    if format != DatasetFormat::Csv && !csv.is_default() {
        return Err(QueryError::Dataset {
            name: name.to_owned(),
            reason: format!("CSV options ({}) apply to CSV files only", csv.describe().join(", ")),
        });
    }
    csv.check(name)?;
    if shared.is_none() && (csv.date_format.is_some() || csv.timestamp_format.is_some()) {
        return Err(QueryError::Dataset {
            name: name.to_owned(),
            reason: "--date-format and --timestamp-format apply to the date and timestamp columns of a shared schema; name it with --schema".into(),
        });
    }
    Ok(())
}

/// Reads a CSV file (at `path`, `p` as text): its types inferred, its columns checked against
/// the shared schema, then read again in the shared types. Also returns the columns read as
/// text that become another type.
async fn read_csv_file<'c>(
    ctx: &SessionContext,
    name: &str,
    path: &Path,
    p: &str,
    shared: Option<&SharedSchema>,
    csv: &'c CsvOptions,
) -> Result<(DataFrame, Vec<(String, DataType, Option<&'c str>)>), QueryError> {
    let null = csv.null.as_deref().map(exactly);
    let header = csv.header.unwrap_or(true);
    let opts = || {
        CsvReadOptions::new()
            .file_extension(ext(path))
            .schema_infer_max_records(10_000)
            .delimiter(csv.delimiter.map(|d| d as u8).unwrap_or(b','))
            .has_header(header)
            .null_regex(null.clone())
    };
    let inferred = ctx
        .read_csv(p, opts())
        .await
        .map_err(|e| unreadable(name, path, e.strip_backtrace()))?
        .schema()
        .as_arrow()
        .clone();
    let renamed = header_names(&inferred, shared, header);
    if let Some(shared) = shared {
        let locate = |c: &str, ty: &ColumnType| first_bad_value(path, csv, &renamed, c, ty);
        check_conformance_at(name, &renamed, shared, false, &locate)?;
    }
    let (schema, parsed) = csv_schema(&renamed, shared, csv);
    let df = ctx
        .read_csv(p, opts().schema(&schema))
        .await
        .map_err(|e| unreadable(name, path, e.strip_backtrace()))?;
    Ok((df, parsed))
}

/// The inferred schema of a CSV file, its columns named as the file's header names them.
fn header_names(inferred: &Schema, shared: Option<&SharedSchema>, header: bool) -> Schema {
    // A file without a header takes the shared schema's names, in order.
    Schema::new(
        inferred
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match shared.and_then(|s| s.columns.get(i)) {
                Some(c) if !header => f.as_ref().clone().with_name(&c.name),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    )
}

/// A column read as text to be parsed: its name, its type and its date or time format.
type ParsedColumn<'c> = (String, DataType, Option<&'c str>);

/// The schema a CSV file is read with: shared columns in their shared types, except those read
/// as text to be parsed, which are listed with their type and format.
fn csv_schema<'c>(
    renamed: &Schema,
    shared: Option<&SharedSchema>,
    csv: &'c CsvOptions,
) -> (Schema, Vec<ParsedColumn<'c>>) {
    let column_of = |n: &str| shared.and_then(|s| s.columns.iter().find(|c| c.name == n));
    let mut parsed: Vec<(String, DataType, Option<&str>)> = Vec::new();
    let fields: Vec<Field> = renamed
        .fields()
        .iter()
        .map(|f| {
            let want = match column_of(f.name()) {
                Some(c) => arrow_type(&c.ty),
                None => f.data_type().clone(),
            };
            let format = match &want {
                DataType::Date32 | DataType::Date64 => csv.date_format.as_deref(),
                DataType::Timestamp(..) => csv.timestamp_format.as_deref(),
                _ => None,
            };
            // DataFusion's CSV reader applies the null marker while it infers
            // types only: with one, every column is read as text, the marker
            // made NULL, and the text parsed as its type.
            // Decimals are read as text and parsed exactly: the CSV reader drops
            // fraction digits beyond the scale without a word.
            let decimal = matches!(want, DataType::Decimal128(..) | DataType::Decimal256(..));
            if csv.null.is_some() || format.is_some() || decimal || !csv_parses(&want) {
                parsed.push((f.name().clone(), want, format));
                f.as_ref().clone().with_data_type(DataType::Utf8)
            } else {
                f.as_ref().clone().with_data_type(want)
            }
        })
        .collect();
    (Schema::new(fields), parsed)
}

/// The expression that serves one column of the file, under its own name; or, for a column no
/// shared schema could hold, why it is left out.
fn served_column(
    f: &Field,
    shared: Option<&SharedSchema>,
    csv: &CsvOptions,
    parsed: &[(String, DataType, Option<&str>)],
) -> Result<Expr, String> {
    let column = col(quoted(f.name()));
    let shared_col = shared.and_then(|s| s.columns.iter().find(|c| &c.name == f.name()));
    let parse = parsed.iter().find(|(n, _, _)| n == f.name());
    let e = match (parse, shared_col) {
        // Read as text: the null marker made NULL, then parsed as the type it stands for.
        (Some((_, target, format)), _) => {
            if shared_col.is_none()
                && let Err(why) = column_type_of(target)
            {
                return Err(format!("column {} ({target}) is not served: it {why}", f.name()));
            }
            let text = match &csv.null {
                Some(marker) => nullif(column, lit(marker.as_str())),
                None => column,
            };
            parse_text(text, target, *format)
        }
        // Read every shared column in the shared type, so that the owner plans over the
        // types the requester planned over; plain string encodings (Utf8View, LargeUtf8)
        // are kept, as a cast would copy every value and the requester casts the results.
        (None, Some(c)) => {
            let want = arrow_type(&c.ty);
            if f.data_type() == &want || (plain_string(f.data_type()) && plain_string(&want)) {
                column
            } else {
                cast(column, want)
            }
        }
        (None, None) => match column_type_of(f.data_type()) {
            Ok(_) => column,
            Err(why) => {
                return Err(format!("column {} ({}) is not served: it {why}", f.name(), f.data_type()));
            }
        },
    };
    Ok(e.alias(f.name()))
}

/// A CSV column read as text, as `target`: dates and timestamps by their format if one is
/// given, decimals exactly, anything else by a cast.
fn parse_text(text: Expr, target: &DataType, format: Option<&str>) -> Expr {
    use datafusion::arrow::datatypes::TimeUnit;
    use datafusion::functions::expr_fn as fx;
    match (target, format) {
        (DataType::Date32 | DataType::Date64, Some(fmt)) => {
            cast(fx::to_date(vec![text, lit(fmt)]), target.clone())
        }
        (DataType::Timestamp(unit, _), Some(fmt)) => {
            let args = vec![text, lit(fmt)];
            let t = match unit {
                TimeUnit::Second => fx::to_timestamp_seconds(args),
                TimeUnit::Millisecond => fx::to_timestamp_millis(args),
                TimeUnit::Microsecond => fx::to_timestamp_micros(args),
                TimeUnit::Nanosecond => fx::to_timestamp_nanos(args),
            };
            // `to_timestamp` gives the UTC instant without a zone: name it UTC first, so that
            // the cast to the column's zone keeps the instant.
            cast(cast(t, DataType::Timestamp(*unit, Some("UTC".into()))), target.clone())
        }
        (DataType::Decimal128(..) | DataType::Decimal256(..), _) => {
            crate::exact_decimal::exact_decimal(text, target.clone())
        }
        (DataType::Utf8, _) => text,
        _ => cast(text, target.clone()),
    }
}

/// A dataset as a base table. The file's reading (and casts to the shared types) sit inside a
/// view, but a view would be inlined into the plans that read it; the owner's check must see
/// exactly one scan of the dataset, so the view is hidden behind this table.
#[derive(Debug)]
pub struct DatasetTable {
    inner: Arc<dyn TableProvider>,
    plan: LogicalPlan,
    left_out: Vec<String>,
}

impl DatasetTable {
    /// The reading of the file as a plan: its scan, then each served column in its type (a
    /// Ballista cluster runs it where the files are).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// The file's columns this table leaves out, each with its type and why.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }
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

fn plain_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn ext(path: &Path) -> &str {
    // read_csv and read_parquet filter files by extension; take the file's own, and a
    // directory's `.parquet` files.
    if path.is_dir() {
        return ".parquet";
    }
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
            privacy_unit: None,
        }
    }

    #[test]
    fn a_missing_column_says_what_was_found() {
        let case = Schema::new(vec![
            Field::new("Region", DataType::Utf8, true),
            Field::new("days", DataType::Int64, true),
        ]);
        let e = check_conformance("d", &case, &shared(), true).expect_err("case differs").to_string();
        assert!(e.contains("found Region; did you mean region?"), "{e}");
        let semicolons = Schema::new(vec![Field::new("region;days", DataType::Utf8, true)]);
        let e = check_conformance("d", &semicolons, &shared(), true).expect_err("one column").to_string();
        assert!(e.contains("is the delimiter ';'?"), "{e}");
        let fine = Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("days", DataType::Int64, true),
        ]);
        check_conformance("d", &fine, &shared(), true).expect("conforms");
    }
}
