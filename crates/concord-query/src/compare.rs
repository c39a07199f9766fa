//! Comparing a federated result with the same SQL over pooled data: row by row, with floats
//! equal within a relative 1e-9 (partial sums are added in another order).

use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// A cell as text, a float as a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Any non-float value, as Arrow displays it.
    Text(String),
    /// A `Float64` value, compared within [`FLOAT_TOLERANCE`].
    Float(f64),
    /// A null of any type.
    Null,
}

/// The rows of `batches` as cells.
pub fn cells(batches: &[RecordBatch]) -> Result<Vec<Vec<Cell>>, String> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .zip(&fmts)
                    .map(|(c, f)| {
                        if c.is_null(r) {
                            Cell::Null
                        } else if let Some(fa) = c.as_any().downcast_ref::<Float64Array>() {
                            Cell::Float(fa.value(r))
                        } else {
                            Cell::Text(f.value(r).to_string())
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Relative tolerance of float cells.
pub const FLOAT_TOLERANCE: f64 = 1e-9;

/// Compares two results row by row; returns the number of rows, or the first difference.
pub fn compare(federated: &[RecordBatch], pooled: &[RecordBatch]) -> Result<usize, String> {
    let (a, b) = (cells(federated)?, cells(pooled)?);
    if a.len() != b.len() {
        return Err(format!("{} rows federated, {} pooled", a.len(), b.len()));
    }
    for (i, (ra, rb)) in a.iter().zip(&b).enumerate() {
        let same = ra.len() == rb.len()
            && ra.iter().zip(rb).all(|(x, y)| match (x, y) {
                (Cell::Float(x), Cell::Float(y)) => {
                    (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs()).max(1.0)
                }
                _ => x == y,
            });
        if !same {
            return Err(format!("row {i} differs: federated {ra:?}, pooled {rb:?}"));
        }
    }
    Ok(a.len())
}

fn number(c: &Cell) -> Option<f64> {
    match c {
        Cell::Float(f) => Some(*f),
        Cell::Text(t) => t.parse::<f64>().ok(),
        Cell::Null => None,
    }
}

/// Compares a noisy federated result with the exact pooled one: rows are matched by their text
/// cells (the group keys); every number of a released row is within `tolerance` of the pooled
/// one; at most `suppressed` pooled rows are missing; a row pooled data lacks (a public key
/// released with noise) is within `tolerance` of 0. Returns the rows compared.
pub fn compare_noisy(
    federated: &[RecordBatch],
    pooled: &[RecordBatch],
    tolerance: f64,
    suppressed: u64,
) -> Result<usize, String> {
    let key = |row: &[Cell]| -> Vec<String> {
        row.iter()
            .filter(|c| number(c).is_none())
            .map(|c| match c {
                Cell::Text(t) => t.clone(),
                _ => "NULL".into(),
            })
            .collect()
    };
    let (a, b) = (cells(federated)?, cells(pooled)?);
    let mut missing = 0u64;
    for rb in &b {
        let Some(ra) = a.iter().find(|ra| key(ra) == key(rb)) else {
            missing += 1;
            continue;
        };
        for (x, y) in ra.iter().zip(rb) {
            if let (Some(x), Some(y)) = (number(x), number(y))
                && (x - y).abs() > tolerance
            {
                return Err(format!(
                    "row {:?}: federated {x}, pooled {y}, beyond the noise tolerance {tolerance}",
                    key(rb)
                ));
            }
        }
    }
    // Under differential privacy every public key is released, zeros included: a federated
    // row the pooled data lacks must be a noisy nothing.
    for ra in a.iter().filter(|ra| !b.iter().any(|rb| key(rb) == key(ra))) {
        if let Some(x) = ra.iter().filter_map(number).find(|x| x.abs() > tolerance) {
            return Err(format!(
                "row {:?}: federated {x}, a group pooled data does not have, beyond the noise tolerance {tolerance} of 0",
                key(ra)
            ));
        }
    }
    if missing > suppressed {
        return Err(format!("{missing} groups missing, but owners report {suppressed} suppressed"));
    }
    Ok(a.len())
}
