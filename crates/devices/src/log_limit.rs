//! Rate limits for log lines a guest can cause.
//!
//! A device that fails to start logs a warning, and the guest can reset and restart it as
//! often as it likes; a guest that breaks a queue can do it again after every reset. Each
//! such line goes to the VMM's log, a file on the host that nothing else bounds. A call site
//! that a guest can reach logs through [`rate_limited!`](crate::rate_limited) instead: its
//! first [`BURST`] lines are written, then at most one per [`INTERVAL`], and the line that is
//! written after a quiet spell says how many like it were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site writes before it is limited.
pub const BURST: u32 = 10;
/// Once limited, a call site writes at most one line per this long.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// The limit of one call site: the first `burst` lines pass, then one per `interval`.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Lines written so far, up to `burst`.
    written: u32,
    /// When the last line was written.
    last: Option<Instant>,
    /// Lines left out since the last one written.
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter (a `const fn`, so that each call site can keep one in a `static`).
    pub const fn new(burst: u32, interval: Duration) -> LogLimiter {
        LogLimiter {
            burst,
            interval,
            state: Mutex::new(State {
                written: 0,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(k)` to write it, `k` being the number of
    /// lines left out since the last one written; `None` to leave it out (and count it).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting: the counts are
        // still plain numbers.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = s.written < self.burst
            || s.last
                .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            s.suppressed = s.suppressed.saturating_add(1);
            return None;
        }
        s.written = s.written.saturating_add(1).min(self.burst);
        s.last = Some(now);
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// Logs through `tracing` at the level named first (`warn`, `error`, `debug`, …), limited
/// per call site by a [`LogLimiter`] of [`BURST`] lines then one per [`INTERVAL`]. A line
/// written after some were left out ends with `(K more like it suppressed)`.
///
/// ```
/// devices::rate_limited!(warn, "virtio-net: {} queue unusable", "rx");
/// ```
#[macro_export]
macro_rules! rate_limited {
    // A level the subscriber does not show costs no lock and no clock read, and does not use
    // up the burst (debug-level sites are on paths a guest can drive at will).
    (@ $level:ident, $upper:ident, $($arg:tt)+) => {{
        if ::tracing::enabled!(::tracing::Level::$upper) {
            $crate::rate_limited!(@@ $level, $($arg)+)
        }
    }};
    (error, $($arg:tt)+) => { $crate::rate_limited!(@ error, ERROR, $($arg)+) };
    (warn, $($arg:tt)+) => { $crate::rate_limited!(@ warn, WARN, $($arg)+) };
    (info, $($arg:tt)+) => { $crate::rate_limited!(@ info, INFO, $($arg)+) };
    (debug, $($arg:tt)+) => { $crate::rate_limited!(@ debug, DEBUG, $($arg)+) };
    (trace, $($arg:tt)+) => { $crate::rate_limited!(@ trace, TRACE, $($arg)+) };
    (@@ $level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new(
            $crate::log_limit::BURST,
            $crate::log_limit::INTERVAL,
        );
        match LIMIT.admit(::std::time::Instant::now()) {
            Some(0) => ::tracing::$level!($($arg)+),
            Some(suppressed) => ::tracing::$level!(
                "{} ({suppressed} more like it suppressed)",
                format_args!($($arg)+)
            ),
            None => {}
        }
    }};
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_first_lines_pass_then_one_per_interval() {
        let l = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit(t0), Some(0));
        }
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(9)), None);
        // The next line written says how many were left out.
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(19)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(20)), Some(2));
        // A quiet spell does not give back the burst: still one per interval.
        assert_eq!(l.admit(t0 + Duration::from_secs(1000)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1001)), None);
    }

    #[test]
    fn a_flood_writes_a_bounded_number_of_lines() {
        let l = LogLimiter::new(BURST, INTERVAL);
        let t0 = Instant::now();
        // A million lines over ten minutes, one every 600 µs.
        let mut written = 0u64;
        let mut reported = 0u64;
        for i in 0..1_000_000u64 {
            if let Some(k) = l.admit(t0 + Duration::from_micros(600 * i)) {
                written += 1;
                reported += k;
            }
        }
        let bound = u64::from(BURST) + 600 / INTERVAL.as_secs() + 1;
        assert!(written <= bound, "{written} lines written, bound {bound}");
        // Every line is either written or counted in a later written one (but the last few).
        let last_suppressed = l.state.lock().unwrap().suppressed;
        assert_eq!(written + reported + last_suppressed, 1_000_000);
    }

    #[test]
    fn an_earlier_instant_is_no_interval() {
        let l = LogLimiter::new(0, Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 - Duration::from_secs(50)), None);
    }

    /// What `f` logs at any level, as the VMM's log would hold it.
    pub(crate) fn capture_logs(f: impl FnOnce()) -> String {
        use std::sync::Arc;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_macro_writes_the_burst_of_each_call_site() {
        let log = capture_logs(|| {
            for i in 0..100 {
                crate::rate_limited!(warn, "site a: line {i}");
                if i < 3 {
                    // Another call site keeps its own count.
                    crate::rate_limited!(error, "site b: line {i}");
                }
            }
        });
        let a: Vec<&str> = log.lines().filter(|l| l.contains("site a")).collect();
        assert_eq!(a.len(), BURST as usize, "{log}");
        assert!(
            a[0].contains("WARN") && a[0].ends_with("site a: line 0"),
            "{}",
            a[0]
        );
        assert_eq!(log.lines().filter(|l| l.contains("site b")).count(), 3);
    }
}
