//! Writing to standard output: every line through [`say!`], which returns the write's error
//! instead of panicking, so that `concord ... | head` ends quietly when `head` closes the pipe.

/// `writeln!` to standard output, `?` on its error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}
pub(crate) use say;

/// Whether `e` is a write to a closed pipe: the reader left, nothing is wrong.
pub fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A Unix time as RFC 3339 in UTC, seconds precision.
pub fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `1 group`, `2 groups`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}
