//! Column types of shared schemas, by name. The names follow Arrow's logical types; this crate
//! knows the names only (no Arrow), `concord-query` maps them to Arrow types.
//!
//! Every type has exactly one spelling, used in the charter text and in shared-schema JSON:
//!
//! ```text
//! int8 int16 int32 int64 uint8 uint16 uint32 uint64     float32 float64     boolean
//! decimal(P,S)        1 <= P <= 38, 0 <= S <= P          (128-bit)
//! decimal256(P,S)     1 <= P <= 76, 0 <= S <= P
//! date32 date64       time32(s|ms) time64(us|ns)         duration(s|ms|us|ns)
//! timestamp(s|ms|us|ns)  timestamp(UNIT,TZ)   TZ: UTC, +HH:MM, -HH:MM or an IANA name (Europe/Paris)
//! interval(year_month|day_time|month_day_nano)
//! utf8 large_utf8 utf8_view dictionary(KEY,utf8|large_utf8)   KEY: one of the integer types
//! binary large_binary binary_view
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CharterError;

/// The unit of timestamps, times and durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// Seconds (`s`).
    Second,
    /// Milliseconds (`ms`).
    Millisecond,
    /// Microseconds (`us`).
    Microsecond,
    /// Nanoseconds (`ns`).
    Nanosecond,
}

impl TimeUnit {
    /// Every unit, coarsest first.
    pub const ALL: [TimeUnit; 4] = [Self::Second, Self::Millisecond, Self::Microsecond, Self::Nanosecond];

    /// The unit's name in type names: `s`, `ms`, `us` or `ns`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "s",
            Self::Millisecond => "ms",
            Self::Microsecond => "us",
            Self::Nanosecond => "ns",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.as_str() == s)
    }
}

/// The kind of an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntervalUnit {
    /// Whole months (`year_month`).
    YearMonth,
    /// Days and milliseconds (`day_time`).
    DayTime,
    /// Months, days and nanoseconds (`month_day_nano`).
    MonthDayNano,
}

impl IntervalUnit {
    /// Every interval kind.
    pub const ALL: [IntervalUnit; 3] = [Self::YearMonth, Self::DayTime, Self::MonthDayNano];

    /// The kind's name in type names: `year_month`, `day_time` or `month_day_nano`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::YearMonth => "year_month",
            Self::DayTime => "day_time",
            Self::MonthDayNano => "month_day_nano",
        }
    }
}

/// The key type of a dictionary-encoded string column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DictionaryKey {
    /// Signed 8-bit keys.
    Int8,
    /// Signed 16-bit keys.
    Int16,
    /// Signed 32-bit keys.
    Int32,
    /// Signed 64-bit keys.
    Int64,
    /// Unsigned 8-bit keys.
    UInt8,
    /// Unsigned 16-bit keys.
    UInt16,
    /// Unsigned 32-bit keys.
    UInt32,
    /// Unsigned 64-bit keys.
    UInt64,
}

impl DictionaryKey {
    /// Every key type, signed first.
    pub const ALL: [DictionaryKey; 8] = [
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::UInt8,
        Self::UInt16,
        Self::UInt32,
        Self::UInt64,
    ];

    /// The key type's name in type names: `int8` to `uint64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::UInt8 => "uint8",
            Self::UInt16 => "uint16",
            Self::UInt32 => "uint32",
            Self::UInt64 => "uint64",
        }
    }
}

