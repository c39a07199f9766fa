//! A value clamped to its bounds and turned into a fixed-point integer, in one pass: what each
//! row adds to a sum under differential privacy.
//!
//! `clamp_fixed(x)` is `round(x * scale)` clamped to `[lo, hi]` (bounds already in fixed-point
//! units), as an `Int64`. NULL and NaN stay NULL: they add nothing to a sum. The argument is
//! `Int64` (exact) or `Float64` (rounded to the nearest unit, ties to even, infinities
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
    /// Exact: a product past the i64 range saturates, and the bounds lie well inside it.
    fn int(&self, x: i64) -> i64 {
        x.saturating_mul(self.scale).clamp(self.lo, self.hi)
    }

    fn float(&self, x: f64) -> Option<i64> {
        (!x.is_nan()).then(|| if self.near() { self.float_near(x) } else { self.float_far(x) })
    }

    /// Whether both bounds lie below 2^50 in magnitude (the policy keeps them within 1e9).
    fn near(&self) -> bool {
        self.lo.unsigned_abs() < 1 << 50 && self.hi.unsigned_abs() < 1 << 50
    }

    /// Clamped in floating point to the bounds (integers, exact as f64), then rounded to the
    /// nearest integer, ties to even, by the float's own addition: past 1.5·2^52 a float has no
    /// fraction bits, so adding it leaves the rounded value in the low bits of the mantissa.
    /// Native vector instructions only (no library call, no saturating conversion), for
    /// |y| < 2^51, which the clamp to bounds under 2^50 ensures. `max` and `min` take the
    /// number over NaN: NaN gives the low bound here, and callers make it NULL.
    ///
    /// Invariant: the result lies in `[lo, hi]`.
    fn float_near(&self, x: f64) -> i64 {
        const SHIFT: f64 = 6_755_399_441_055_744.0;
        let y = (x * self.scale as f64).max(self.lo as f64).min(self.hi as f64);
        (y + SHIFT).to_bits() as i64 - SHIFT.to_bits() as i64
    }

    /// The same for bounds of any size: `as` saturates, and the clamp is then exact in integers.
    fn float_far(&self, x: f64) -> i64 {
        let y = (x * self.scale as f64).max(self.lo as f64).min(self.hi as f64);
        (y.round_ties_even() as i64).clamp(self.lo, self.hi)
    }

    fn array(&self, a: &ArrayRef) -> Result<ArrayRef, DataFusionError> {
        let out: Int64Array = match a.data_type() {
            DataType::Int64 => a.as_primitive::<Int64Type>().unary(|x| self.int(x)),
            DataType::Float64 => {
                let a = a.as_primitive::<Float64Type>();
                let (values, nan) = if self.near() {
                    convert(a.values(), |x| self.float_near(x))
                } else {
                    convert(a.values(), |x| self.float_far(x))
                };
                let nulls = if nan {
                    // NaN adds nothing: NULL, like a missing value.
                    let numbers = BooleanBuffer::collect_bool(a.len(), |i| !a.value(i).is_nan());
                    NullBuffer::union(a.nulls(), Some(&NullBuffer::new(numbers)))
                } else {
                    a.nulls().cloned()
                };
                Int64Array::new(values.into(), nulls)
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

/// `f` of every value, and whether any is NaN: one loop the compiler can vectorise.
fn convert(values: &[f64], f: impl Fn(f64) -> i64) -> (Vec<i64>, bool) {
    let mut nan = false;
    let out = values
        .iter()
        .map(|&x| {
            nan |= x.is_nan();
            f(x)
        })
        .collect();
    (out, nan)
}

/// `e` with a call of [`clamp_fixed`] written in operations any SQL engine has, for an engine
/// that runs the owner's plan as its own SQL ([`crate::remote::portable`]):
/// - an integer argument as an exact decimal, multiplied, clamped, then cast to BIGINT (no
///   product can overflow a DECIMAL(38,0));
/// - a float argument clamped to the bounds divided by the scale *before* it is multiplied (so
///   no product can overflow), rounded to the nearest unit (`round`: ties to even in
///   PostgreSQL, as the UDF; away from zero in DataFusion, which differs only for a value
///   exactly halfway between two units), cast to BIGINT and clamped again in integers;
/// - NULL and every NaN as NULL, explicitly (SQL's GREATEST and LEAST skip NULLs): a NaN is
///   caught as `= 'NaN'`, and as greater than +∞ or less than −∞, which is how engines that
///   order NaNs totally (DataFusion's, where a NaN's sign and payload count) place the others.
///
/// Invariant: every non-NULL value lies in `[lo, hi]`, whatever the input.
pub(crate) fn portable(e: Expr) -> Result<datafusion::common::tree_node::Transformed<Expr>, DataFusionError> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::functions::core::expr_fn::{greatest, least};
    use datafusion::logical_expr::{lit, when};
    let Expr::ScalarFunction(f) = &e else { return Ok(Transformed::no(e)) };
    let Some(c) = f.func.inner().downcast_ref::<ClampFixed>() else { return Ok(Transformed::no(e)) };
    let [x] = f.args.as_slice() else {
        return Err(DataFusionError::Internal("clamp_fixed takes one argument".into()));
    };
    let (lo, hi) = (lit(c.lo), lit(c.hi));
    let exact =
        c.signature.type_signature == datafusion::logical_expr::TypeSignature::Exact(vec![DataType::Int64]);
    let clamped = if exact {
        let wide = DataType::Decimal128(38, 0);
        let product = cast(x.clone(), wide.clone()) * cast(lit(c.scale), wide);
        when(x.clone().is_null(), lit(ScalarValue::Int64(None)))
            .otherwise(cast(least(vec![greatest(vec![product, lo]), hi]), DataType::Int64))?
    } else {
        let scale = c.scale as f64;
        let (lo_f, hi_f) = (lit(c.lo as f64 / scale), lit(c.hi as f64 / scale));
        // Rounded explicitly: a float-to-integer cast rounds in PostgreSQL but truncates in
        // DataFusion. Within the bounds it cannot overflow.
        let within = least(vec![greatest(vec![x.clone(), lo_f]), hi_f]) * lit(scale);
        let units = cast(datafusion::functions::math::expr_fn::round(vec![within]), DataType::Int64);
        let float = |v: &str| cast(lit(v), DataType::Float64);
        let nan = x
            .clone()
            .is_null()
            .or(x.clone().eq(float("NaN")))
            .or(x.clone().gt(float("Infinity")))
            .or(x.clone().lt(float("-Infinity")));
        when(nan, lit(ScalarValue::Int64(None))).otherwise(least(vec![greatest(vec![units, lo]), hi]))?
    };
    Ok(Transformed::yes(clamped))
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

    fn bounded() -> ClampFixed {
        ClampFixed {
            lo: -500,
            hi: 1000,
            scale: 100,
            signature: Signature::exact(vec![], Volatility::Immutable),
        }
    }

    #[test]
    fn integers_are_scaled_exactly_and_clamped() {
        let f = bounded();
        assert_eq!(f.int(3), 300);
        assert_eq!(f.int(-3), -300);
        assert_eq!(f.int(-6), -500);
        assert_eq!(f.int(11), 1000);
        assert_eq!(f.int(i64::MAX), 1000);
        assert_eq!(f.int(i64::MIN), -500);
    }

    #[test]
    fn floats_are_rounded_clamped_and_nan_adds_nothing() {
        let f = bounded();
        assert_eq!(f.float(1.234), Some(123));
        assert_eq!(f.float(1.235_1), Some(124));
        assert_eq!(f.float(-2.0), Some(-200));
        assert_eq!(f.float(1e300), Some(1000));
        assert_eq!(f.float(f64::INFINITY), Some(1000));
        assert_eq!(f.float(f64::NEG_INFINITY), Some(-500));
        assert_eq!(f.float(f64::NAN), None);
        // To the nearest unit, ties to even, with bounds near and far.
        let far = ClampFixed { lo: -(1 << 60), hi: 1 << 60, ..bounded() };
        assert!(f.near() && !far.near());
        for x in [
            0.1234,
            -4.9951,
            3.335,
            9.999_999,
            -0.0049,
            0.005,
            -0.005,
            0.015,
            2.675,
            0.004_999_999,
            0.5,
            -2.5,
        ] {
            let want = (x * 100.0_f64).round_ties_even() as i64;
            assert_eq!(f.float(x), Some(want.clamp(-500, 1000)), "{x}");
            assert_eq!(far.float(x), Some(want), "{x}");
        }
        let f1 = ClampFixed { scale: 1, ..bounded() };
        assert_eq!(
            (f1.float(0.5), f1.float(1.5), f1.float(-0.5), f1.float(-1.5)),
            (Some(0), Some(2), Some(0), Some(-2))
        );
        assert_eq!(far.float(1e300), Some(1 << 60));
    }

    #[test]
    fn every_float_lands_within_the_bounds() {
        let f = bounded();
        let edges = [
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            -0.0,
            4.999_999_999_999_999,
            10.000_000_000_000_002,
            -5.000_000_000_000_001,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random = std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f64::from_bits(state)
        });
        let far = ClampFixed { lo: -(1 << 60), hi: 1 << 61, ..bounded() };
        for x in edges.into_iter().chain(random.take(100_000)) {
            for g in [&f, &far] {
                match g.float(x) {
                    Some(v) => assert!((g.lo..=g.hi).contains(&v), "{x} gave {v}"),
                    None => assert!(x.is_nan(), "{x} gave NULL"),
                }
            }
        }
    }

    /// The rewrite engines run ([`portable`]), evaluated by DataFusion (a Ballista cluster's
    /// engine), gives the UDF's values: rounded (not truncated), every NaN NULL.
    #[tokio::test]
    async fn the_portable_rewrite_computes_as_the_udf_in_datafusion() {
        use datafusion::common::tree_node::TreeNode as _;
        use datafusion::logical_expr::col;
        let f = bounded();
        let xs = vec![
            Some(0.29),
            Some(1.234),
            Some(-4.9951),
            Some(2.675),
            Some(9.999_999),
            Some(1e300),
            Some(-1e300),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(f64::NAN),
            Some(-f64::NAN),
            Some(f64::from_bits(0x7ff8_0000_0000_0001)),
            Some(f64::from_bits(0xfff0_0000_0000_0001)),
            None,
        ];
        let batch = datafusion::arrow::record_batch::RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(datafusion::arrow::array::Float64Array::from(xs.clone())) as ArrayRef,
        )])
        .expect("batch");
        let e = clamp_fixed(col("x"), &DataType::Float64, f.lo, f.hi, f.scale);
        let rewritten = e.transform_up(portable).expect("rewrites").data;
        assert!(!format!("{rewritten}").contains("clamp_fixed"), "{rewritten}");
        let ctx = datafusion::prelude::SessionContext::new();
        let out = ctx
            .read_batch(batch)
            .expect("reads")
            .select(vec![rewritten.alias("v")])
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        let got: Vec<Option<i64>> = out
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().iter().collect::<Vec<_>>())
            .collect();
        let want: Vec<Option<i64>> = xs.iter().map(|x| x.and_then(|x| f.float(x))).collect();
        assert_eq!(got, want, "for {xs:?}");
    }

    #[test]
    fn nulls_stay_null() {
        let f = bounded();
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
