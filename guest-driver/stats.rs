// SPDX-License-Identifier: GPL-2.0

//! Prediction statistics: `/sys/kernel/neural_network/performance`.
//!
//! Lock-free counters (atomics) updated by every prediction, whatever
//! interface it came from, and a latency histogram with log2 buckets of
//! microseconds, from which the percentiles are estimated:
//!
//! ```text
//! Cache hits: 3
//! Cache misses: 117
//! Errors: 2
//! requests: 120
//! samples: 1020
//! timeouts: 1
//! cache_fallbacks: 0
//! cache_entries: 12
//! latency_min_us: 180
//! latency_avg_us: 420
//! latency_max_us: 5003120
//! latency_p50_us: 512
//! latency_p90_us: 1024
//! latency_p99_us: 2048
//! resends: 0
//! fallback_answers: 0
//! enomem_retries: 0
//! reloads: 0
//! ```
//!
//! The first three lines are the seed's, spelled as it spells them; the
//! others follow. `requests` counts successful device requests (a batch is
//! one request of many `samples`); `Errors` failed ones (including
//! `timeouts`). Answers from the result cache (`Cache hits`, and
//! `cache_fallbacks`: timed-out requests answered from an expired entry)
//! are not requests; they count in `model_info`'s `Predictions`. The
//! latencies are those of successful requests; the percentiles are upper
//! bounds of their histogram bucket (powers of two). `resends` counts
//! requests sent again because a model of another output width, swapped in
//! after the request was built, answered them. `fallback_answers` counts
//! calls answered by the CPU fallback ([`crate::fallback`]; they count in
//! `Predictions` too). `enomem_retries` counts requests tried again after
//! `ENOMEM` with the result cache emptied; `reloads` the times 3 device
//! errors (`EIO`) in a row made the driver read config space and fetch the
//! model copy again (at most every 10 s). The values are reset
//! when the module is loaded.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Histogram buckets: bucket `i` holds latencies below `2^(i+1)` µs (and
/// at least `2^i` µs for `i > 0`); the last one everything above.
const BUCKETS: usize = 32;

/// The module's prediction statistics.
pub(crate) struct Stats {
    requests: AtomicU64,
    samples: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_fallbacks: AtomicU64,
    resends: AtomicU64,
    fallback_answers: AtomicU64,
    enomem_retries: AtomicU64,
    reloads: AtomicU64,
    lat_sum_ns: AtomicU64,
    lat_min_ns: AtomicU64,
    lat_max_ns: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

/// The statistics of the loaded module.
pub(crate) static STATS: Stats = Stats::new();

impl Stats {
    const fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_fallbacks: AtomicU64::new(0),
            resends: AtomicU64::new(0),
            fallback_answers: AtomicU64::new(0),
            enomem_retries: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            lat_sum_ns: AtomicU64::new(0),
            lat_min_ns: AtomicU64::new(u64::MAX),
            lat_max_ns: AtomicU64::new(0),
            hist: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// Records a successful request of `samples` samples that took `ns`.
    pub(crate) fn success(&self, samples: usize, ns: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
        self.lat_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.lat_min_ns.fetch_min(ns, Ordering::Relaxed);
        self.lat_max_ns.fetch_max(ns, Ordering::Relaxed);
        self.hist[bucket(ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failed request.
    pub(crate) fn failure(&self, timed_out: bool) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if timed_out {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a lookup in the result cache.
    pub(crate) fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a timed-out request answered from an expired cache entry.
    pub(crate) fn cache_fallback(&self) {
        self.cache_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request sent again after a model swap overtook it.
    pub(crate) fn resend(&self) {
        self.resends.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a call answered by the CPU fallback.
    pub(crate) fn fallback_answer(&self) {
        self.fallback_answers.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request tried again after `ENOMEM` (the cache shrunk).
    pub(crate) fn enomem_retry(&self) {
        self.enomem_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a reload after device errors in a row.
    pub(crate) fn reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// The `p`-th percentile (upper bound of its bucket, µs), 0 if empty.
    fn percentile(&self, counts: &[u64; BUCKETS], total: u64, p: u64) -> u64 {
        if total == 0 {
            return 0;
        }
        let rank = (total * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 1u64 << (i + 1);
            }
        }
        1u64 << BUCKETS
    }

    /// Writes the `key: value` lines of `performance`.
    pub(crate) fn show(&self, w: &mut impl Write, cache_entries: usize) -> fmt::Result {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counts = [0u64; BUCKETS];
        for (c, h) in counts.iter_mut().zip(self.hist.iter()) {
            *c = r(h);
        }
        let total: u64 = counts.iter().sum();
        let min = r(&self.lat_min_ns);
        let min = if min == u64::MAX { 0 } else { min };
        let avg = r(&self.lat_sum_ns).checked_div(total).unwrap_or(0);
        write!(
            w,
            "Cache hits: {}\nCache misses: {}\nErrors: {}\nrequests: {}\nsamples: {}\ntimeouts: {}\n\
             cache_fallbacks: {}\ncache_entries: {}\nlatency_min_us: {}\nlatency_avg_us: {}\nlatency_max_us: {}\n\
             latency_p50_us: {}\nlatency_p90_us: {}\nlatency_p99_us: {}\nresends: {}\n\
             fallback_answers: {}\nenomem_retries: {}\nreloads: {}\n",
            r(&self.cache_hits),
            r(&self.cache_misses),
            r(&self.errors),
            r(&self.requests),
            r(&self.samples),
            r(&self.timeouts),
            r(&self.cache_fallbacks),
            cache_entries,
            min / 1000,
            avg / 1000,
            r(&self.lat_max_ns) / 1000,
            self.percentile(&counts, total, 50),
            self.percentile(&counts, total, 90),
            self.percentile(&counts, total, 99),
            r(&self.resends),
            r(&self.fallback_answers),
            r(&self.enomem_retries),
            r(&self.reloads),
        )
    }
}

/// The histogram bucket of a latency of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    ((63 - us.leading_zeros()) as usize).min(BUCKETS - 1)
}
