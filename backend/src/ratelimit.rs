// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rate-limited logging for lines a guest or a client can cause: each call
//! site logs at most [`BURST`] lines per [`INTERVAL_MS`], and the first line
//! after a quiet spell says how many were suppressed (as the kernel's
//! `printk_ratelimited`). The metrics count every event; the log only needs
//! examples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines one call site may log per interval.
pub const BURST: u64 = 10;
/// The interval, in milliseconds.
pub const INTERVAL_MS: u64 = 5000;

/// The state of one call site.
#[derive(Debug, Default)]
pub struct RateLimit {
    /// Start of the current interval, in ms since the process's epoch.
    window: AtomicU64,
    /// Lines in the current interval (logged or not).
    count: AtomicU64,
    /// Lines suppressed since the last one logged.
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl RateLimit {
    /// A call site's state (for a `static`).
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now; if so, also how many were
    /// suppressed before it.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now: u64) -> Option<u64> {
        let start = self.window.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= INTERVAL_MS
            && self
                .window
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `log::warn!`, at most [`BURST`] lines per [`INTERVAL_MS`] from this call
/// site.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                log::warn!("{} ({suppressed} similar lines suppressed)", format_args!($($arg)+));
            } else {
                log::warn!($($arg)+);
            }
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count() {
        let l = RateLimit::new();
        let t0 = 10 * INTERVAL_MS;
        let allowed = (0..1000).filter(|_| l.allow_at(t0).is_some()).count();
        assert_eq!(allowed as u64, BURST);
        assert_eq!(l.allow_at(t0 + INTERVAL_MS - 1), None);
        assert_eq!(l.allow_at(t0 + INTERVAL_MS), Some(1000 - BURST + 1));
        assert_eq!(l.allow_at(t0 + INTERVAL_MS), Some(0));
    }
}