/// Arrow-compatible logical types a shared schema may use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// Signed 8-bit integer (`int8`).
    Int8,
    /// Signed 16-bit integer (`int16`).
    Int16,
    /// Signed 32-bit integer (`int32`).
    Int32,
    /// Signed 64-bit integer (`int64`).
    Int64,
    /// Unsigned 8-bit integer (`uint8`).
    UInt8,
    /// Unsigned 16-bit integer (`uint16`).
    UInt16,
    /// Unsigned 32-bit integer (`uint32`).
    UInt32,
    /// Unsigned 64-bit integer (`uint64`).
    UInt64,
    /// 32-bit float (`float32`).
    Float32,
    /// 64-bit float (`float64`).
    Float64,
    /// 128-bit decimal, `decimal(P,S)`.
    Decimal128 {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the decimal point, 0 to the precision.
        scale: u8,
    },
    /// 256-bit decimal, `decimal256(P,S)`.
    Decimal256 {
        /// Total digits, 1 to 76.
        precision: u8,
        /// Digits after the decimal point, 0 to the precision.
        scale: u8,
    },
    /// Days since the Unix epoch, 32-bit (`date32`).
    Date32,
    /// Milliseconds since the Unix epoch, 64-bit (`date64`).
    Date64,
    /// A point in time; with a time zone, an instant shown in that zone.
    Timestamp {
        /// The unit of the time since the Unix epoch.
        unit: TimeUnit,
        /// The time zone: `UTC`, an offset `+HH:MM` or `-HH:MM`, or an IANA name; `None` if zoneless.
        tz: Option<String>,
    },
    /// Time of day in seconds or milliseconds.
    Time32(TimeUnit),
    /// Time of day in microseconds or nanoseconds.
    Time64(TimeUnit),
    /// Elapsed time in the given unit (`duration(UNIT)`).
    Duration(TimeUnit),
    /// A calendar interval of the given kind (`interval(KIND)`).
    Interval(IntervalUnit),
    /// UTF-8 string with 32-bit offsets (`utf8`).
    Utf8,
    /// UTF-8 string with 64-bit offsets (`large_utf8`).
    LargeUtf8,
    /// UTF-8 string in Arrow's view layout (`utf8_view`).
    Utf8View,
    /// Strings stored once each, referred to by integer keys.
    Dictionary {
        /// The integer type of the keys.
        key: DictionaryKey,
        /// Whether the values are `large_utf8` rather than `utf8`.
        large: bool,
    },
    /// True or false (`boolean`).
    Boolean,
    /// Bytes with 32-bit offsets (`binary`).
    Binary,
    /// Bytes with 64-bit offsets (`large_binary`).
    LargeBinary,
    /// Bytes in Arrow's view layout (`binary_view`).
    BinaryView,
}

/// The names without parameters, in the order the documentation lists them.
const PLAIN: &[(&str, ColumnType)] = &[
    ("int8", ColumnType::Int8),
    ("int16", ColumnType::Int16),
    ("int32", ColumnType::Int32),
    ("int64", ColumnType::Int64),
    ("uint8", ColumnType::UInt8),
    ("uint16", ColumnType::UInt16),
    ("uint32", ColumnType::UInt32),
    ("uint64", ColumnType::UInt64),
    ("float32", ColumnType::Float32),
    ("float64", ColumnType::Float64),
    ("date32", ColumnType::Date32),
    ("date64", ColumnType::Date64),
    ("utf8", ColumnType::Utf8),
    ("large_utf8", ColumnType::LargeUtf8),
    ("utf8_view", ColumnType::Utf8View),
    ("boolean", ColumnType::Boolean),
    ("binary", ColumnType::Binary),
    ("large_binary", ColumnType::LargeBinary),
    ("binary_view", ColumnType::BinaryView),
];

const FORMS: &str = "int8..int64, uint8..uint64, float32, float64, decimal(P,S), decimal256(P,S), \
    date32, date64, timestamp(s|ms|us|ns[,TZ]), time32(s|ms), time64(us|ns), duration(s|ms|us|ns), \
    interval(year_month|day_time|month_day_nano), utf8, large_utf8, utf8_view, \
    dictionary(KEY,utf8|large_utf8), boolean, binary, large_binary, binary_view";

