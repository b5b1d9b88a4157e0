//! Token-bucket rate limiting of a device's operations/s and bytes/s: the basis of EBS-style
//! IOPS and throughput limits.
//!
//! A bucket holds up to `size` tokens and refills at `size` tokens per `refill_time_ms`; a
//! one-time burst adds tokens that are spent first and never refilled. A request takes one
//! operation token and as many byte tokens as it moves. When a bucket runs dry the limiter is
//! blocked and arms its timerfd for the moment enough tokens will be back; the device's I/O
//! handler watches that fd and retries then. A single request larger than a bucket's size is
//! let through when the bucket is full and leaves it in debt, so large requests are slowed, not
//! refused forever.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::metrics::Counter;

/// One bucket's shape, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (the sustained burst).
    pub size: u64,
    /// Extra tokens available once, at the start.
    pub one_time_burst: u64,
    /// Milliseconds to refill `size` tokens from empty.
    pub refill_time_ms: u64,
}

#[derive(Debug, Clone)]
struct TokenBucket {
    cfg: BucketConfig,
    /// Tokens available; negative after an oversize request (debt).
    budget: i128,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(cfg: BucketConfig, now: Instant) -> Option<Self> {
        (cfg.size > 0 && cfg.refill_time_ms > 0).then_some(Self {
            cfg,
            budget: i128::from(cfg.size),
            burst: cfg.one_time_burst,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ns = now.saturating_duration_since(self.last).as_nanos();
        let full = i128::from(self.cfg.size);
        let period_ns = u128::from(self.cfg.refill_time_ms) * 1_000_000;
        let tokens = (elapsed_ns * u128::from(self.cfg.size) / period_ns) as i128;
        if tokens > 0 {
            // Only the time that produced whole tokens is used up.
            let used_ns = (tokens as u128) * period_ns / u128::from(self.cfg.size);
            self.last += Duration::from_nanos(used_ns.min(u128::from(u64::MAX)) as u64);
            self.budget = (self.budget + tokens).min(full);
        }
        if self.budget >= full {
            self.last = now;
        }
    }

    /// Takes `n` tokens if it can.
    fn consume(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = u128::from(n);
        // Spend the one-time burst first.
        let from_burst = n.min(u128::from(self.burst));
        let rest = (n - from_burst) as i128;
        let full = i128::from(self.cfg.size);
        if rest <= self.budget || (rest > full && self.budget == full) {
            self.burst -= from_burst as u64;
            self.budget -= rest;
            true
        } else {
            false
        }
    }

    /// Returns tokens taken for work that was then not done.
    fn give_back(&mut self, n: u64) {
        self.budget = (self.budget + i128::from(n)).min(i128::from(self.cfg.size));
    }

    /// How long until `n` more tokens (or a full bucket, for an oversize request) are there.
    fn wait_for(&self, n: u64) -> Duration {
        let want = i128::from(n.min(self.cfg.size)).max(1);
        let missing = (want - self.budget).max(1) as u128;
        let ns =
            missing * u128::from(self.cfg.refill_time_ms) * 1_000_000 / u128::from(self.cfg.size);
        Duration::from_nanos(ns.clamp(1_000_000, u128::from(u64::MAX)) as u64)
    }
}

/// What a request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub ops: u64,
    pub bytes: u64,
}

/// Counters of how often the limiter held requests back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleStats {
    pub throttled_requests: u64,
}

/// How often and how long a device's limiter held its queue back, for `GET /metrics`. Kept by
/// the [`LimiterHandle`] so that it survives the guest resetting the device (a new limiter).
#[derive(Debug, Default)]
pub struct ThrottleCounters {
    /// Times a request found a bucket short and the queue stopped until the timer.
    pub throttled: Counter,
    /// Nanoseconds the queue spent stopped, counted when each wait ends.
    pub throttled_ns: Counter,
}

pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    /// When the current wait began (while `blocked`).
    blocked_since: Option<Instant>,
    counters: Arc<ThrottleCounters>,
    /// Where changed limits come from, and the generation last applied.
    control: Option<(LimiterHandle, u64)>,
}

/// A device's limits as the control API sees them: changing them wakes the device's limiter
/// through its own timer, so the I/O handler applies them without any other plumbing.
#[derive(Clone)]
pub struct LimiterHandle(Arc<HandleShared>);

struct HandleShared {
    generation: AtomicU64,
    counters: Arc<ThrottleCounters>,
    state: Mutex<HandleState>,
}

