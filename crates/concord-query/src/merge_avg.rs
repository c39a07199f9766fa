//! AVG from the members' partial sums and counts, in the type and with the rounding of AVG over
//! the pooled rows: decimals through DataFusion's own `DecimalAverager` (no float detour),
//! durations by integer division, everything else in Float64.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray as _, PrimitiveArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal256Type, Float64Type, Int64Type, i256};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_functions_aggregate_common::utils::DecimalAverager;

/// `avg_merge(total_sum, total_count)` as the pooled `AVG` of type `target` would give it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AvgMerge {
    target: DataType,
    signature: Signature,
}

/// The merged average of `sum` (the sum of the partial sums) over `count` (the sum of the
/// partial counts), of type `target`, the type AVG has over the pooled rows.
pub fn avg_merge(sum: Expr, count: Expr, target: DataType) -> Expr {
    let udf = AvgMerge { target, signature: Signature::any(2, Volatility::Immutable) };
    ScalarUDF::new_from_impl(udf).call(vec![sum, count])
}

fn internal(why: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(why.into())
}

impl AvgMerge {
    /// In 256-bit arithmetic whatever the target: DataFusion's pooled AVG sums a decimal of
    /// high precision in 256 bits too, and an average that fits the target is exact either way.
    fn decimal(
        &self,
        sum: &ArrayRef,
        counts: &PrimitiveArray<Int64Type>,
        precision: u8,
        scale: i8,
    ) -> Result<ArrayRef, DataFusionError> {
        let sum_scale = match sum.data_type() {
            DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
            other => return Err(internal(format!("avg_merge of a decimal average over a {other} sum"))),
        };
        let sum = cast(sum, &DataType::Decimal256(76, sum_scale))?;
        let sums = sum.as_primitive::<Decimal256Type>();
        let averager = DecimalAverager::<Decimal256Type>::try_new(sum_scale, precision, scale)?;
        let out = sums
            .iter()
            .zip(counts.iter())
            .map(|(s, c)| match (s, c) {
                (Some(s), Some(c)) if c > 0 => averager.avg(s, i256::from_i128(i128::from(c))).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<PrimitiveArray<Decimal256Type>, DataFusionError>>()?
            .with_precision_and_scale(precision, scale)?;
        // Every average was checked against the target's precision: the cast cannot fail.
        Ok(cast(&(Arc::new(out) as ArrayRef), &self.target)?)
    }

    fn duration(
        &self,
        sum: &ArrayRef,
        counts: &PrimitiveArray<Int64Type>,
    ) -> Result<ArrayRef, DataFusionError> {
        let sums = cast(sum, &DataType::Int64)?;
        let q: PrimitiveArray<Int64Type> = sums
            .as_primitive::<Int64Type>()
            .iter()
            .zip(counts.iter())
            .map(|(s, c)| match (s, c) {
                (Some(s), Some(c)) if c > 0 => Some(s / c),
                _ => None,
            })
            .collect();
        Ok(cast(&(Arc::new(q) as ArrayRef), &self.target)?)
    }

    fn float(&self, sum: &ArrayRef, counts: &PrimitiveArray<Int64Type>) -> Result<ArrayRef, DataFusionError> {
        let sums = cast(sum, &DataType::Float64)?;
        let q: PrimitiveArray<Float64Type> = sums
            .as_primitive::<Float64Type>()
            .iter()
            .zip(counts.iter())
            .map(|(s, c)| match (s, c) {
                (Some(s), Some(c)) if c > 0 => Some(s / c as f64),
                _ => None,
            })
            .collect();
        Ok(cast(&(Arc::new(q) as ArrayRef), &self.target)?)
    }
}

impl ScalarUDFImpl for AvgMerge {
    fn name(&self) -> &str {
        "avg_merge"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(self.target.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let n = args.number_rows;
        let [sum, count] = args.args.as_slice() else {
            return Err(internal("avg_merge takes a sum and a count"));
        };
        let sum = sum.to_array(n)?;
        let count = cast(&count.to_array(n)?, &DataType::Int64)?;
        let counts = count.as_primitive::<Int64Type>();
        let out = match &self.target {
            DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => self.decimal(&sum, counts, *p, *s)?,
            DataType::Duration(_) => self.duration(&sum, counts)?,
            _ => self.float(&sum, counts)?,
        };
        debug_assert_eq!(out.len(), n);
        Ok(ColumnarValue::Array(out))
    }
}
