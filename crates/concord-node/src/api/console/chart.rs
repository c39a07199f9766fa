//! Charts of query results and budgets, as SVG drawn by `plotters`: bars for one key and one
//! value, lines when the key is a date or a time.

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::prelude::*;

/// Bars drawn at most; a caption says when there are more.
const MAX_BARS: usize = 60;
/// Points of a line drawn at most.
const MAX_POINTS: usize = 5000;
/// Values beyond this magnitude are not drawn: the axis arithmetic must stay finite.
const MAX_ABS: f64 = 1e300;
/// Characters of a key label.
const LABEL_CHARS: usize = 24;
/// Slots of a bar chart at least, so that a few bars stay bars.
const MIN_SLOTS: usize = 8;

/// The chart a result gets.
#[derive(Debug, Clone, PartialEq)]
pub enum ChartKind {
    /// Bars of `value` by `key`.
    Bars { key: String, value: String },
    /// A line of `value` over the dates or times of `key`.
    Lines { key: String, value: String },
}

impl ChartKind {
    /// The chart in words, for its caption and its `alt` text.
    pub fn describe(&self) -> String {
        match self {
            Self::Bars { key, value } => format!("Bars of {value} by {key}"),
            Self::Lines { key, value } => format!("Line of {value} over {key}"),
        }
    }
}

fn numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
}

/// Which chart a result of `schema` gets: its first column is the key, its first numeric
/// column after it the value; or why there is none.
pub fn plan(schema: &SchemaRef) -> Result<ChartKind, String> {
    let fields = schema.fields();
    let Some(key) = fields.first() else {
        return Err("the result has no columns".into());
    };
    if matches!(key.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64)
        || matches!(key.data_type(), DataType::Decimal128(..) | DataType::Decimal256(..))
    {
        return Err(format!("its first column, {}, is a measure, not a key to chart by", key.name()));
    }
    let Some(value) = fields.iter().skip(1).find(|f| numeric(f.data_type())) else {
        return Err("a chart needs a key column followed by a numeric column".into());
    };
    let (key, value) = (key.name().clone(), value.name().clone());
    Ok(if temporal(fields[0].data_type()) {
        ChartKind::Lines { key, value }
    } else {
        ChartKind::Bars { key, value }
    })
}

/// The keys (as text) and values of the chart `plan` chose, in the result's order (bars) or
/// the keys' order (lines).
fn points(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    kind: &ChartKind,
) -> Result<(Vec<(String, f64)>, usize), String> {
    let value_name = match kind {
        ChartKind::Bars { value, .. } | ChartKind::Lines { value, .. } => value,
    };
    let vi = schema.index_of(value_name).map_err(|e| e.to_string())?;
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    let mut skipped = 0;
    for b in batches {
        let keys = ArrayFormatter::try_new(b.column(0).as_ref(), &opts).map_err(|e| e.to_string())?;
        let values = arrow::compute::cast(b.column(vi), &DataType::Float64).map_err(|e| e.to_string())?;
        let values = values
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .ok_or_else(|| "the value column cannot be read as numbers".to_string())?;
        for row in 0..b.num_rows() {
            if values.is_valid(row) && values.value(row).abs() <= MAX_ABS {
                out.push((keys.value(row).to_string(), values.value(row)));
            } else {
                skipped += 1;
            }
        }
    }
    if matches!(kind, ChartKind::Lines { .. }) {
        // ISO dates and times sort as text.
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok((out, skipped))
}

/// The chart of a result as an SVG document; its title says what it leaves out.
pub fn svg(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, String> {
    let kind = plan(schema)?;
    let (mut pts, skipped) = points(schema, batches, &kind)?;
    if pts.is_empty() {
        return Err("the result has no values to chart".into());
    }
    let (key, value, line, cap) = match &kind {
        ChartKind::Bars { key, value } => (key, value, false, MAX_BARS),
        ChartKind::Lines { key, value } => (key, value, true, MAX_POINTS),
    };
    let mut title = if line { format!("{value} over {key}") } else { format!("{value} by {key}") };
    let mut notes = Vec::new();
    if pts.len() > cap {
        notes.push(format!("first {cap} of {}", pts.len()));
        pts.truncate(cap);
    }
    if skipped > 0 {
        notes.push(format!("{skipped} not drawn: NULL, not finite or beyond ±1e300"));
    }
    if !notes.is_empty() {
        title.push_str(&format!(" ({})", notes.join("; ")));
    }
    draw(&pts, key, value, &title, line)
}

/// Bars of spent budget per label, for the datasets page.
pub fn bars(pts: &[(String, f64)], key: &str, value: &str, title: &str) -> Result<String, String> {
    if pts.is_empty() {
        return Err("nothing to chart".into());
    }
    if pts.len() > MAX_BARS {
        let title = format!("{title} (first {MAX_BARS} of {}; all in the table)", pts.len());
        return draw(&pts[..MAX_BARS], key, value, &title, false);
    }
    draw(pts, key, value, title, false)
}

/// A label of at most `LABEL_CHARS` characters.
fn short(s: &str) -> String {
    if s.chars().count() <= LABEL_CHARS {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(LABEL_CHARS - 1).collect::<String>())
    }
}

/// The value axis: from zero (or below the lowest value) to above the highest, padded; an
/// error unless every bound is finite, since the drawing library's tick search does not end on
/// an infinite range.
fn y_range(pts: &[(String, f64)]) -> Result<(f64, f64), String> {
    let lo = pts.iter().map(|p| p.1).fold(0.0f64, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let pad = ((hi - lo).abs() * 0.08).max(1e-9);
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, if hi > 0.0 { hi + pad } else { pad });
    if lo.is_finite() && hi.is_finite() && (hi - lo).is_finite() && hi > lo {
        Ok((lo, hi))
    } else {
        Err("the values are too large to chart".into())
    }
}

/// Draws the chart; values come from data, so a panic inside the drawing library is caught
/// and said, never taken down with the request.
fn draw(pts: &[(String, f64)], key: &str, value: &str, title: &str, line: bool) -> Result<String, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| draw_unguarded(pts, key, value, title, line)))
        .unwrap_or_else(|_| Err("the chart cannot be drawn for these values".into()))
}