impl ColumnType {
    /// The canonical name, as the charter text and shared-schema JSON spell it.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Parses a type name; the error lists every form there is.
    pub fn parse(s: &str) -> Result<Self, CharterError> {
        let bad = |why: String| bad_type(s, why);
        if let Some((_, t)) = PLAIN.iter().find(|(n, _)| *n == s) {
            return Ok(t.clone());
        }
        let Some((head, args)) = s.strip_suffix(')').and_then(|x| x.split_once('(')) else {
            return Err(bad("is not a column type".into()));
        };
        let args: Vec<&str> = args.split(',').collect();
        let unit = |a: &str, allowed: &[TimeUnit]| parse_time_unit(s, a, allowed);
        use TimeUnit::*;
        Ok(match (head, args.as_slice()) {
            ("decimal" | "decimal256", [p, sc]) => Self::parse_decimal(s, head, p, sc)?,
            ("timestamp", [u]) => Self::Timestamp { unit: unit(u, &TimeUnit::ALL)?, tz: None },
            ("timestamp", [u, tz]) => {
                check_time_zone(tz).map_err(bad)?;
                Self::Timestamp { unit: unit(u, &TimeUnit::ALL)?, tz: Some((*tz).to_owned()) }
            }
            ("time32", [u]) => Self::Time32(unit(u, &[Second, Millisecond])?),
            ("time64", [u]) => Self::Time64(unit(u, &[Microsecond, Nanosecond])?),
            ("duration", [u]) => Self::Duration(unit(u, &TimeUnit::ALL)?),
            ("interval", [k]) => Self::Interval(
                IntervalUnit::ALL
                    .into_iter()
                    .find(|i| i.as_str() == *k)
                    .ok_or_else(|| bad("has no such interval kind".into()))?,
            ),
            ("dictionary", [k, v]) => Self::parse_dictionary(s, k, v)?,
            _ => return Err(bad("is not a column type".into())),
        })
    }

    /// Reads the precision and scale of `decimal(P,S)` or `decimal256(P,S)` in the type name `s`.
    fn parse_decimal(s: &str, head: &str, p: &str, sc: &str) -> Result<Self, CharterError> {
        let bad = |why: String| bad_type(s, why);
        let max = if head == "decimal" { 38 } else { 76 };
        let precision: u8 = p.parse().map_err(|_| bad(format!("has precision {p:?}, not a number")))?;
        let scale: u8 = sc.parse().map_err(|_| bad(format!("has scale {sc:?}, not a number")))?;
        if !(1..=max).contains(&precision) {
            return Err(bad(format!("has precision {precision}; {head} takes 1 to {max}")));
        }
        if scale > precision {
            return Err(bad(format!("has scale {scale} above its precision {precision}")));
        }
        Ok(if head == "decimal" {
            Self::Decimal128 { precision, scale }
        } else {
            Self::Decimal256 { precision, scale }
        })
    }

    /// Reads the key type and value type of `dictionary(KEY,utf8|large_utf8)` in the type name `s`.
    fn parse_dictionary(s: &str, k: &str, v: &str) -> Result<Self, CharterError> {
        let bad = |why: String| bad_type(s, why);
        Ok(Self::Dictionary {
            key: DictionaryKey::ALL
                .into_iter()
                .find(|d| d.as_str() == k)
                .ok_or_else(|| bad(format!("has key type {k:?}; keys are integer types")))?,
            large: match v {
                "utf8" => false,
                "large_utf8" => true,
                _ => return Err(bad(format!("has values {v:?}; dictionaries hold utf8 or large_utf8"))),
            },
        })
    }

    /// Whether the type is one of the eight integer types.
    pub fn is_integer(&self) -> bool {
        use ColumnType::*;
        matches!(self, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64)
    }

    /// Integers, floats and decimals: what SUM and AVG take.
    pub fn is_numeric(&self) -> bool {
        self.is_integer()
            || matches!(
                self,
                Self::Float32 | Self::Float64 | Self::Decimal128 { .. } | Self::Decimal256 { .. }
            )
    }

    /// Every type with a representative of each parameter: the list tests go through.
    pub fn examples() -> Vec<ColumnType> {
        let mut v: Vec<ColumnType> = PLAIN.iter().map(|(_, t)| t.clone()).collect();
        v.push(Self::Decimal128 { precision: 15, scale: 2 });
        v.push(Self::Decimal128 { precision: 38, scale: 10 });
        v.push(Self::Decimal256 { precision: 50, scale: 4 });
        for unit in TimeUnit::ALL {
            v.push(Self::Timestamp { unit, tz: None });
            v.push(Self::Timestamp { unit, tz: Some("UTC".into()) });
            v.push(Self::Duration(unit));
        }
        v.push(Self::Timestamp { unit: TimeUnit::Microsecond, tz: Some("+02:00".into()) });
        v.push(Self::Time32(TimeUnit::Second));
        v.push(Self::Time32(TimeUnit::Millisecond));
        v.push(Self::Time64(TimeUnit::Microsecond));
        v.push(Self::Time64(TimeUnit::Nanosecond));
        for k in IntervalUnit::ALL {
            v.push(Self::Interval(k));
        }
        v.push(Self::Dictionary { key: DictionaryKey::Int32, large: false });
        v.push(Self::Dictionary { key: DictionaryKey::UInt16, large: true });
        v
    }
}

