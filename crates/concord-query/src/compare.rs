//! Comparing a federated result with the same SQL over pooled data: row by row, with floats
//! equal within a relative 1e-9 (partial sums are added in another order).

use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// A cell as text, a float as a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Float(f64),
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
