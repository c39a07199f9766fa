//! Text read as a decimal with nothing lost: a value with more fraction digits than the scale
//! holds (`12.505` for `decimal(10,2)`) is an error that names it, where Arrow's CSV reader would
//! drop the digits and its cast would round them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray as _, PrimitiveArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cast_utils::parse_decimal;
use datafusion::arrow::datatypes::{DataType, Decimal256Type, i256};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `text` (Utf8) as the decimal type `target`, refusing any value it cannot hold exactly.
pub fn exact_decimal(text: Expr, target: DataType) -> Expr {
    ScalarUDF::new_from_impl(ExactDecimal { target, signature: Signature::any(1, Volatility::Immutable) })
        .call(vec![text])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExactDecimal {
    target: DataType,
    signature: Signature,
}

/// Extra fraction digits read beyond the scale, to see whether any is not zero.
const GUARD: i8 = 20;

fn parse(s: &str, precision: u8, scale: i8) -> Result<i256, DataFusionError> {
    let s = s.trim();
    let wide_scale = scale.saturating_add(GUARD).min(76);
    let guard = u32::try_from(wide_scale - scale).unwrap_or(0);
    // Wide enough for every digit of the target plus the guard digits.
    let wide_precision = precision.saturating_add(guard as u8).min(76);
    let wide = parse_decimal::<Decimal256Type>(s, wide_precision, wide_scale)
        .map_err(|e| DataFusionError::Execution(format!("{e} (decimal({precision},{scale}))")))?;
    let unit = i256::from_i128(10).wrapping_pow(guard);
    if wide.wrapping_rem(unit) != i256::ZERO {
        return Err(DataFusionError::Execution(format!(
            "value {s} has more decimals than decimal({precision},{scale}) holds; round it in the file or give the shared schema a larger scale"
        )));
    }
    Ok(wide.wrapping_div(unit))
}

impl ScalarUDFImpl for ExactDecimal {
    fn name(&self) -> &str {
        "exact_decimal"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(self.target.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let (precision, scale) = match self.target {
            DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (p, s),
            ref other => return Err(DataFusionError::Internal(format!("exact_decimal into {other}"))),
        };
        let [text] = args.args.as_slice() else {
            return Err(DataFusionError::Internal("exact_decimal takes one argument".into()));
        };
        let text = cast(&text.to_array(args.number_rows)?, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let values = (0..text.len())
            .map(
                |i| if text.is_null(i) { Ok(None) } else { parse(text.value(i), precision, scale).map(Some) },
            )
            .collect::<Result<PrimitiveArray<Decimal256Type>, DataFusionError>>()?
            .with_precision_and_scale(76, scale)?;
        // Each value has at most the target's digits: `parse_decimal` checked the precision.
        let out = cast(&(Arc::new(values) as ArrayRef), &self.target)?;
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_zeros_pass_extra_digits_do_not() {
        assert_eq!(parse("12.50", 10, 2).ok(), Some(i256::from_i128(1250)));
        assert_eq!(parse("12.5000", 10, 2).ok(), Some(i256::from_i128(1250)));
        assert_eq!(parse("-3", 10, 2).ok(), Some(i256::from_i128(-300)));
        assert_eq!(parse("1.5e1", 10, 2).ok(), Some(i256::from_i128(1500)));
        let e = parse("12.505", 10, 2).expect_err("a digit beyond the scale").to_string();
        assert!(e.contains("12.505") && e.contains("decimal(10,2)"), "{e}");
        assert!(parse("123456789.00", 10, 2).is_err(), "too many digits");
        assert!(parse("abc", 10, 2).is_err());
    }
}
