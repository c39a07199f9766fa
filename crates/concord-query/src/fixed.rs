//! A value clamped to its bounds and turned into a fixed-point integer, in one pass: what each
//! row adds to a sum under differential privacy.
//!
//! `clamp_fixed(x)` is `round(x * scale)` clamped to `[lo, hi]` (bounds already in fixed-point
//! units), as an `Int64`. NULL and NaN stay NULL: they add nothing to a sum. The argument is
//! `Int64` (exact, in 128-bit arithmetic) or `Float64` (rounded to the nearest unit, infinities
//! clamped); [`clamp_fixed`] casts other types to one of these losslessly or infallibly, so no
//! value of a person can make the owner's plan fail.
//!
//! Invariant: every non-NULL output lies in `[lo, hi]`, whatever the input.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray as _, Int64Array};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
};

/// The one-pass clamp and fixed-point conversion of a column's values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ClampFixed {
    lo: i64,
    hi: i64,
    scale: i64,
    signature: Signature,
}

/// `arg` (of type `arg_type`) clamped to `[lo, hi]` fixed-point units at `scale` units per 1.
pub fn clamp_fixed(arg: Expr, arg_type: &DataType, lo: i64, hi: i64, scale: i64) -> Expr {
    let exact = matches!(
        arg_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    );
    let input = if exact { DataType::Int64 } else { DataType::Float64 };
    let arg = if arg_type == &input { arg } else { cast(arg, input.clone()) };
    let udf = ClampFixed {
        lo: lo.min(hi),
        hi: hi.max(lo),
        scale,
        signature: Signature::exact(vec![input], Volatility::Immutable),
    };
    ScalarUDF::new_from_impl(udf).call(vec![arg])
}

impl ClampFixed {
    fn int(&self, x: i64) -> i64 {
        let v = i128::from(x).saturating_mul(i128::from(self.scale));
        v.clamp(i128::from(self.lo), i128::from(self.hi)) as i64
    }

    fn float(&self, x: f64) -> Option<i64> {
        (!x.is_nan()).then(|| self.float_unchecked(x))
    }

    /// Rounds half away from zero with native instructions only (`f64::round` is a library
    /// call per value): the truncation is exact below 2^52, and above it every float is an
    /// integer. `as` saturates, infinities included; the clamp is then exact in integers. NaN
    /// gives 0 here: callers make it NULL.
    fn float_unchecked(&self, x: f64) -> i64 {
        let y = x * self.scale as f64;
        let t = y as i64;
        let frac = y - t as f64;
        let r = if frac >= 0.5 {
            t.saturating_add(1)
        } else if frac <= -0.5 {
            t.saturating_sub(1)
        } else {
            t
        };
        r.clamp(self.lo, self.hi)
    }

    fn array(&self, a: &ArrayRef) -> Result<ArrayRef, DataFusionError> {
        let out: Int64Array = match a.data_type() {
            DataType::Int64 => a.as_primitive::<Int64Type>().unary(|x| self.int(x)),
            DataType::Float64 => {
                let a = a.as_primitive::<Float64Type>();
                let out: Int64Array = a.unary(|x| self.float_unchecked(x));
                if a.values().iter().any(|x| x.is_nan()) {
                    // NaN adds nothing: NULL, like a missing value.
                    let numbers = BooleanBuffer::collect_bool(a.len(), |i| !a.value(i).is_nan());
                    let nulls = NullBuffer::union(a.nulls(), Some(&NullBuffer::new(numbers)));
                    Int64Array::new(out.values().clone(), nulls)
                } else {
                    out
                }
            }
            other => {
                return Err(DataFusionError::Internal(format!(
                    "clamp_fixed takes Int64 or Float64, not {other}"
                )));
            }
        };
        Ok(Arc::new(out))
    }
}

impl ScalarUDFImpl for ClampFixed {
    fn name(&self) -> &str {
        "clamp_fixed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let [arg] = args.args.as_slice() else {
            return Err(DataFusionError::Internal("clamp_fixed takes one argument".into()));
        };
        match arg {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(self.array(a)?)),
            ColumnarValue::Scalar(s) => {
                let v = match s {
                    ScalarValue::Int64(x) => x.map(|x| self.int(x)),
                    ScalarValue::Float64(x) => x.and_then(|x| self.float(x)),
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "clamp_fixed takes Int64 or Float64, not {}",
                            other.data_type()
                        )));
                    }
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Int64(v)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> ClampFixed {
        ClampFixed {
            lo: -500,
            hi: 1000,
            scale: 100,
            signature: Signature::exact(vec![], Volatility::Immutable),
        }
    }

    #[test]
    fn integers_are_scaled_exactly_and_clamped() {
        let f = f();
        assert_eq!(f.int(3), 300);
        assert_eq!(f.int(-3), -300);
        assert_eq!(f.int(-6), -500);
        assert_eq!(f.int(11), 1000);
        assert_eq!(f.int(i64::MAX), 1000);
        assert_eq!(f.int(i64::MIN), -500);
    }

    #[test]
    fn floats_are_rounded_clamped_and_nan_adds_nothing() {
        let f = f();
        assert_eq!(f.float(1.234), Some(123));
        assert_eq!(f.float(1.235_1), Some(124));
        assert_eq!(f.float(-2.0), Some(-200));
        assert_eq!(f.float(1e300), Some(1000));
        assert_eq!(f.float(f64::INFINITY), Some(1000));
        assert_eq!(f.float(f64::NEG_INFINITY), Some(-500));
        assert_eq!(f.float(f64::NAN), None);
        // Half away from zero, exactly, also where adding 0.5 would round up by itself.
        assert_eq!(f.float(0.004_999_999_999_999_999), Some(0));
        assert_eq!(f.float(0.499_999_999_999_999_94 / 100.0), Some(0));
        assert_eq!(f.float(-0.005), Some(-1));
        for x in [0.1234, -4.9951, 3.335, 9.999_999, -0.0049, 0.005, 2.675] {
            assert_eq!(f.float(x), Some(((x * 100.0_f64).round() as i64).clamp(-500, 1000)), "{x}");
        }
    }

    #[test]
    fn nulls_stay_null() {
        let f = f();
        let a: ArrayRef =
            Arc::new(datafusion::arrow::array::Float64Array::from(vec![Some(1.0), None, Some(f64::NAN)]));
        let out = f.array(&a).expect("float array");
        let out = out.as_primitive::<Int64Type>();
        assert_eq!(out.iter().collect::<Vec<_>>(), vec![Some(100), None, None]);
        let a: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(20)]));
        let out = f.array(&a).expect("int array");
        assert_eq!(out.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(), vec![None, Some(1000)]);
    }
}