/// The error for the type name `s`, saying `why` it is wrong and listing every form there is.
fn bad_type(s: &str, why: String) -> CharterError {
    CharterError::Invalid { what: "column type", reason: format!("{s:?} {why}; the types are {FORMS}") }
}

/// Reads the time unit `a` of the type name `s`, which must be one of `allowed`.
fn parse_time_unit(s: &str, a: &str, allowed: &[TimeUnit]) -> Result<TimeUnit, CharterError> {
    TimeUnit::parse(a).filter(|u| allowed.contains(u)).ok_or_else(|| {
        bad_type(
            s,
            format!(
                "has unit {a:?}; use one of {}",
                allowed.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// A time zone as Arrow takes it: `UTC`, an offset `+HH:MM`, or an IANA name.
fn check_time_zone(tz: &str) -> Result<(), String> {
    let offset = |s: &str| {
        let b = s.as_bytes();
        b.len() == 6
            && (b[0] == b'+' || b[0] == b'-')
            && b[1].is_ascii_digit()
            && b[2].is_ascii_digit()
            && b[3] == b':'
            && b[4].is_ascii_digit()
            && b[5].is_ascii_digit()
    };
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
    };
    if offset(tz) || name(tz) {
        Ok(())
    } else {
        Err(format!(
            "has time zone {tz:?}; write UTC, an offset like +02:00, or an IANA name like Europe/Paris"
        ))
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((n, _)) = PLAIN.iter().find(|(_, t)| t == self) {
            return f.write_str(n);
        }
        match self {
            Self::Decimal128 { precision, scale } => write!(f, "decimal({precision},{scale})"),
            Self::Decimal256 { precision, scale } => write!(f, "decimal256({precision},{scale})"),
            Self::Timestamp { unit, tz: None } => write!(f, "timestamp({})", unit.as_str()),
            Self::Timestamp { unit, tz: Some(tz) } => write!(f, "timestamp({},{tz})", unit.as_str()),
            Self::Time32(u) => write!(f, "time32({})", u.as_str()),
            Self::Time64(u) => write!(f, "time64({})", u.as_str()),
            Self::Duration(u) => write!(f, "duration({})", u.as_str()),
            Self::Interval(k) => write!(f, "interval({})", k.as_str()),
            Self::Dictionary { key, large } => {
                write!(f, "dictionary({},{})", key.as_str(), if *large { "large_utf8" } else { "utf8" })
            }
            // Every other type has a plain name.
            other => write!(f, "{other:?}"),
        }
    }
}

impl FromStr for ColumnType {
    type Err = CharterError;
    fn from_str(s: &str) -> Result<Self, CharterError> {
        Self::parse(s)
    }
}

impl Serialize for ColumnType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_itself() {
        for t in ColumnType::examples() {
            let name = t.to_string();
            assert!(!name.contains(' '), "{name}");
            assert_eq!(ColumnType::parse(&name).expect(&name), t, "{name}");
            let json = serde_json::to_string(&t).expect("serialises");
            assert_eq!(serde_json::from_str::<ColumnType>(&json).expect("reads"), t);
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for (s, says) in [
            ("decimal(39,2)", "takes 1 to 38"),
            ("decimal(10,11)", "above its precision"),
            ("decimal256(77,0)", "takes 1 to 76"),
            ("timestamp(m)", "use one of s, ms, us, ns"),
            ("time32(us)", "use one of s, ms"),
            ("timestamp(us,Europe Paris)", "IANA name"),
            ("dictionary(float64,utf8)", "keys are integer types"),
            ("dictionary(int32,int64)", "dictionaries hold utf8"),
            ("Int64", "is not a column type"),
            ("decimal", "is not a column type"),
        ] {
            let e = ColumnType::parse(s).expect_err(s).to_string();
            assert!(e.contains(says), "{s}: {e}");
            assert!(e.contains("decimal(P,S)"), "lists the forms: {e}");
        }
    }
}
