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

/// A spinner with a message on standard error while long work runs, drawn only on a terminal
/// (indicatif hides it otherwise); cleared when dropped.
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    /// Starts a spinner that says `msg`.
    pub fn start(msg: impl Into<String>) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(msg.into());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Self(bar)
    }

    /// Says what the work is doing now.
    pub fn say(&self, msg: &str) {
        if self.0.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.0.set_message(msg.to_owned());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