fn draw_unguarded(
    pts: &[(String, f64)],
    key: &str,
    value: &str,
    title: &str,
    line: bool,
) -> Result<String, String> {
    let n = pts.len();
    let (lo, hi) = y_range(pts)?;
    let labels: Vec<String> = pts.iter().map(|p| short(&p.0)).collect();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (760, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(if line { 40 } else { 70 })
            .y_label_area_size(70)
            .build_cartesian_2d((0..if line { n } else { n.max(MIN_SLOTS) }).into_segmented(), lo..hi)
            .map_err(|e| e.to_string())?;
        let step = n.div_ceil(if line { 8 } else { 30 }).max(1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_desc(key)
            .y_desc(value)
            .x_labels(n.min(if line { 8 } else { 30 }))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if i % step == 0 => {
                    labels.get(*i).cloned().unwrap_or_default()
                }
                _ => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        series(&mut chart, pts, line)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The chart's coordinates: one segment per key, values on a linear axis.
type Coords = Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf64>;

/// The bars, or the line, of `pts`.
fn series(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Coords>,
    pts: &[(String, f64)],
    line: bool,
) -> Result<(), String> {
    let colour = RGBColor(0x2b, 0x6c, 0xb0);
    if line {
        let path = pts.iter().enumerate().map(|(i, p)| (SegmentValue::CenterOf(i), p.1)).collect::<Vec<_>>();
        chart
            .draw_series(std::iter::once(PathElement::new(path, colour.stroke_width(2))))
            .map_err(|e| e.to_string())?;
    } else {
        chart
            .draw_series(pts.iter().enumerate().map(|(i, p)| {
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), p.1)],
                    colour.filled(),
                );
                bar.set_margin(0, 0, 4, 4);
                bar
            }))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// An SVG answer: an image, which runs nothing (no script; the styles plotters writes inline
/// are allowed in this document only).
pub fn response(svg: String) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(keys: arrow::array::ArrayRef, key_type: DataType) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", key_type, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let n = keys.len() as i64;
        let values = Arc::new(Int64Array::from((1..=n).collect::<Vec<_>>()));
        let b = RecordBatch::try_new(schema.clone(), vec![keys, values]).expect("batch");
        (schema, vec![b])
    }

    #[test]
    fn one_key_and_one_value_are_bars_and_dates_are_lines() {
        let (s, b) = batch(Arc::new(StringArray::from(vec!["BR-East", "BR-West"])), DataType::Utf8);
        assert_eq!(plan(&s), Ok(ChartKind::Bars { key: "k".into(), value: "n".into() }));
        let drawn = svg(&s, &b).expect("svg");
        assert!(drawn.starts_with("<svg") && drawn.contains("BR-East") && drawn.contains("<rect"));

        let (s, b) = batch(Arc::new(Date32Array::from(vec![20000, 19999, 20001])), DataType::Date32);
        assert_eq!(plan(&s), Ok(ChartKind::Lines { key: "k".into(), value: "n".into() }));
        assert!(svg(&s, &b).expect("svg").contains("<polyline"));
    }

    #[test]
    fn labels_from_data_are_escaped_in_the_svg() {
        let (s, b) = batch(Arc::new(StringArray::from(vec!["<script>x</script>", "a&b"])), DataType::Utf8);
        let drawn = svg(&s, &b).expect("svg");
        assert!(!drawn.contains("<script>"), "{drawn}");
        assert!(!drawn.contains("a&b"), "{drawn}");
    }

    #[test]
    fn extreme_values_and_one_point_draw_or_say_why_without_panicking() {
        for values in [vec![f64::MAX / 4.0, -1e300], vec![1e-300, 0.0], vec![0.0], vec![-5.0], vec![7.0; 200]]
        {
            let pts: Vec<(String, f64)> =
                values.iter().enumerate().map(|(i, v)| (i.to_string(), *v)).collect();
            for line in [false, true] {
                if let Ok(svg) = draw(&pts, "k", "v", "t", line) {
                    assert!(svg.starts_with("<svg"));
                }
            }
        }
    }

    #[test]
    fn an_axis_that_would_not_be_finite_is_refused_before_drawing() {
        let huge = |v: &[f64]| v.iter().map(|x| (String::new(), *x)).collect::<Vec<_>>();
        assert!(y_range(&huge(&[f64::MAX])).is_err());
        assert!(y_range(&huge(&[1e308, -1e308])).is_err());
        assert!(y_range(&huge(&[f64::INFINITY])).is_err());
        assert_eq!(y_range(&huge(&[0.0])), Ok((0.0, 1e-9)));
        // Such values never reach the axis: they are counted as not drawn, and said.
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(arrow::array::Float64Array::from(vec![Some(f64::MAX), None, Some(2.0)])),
            ],
        )
        .expect("batch");
        let drawn = svg(&schema, &[b]).expect("svg");
        assert!(drawn.contains("2 not drawn: NULL, not finite or beyond ±1e300"), "{drawn}");
    }

    #[test]
    fn a_result_without_a_key_and_a_value_gets_no_chart_and_says_why() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Float64, true)]));
        assert!(plan(&schema).expect_err("no chart").contains("measure"));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        assert!(plan(&schema).expect_err("no chart").contains("numeric"));
    }
}