struct HandleState {
    ops: Option<BucketConfig>,
    bytes: Option<BucketConfig>,
    /// A duplicate of the live limiter's timer.
    timer: Option<TimerFd>,
}

impl LimiterHandle {
    pub fn new(ops: Option<BucketConfig>, bytes: Option<BucketConfig>) -> Self {
        Self(Arc::new(HandleShared {
            generation: AtomicU64::new(0),
            counters: Arc::default(),
            state: Mutex::new(HandleState {
                ops,
                bytes,
                timer: None,
            }),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HandleState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits in force (or in force once the device starts).
    pub fn limits(&self) -> (Option<BucketConfig>, Option<BucketConfig>) {
        let s = self.state();
        (s.ops, s.bytes)
    }

    /// Replaces the limits; a running device applies them within a millisecond.
    pub fn set(&self, ops: Option<BucketConfig>, bytes: Option<BucketConfig>) {
        let mut s = self.state();
        s.ops = ops;
        s.bytes = bytes;
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = &mut s.timer {
            if let Err(e) = t.reset(Duration::from_millis(1), None) {
                tracing::warn!("rate limiter: cannot wake the device: {e}");
            }
        }
    }

    /// How much the device's limiters (this one's and earlier ones') throttled.
    pub fn counters(&self) -> Arc<ThrottleCounters> {
        self.0.counters.clone()
    }

    /// A limiter for a device that is starting, following this handle from now on.
    pub fn limiter(&self) -> std::io::Result<RateLimiter> {
        let mut s = self.state();
        let generation = self.0.generation.load(Ordering::SeqCst);
        let mut limiter = RateLimiter::new(s.ops, s.bytes)?;
        // SAFETY: dup returns a new descriptor (checked below) that nothing else owns.
        let dup = unsafe { libc::dup(limiter.timer.as_raw_fd()) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a valid, owned duplicate of a timerfd.
        s.timer = Some(unsafe { TimerFd::from_raw_fd(dup) });
        limiter.control = Some((self.clone(), generation));
        limiter.counters = self.0.counters.clone();
        Ok(limiter)
    }
}

impl RateLimiter {
    /// A limiter with the given buckets; a bucket of size 0 or refill time 0 means unlimited.
    pub fn new(ops: Option<BucketConfig>, bytes: Option<BucketConfig>) -> std::io::Result<Self> {
        let now = Instant::now();
        Ok(Self {
            ops: ops.and_then(|c| TokenBucket::new(c, now)),
            bytes: bytes.and_then(|c| TokenBucket::new(c, now)),
            timer: TimerFd::new()?,
            blocked: false,
            blocked_since: None,
            counters: Arc::default(),
            control: None,
        })
    }

    /// Applies limits changed through the handle since the last call.
    fn follow_handle(&mut self) {
        let Some((handle, applied)) = &self.control else {
            return;
        };
        let current = handle.0.generation.load(Ordering::SeqCst);
        if current != *applied {
            let (ops, bytes) = handle.limits();
            let handle = handle.clone();
            self.update(ops, bytes);
            self.control = Some((handle, current));
        }
    }

    /// Changes the buckets while the device runs; new buckets start full.
    pub fn update(&mut self, ops: Option<BucketConfig>, bytes: Option<BucketConfig>) {
        let now = Instant::now();
        self.ops = ops.and_then(|c| TokenBucket::new(c, now));
        self.bytes = bytes.and_then(|c| TokenBucket::new(c, now));
        // Whatever was waiting may go now; the handler retries on the timer.
        if self.blocked {
            let _ = self.timer.reset(Duration::from_millis(1), None);
        }
    }

    /// True while a previous request is waiting for tokens: callers must not jump the queue.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes the tokens for `cost`, or blocks the limiter and arms its timer.
    pub fn consume(&mut self, cost: Cost) -> bool {
        self.follow_handle();
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        if let Some(b) = &mut self.ops {
            if !b.consume(cost.ops, now) {
                let wait = b.wait_for(cost.ops);
                return self.block(wait);
            }
        }
        if let Some(b) = &mut self.bytes {
            if !b.consume(cost.bytes, now) {
                let wait = b.wait_for(cost.bytes);
                if let Some(o) = &mut self.ops {
                    o.give_back(cost.ops);
                }
                return self.block(wait);
            }
        }
        true
    }

    fn block(&mut self, wait: Duration) -> bool {
        self.blocked = true;
        self.counters.throttled.inc();
        if let Err(e) = self.timer.reset(wait, None) {
            tracing::warn!("rate limiter timer: {e}");
            self.blocked = false;
        } else {
            self.blocked_since = Some(Instant::now());
        }
        false
    }

    /// Call when the timer fd is readable: the limiter is unblocked and the caller retries.
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.blocked = false;
        if let Some(t) = self.blocked_since.take() {
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counters.throttled_ns.add(ns);
        }
    }

    pub fn stats(&self) -> ThrottleStats {
        ThrottleStats {
            throttled_requests: self.counters.throttled.get(),
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_ms: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: refill_ms,
        })
    }

    #[test]
    fn limits_changed_through_the_handle_apply_and_wake_the_limiter() {
        let h = LimiterHandle::new(bucket(1, 60_000), None);
        let mut l = h.limiter().unwrap();
        assert!(l.consume(Cost { ops: 1, bytes: 0 }));
        assert!(
            !l.consume(Cost { ops: 1, bytes: 0 }),
            "blocked for a minute"
        );
        h.set(None, None);
        // The timer fires within a millisecond instead of a minute.
        l.on_timer();
        assert_eq!(
            h.counters().throttled.get(),
            1,
            "the handle sees the limiter's count"
        );
        assert!(h.counters().throttled_ns.get() > 0);
        for _ in 0..1000 {
            assert!(l.consume(Cost { ops: 1, bytes: 0 }));
        }
        assert_eq!(h.limits(), (None, None));
    }

    #[test]
    fn unlimited_without_buckets() {
        let mut l = RateLimiter::new(None, bucket(0, 100)).unwrap();
        for _ in 0..10_000 {
            assert!(l.consume(Cost {
                ops: 1,
                bytes: 1 << 20
            }));
        }
    }

    #[test]
    fn ops_bucket_blocks_then_refills() {
        let mut l = RateLimiter::new(bucket(10, 100), None).unwrap();
        for _ in 0..10 {
            assert!(l.consume(Cost { ops: 1, bytes: 0 }));
        }
        assert!(!l.consume(Cost { ops: 1, bytes: 0 }));
        assert!(l.is_blocked());
        assert_eq!(l.stats().throttled_requests, 1);
        assert_eq!(
            l.counters.throttled_ns.get(),
            0,
            "counted when the wait ends"
        );
        // The timer fires when one token is back (10 ms for 10 tokens per 100 ms).
        l.on_timer();
        assert!(!l.is_blocked());
        let waited = l.counters.throttled_ns.get();
        assert!(
            (5_000_000..1_000_000_000).contains(&waited),
            "waited {waited} ns for a 10 ms refill"
        );
        assert!(l.consume(Cost { ops: 1, bytes: 0 }));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let mut l = RateLimiter::new(
            Some(BucketConfig {
                size: 2,
                one_time_burst: 3,
                refill_time_ms: 60_000,
            }),
            None,
        )
        .unwrap();
        for _ in 0..5 {
            assert!(l.consume(Cost { ops: 1, bytes: 0 }));
        }
        assert!(!l.consume(Cost { ops: 1, bytes: 0 }));
    }

    #[test]
    fn oversize_request_passes_on_a_full_bucket_and_leaves_debt() {
        let mut l = RateLimiter::new(None, bucket(1000, 60_000)).unwrap();
        assert!(l.consume(Cost {
            ops: 1,
            bytes: 5000
        }));
        assert!(!l.consume(Cost { ops: 1, bytes: 1 }));
    }

    #[test]
    fn byte_refusal_returns_the_op_token() {
        let mut l = RateLimiter::new(bucket(1, 60_000), bucket(10, 10)).unwrap();
        assert!(l.consume(Cost { ops: 0, bytes: 10 }));
        assert!(!l.consume(Cost { ops: 1, bytes: 5 }));
        l.on_timer();
        // The op token was given back, so the request fits once bytes are back.
        assert!(l.consume(Cost { ops: 1, bytes: 5 }));
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        // 20 tokens per 100 ms: after the initial 20, 10 more every 50 ms, never above 20.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut b = TokenBucket::new(bucket(20, 100).unwrap(), t0).unwrap();
        assert!(b.consume(20, at(0)));
        assert!(!b.consume(1, at(0)));
        assert!(b.consume(10, at(50)));
        assert!(!b.consume(1, at(50)));
        assert!(b.consume(5, at(75)));
        assert!(!b.consume(1, at(75)));
        assert!(
            b.consume(20, at(10_000)),
            "a long idle time refills to the size"
        );
        assert!(!b.consume(1, at(10_000)), "never more than the size");
        assert_eq!(b.wait_for(10), Duration::from_millis(50));
    }
}
