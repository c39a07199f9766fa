//! The wall time of a piece of work's steps, logged at debug level (target
//! `concord_node::phases`) so that an operator can see where a query's time goes: step names
//! and milliseconds only, never what the work was about.

use std::time::Instant;

/// Steps of one piece of work, logged as one line when it ends (or fails part way).
pub struct Phases {
    what: &'static str,
    last: Instant,
    steps: Vec<(&'static str, f64)>,
}

impl Phases {
    /// Starts timing `what` (`query`, `request`, `serve`, ...).
    pub fn start(what: &'static str) -> Self {
        Self { what, last: Instant::now(), steps: Vec::new() }
    }

    /// Ends the step `step` now; the next step starts here.
    pub fn mark(&mut self, step: &'static str) {
        self.mark_at(step, Instant::now());
    }

    /// Ends the step `step` at `at` (no earlier than the step began); the next starts there.
    pub fn mark_at(&mut self, step: &'static str, at: Instant) {
        let at = at.max(self.last);
        self.steps.push((step, at.duration_since(self.last).as_secs_f64() * 1e3));
        self.last = at;
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        if !tracing::enabled!(target: "concord_node::phases", tracing::Level::DEBUG) {
            return;
        }
        let steps: Vec<String> = self.steps.iter().map(|(s, ms)| format!("{s}={ms:.3}")).collect();
        let total: f64 = self.steps.iter().map(|(_, ms)| ms).sum();
        tracing::debug!(
            target: "concord_node::phases",
            work = self.what,
            total_ms = format!("{total:.3}"),
            steps = %steps.join(" "),
            "timings"
        );
    }
}
