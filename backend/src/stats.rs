// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Request counters and latency histograms, exported in the Prometheus text
//! format (through `prometheus-client`) and summarised for the admin `stats`
//! command.

use std::time::Duration;

use nn_core::protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    queue: u32,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: u32,
}

/// Label value for a request that could not be answered at all.
const DROPPED: &str = "dropped";

type HistogramFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 µs .. ~0.5 s, doubling.
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    num_queues: u32,
    requests: Family<RequestLabels, Counter>,
    samples: Family<QueueLabels, Counter>,
    latency: HistogramFamily,
    generation: Gauge,
    swaps: Counter,
    swap_failures: Counter,
}

/// Per-queue totals for the admin `stats` command.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct QueueSummary {
    /// Queue index.
    pub queue: u32,
    /// Requests answered with `OK`.
    pub ok: u64,
    /// Requests answered with an error status, or dropped.
    pub errors: u64,
    /// Samples predicted.
    pub samples: u64,
}

/// The admin `stats` reply.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// One entry per request queue.
    pub queues: Vec<QueueSummary>,
    /// Successful model swaps.
    pub swaps: u64,
    /// Refused model loads.
    pub swap_failures: u64,
}

fn status_label(status: Option<u32>) -> String {
    match status {
        Some(s) => protocol::status_label(s).to_string(),
        None => DROPPED.to_string(),
    }
}

impl Stats {
    /// Metrics for a device with `num_queues` request queues.
    pub fn new(num_queues: u32) -> Self {
        let mut registry = Registry::with_prefix("virtio_nn");
        let requests = Family::<RequestLabels, Counter>::default();
        let samples = Family::<QueueLabels, Counter>::default();
        let latency = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let generation = Gauge::default();
        let swaps = Counter::default();
        let swap_failures = Counter::default();
        registry.register(
            "requests",
            "Requests served, by queue and response status",
            requests.clone(),
        );
        registry.register("samples", "Samples predicted, by queue", samples.clone());
        registry.register(
            "request_latency_seconds",
            "Time from taking a request off its queue to writing its response",
            latency.clone(),
        );
        registry.register(
            "model_generation",
            "Generation of the model being served",
            generation.clone(),
        );
        registry.register("model_swaps", "Models swapped in", swaps.clone());
        registry.register(
            "model_swap_failures",
            "Model loads refused by validation",
            swap_failures.clone(),
        );
        generation.set(1);
        Self {
            registry,
            num_queues,
            requests,
            samples,
            latency,
            generation,
            swaps,
            swap_failures,
        }
    }

    /// Adds the supervisor's counters (`worker_restarts_total`,
    /// `worker_upgrades_total`: workers started after a death, and by an
    /// upgrade, since the supervisor started) for a worker it started.
    pub fn with_supervisor(mut self, info: &crate::control::Info) -> Self {
        let restarts = Counter::<u64>::default();
        let upgrades = Counter::<u64>::default();
        restarts.inc_by(info.restarts);
        upgrades.inc_by(info.upgrades);
        self.registry.register(
            "worker_restarts",
            "Workers the supervisor started after one died",
            restarts,
        );
        self.registry.register(
            "worker_upgrades",
            "Workers the supervisor started for an upgrade",
            upgrades,
        );
        self
    }

    /// The generation served at start (a worker taking over serves its
    /// predecessor's).
    pub fn set_generation(&self, generation: u32) {
        self.generation.set(i64::from(generation));
    }

    /// Records one request.
    pub fn record(&self, queue: u16, status: Option<u32>, samples: u32, latency: Duration) {
        let queue = u32::from(queue);
        self.requests
            .get_or_create(&RequestLabels {
                queue,
                status: status_label(status),
            })
            .inc();
        let q = QueueLabels { queue };
        if status == Some(protocol::STATUS_OK) {
            self.samples.get_or_create(&q).inc_by(u64::from(samples));
        }
        self.latency
            .get_or_create(&q)
            .observe(latency.as_secs_f64());
    }

    /// Records a model swap to `generation`, or a refused load.
    pub fn record_swap(&self, generation: Option<u32>) {
        match generation {
            Some(g) => {
                self.swaps.inc();
                self.generation.set(i64::from(g));
            }
            None => {
                self.swap_failures.inc();
            }
        }
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Totals per queue.
    pub fn summary(&self) -> Summary {
        let statuses: Vec<Option<u32>> = (protocol::STATUS_OK..=protocol::STATUS_MAX)
            .map(Some)
            .chain([None])
            .collect();
        let queues = (0..self.num_queues)
            .map(|queue| {
                let count = |s: Option<u32>| {
                    self.requests
                        .get(&RequestLabels {
                            queue,
                            status: status_label(s),
                        })
                        .map_or(0, |c| c.get())
                };
                let ok = count(Some(protocol::STATUS_OK));
                let all: u64 = statuses.iter().map(|&s| count(s)).sum();
                QueueSummary {
                    queue,
                    ok,
                    errors: all - ok,
                    samples: self
                        .samples
                        .get(&QueueLabels { queue })
                        .map_or(0, |c| c.get()),
                }
            })
            .collect();
        Summary {
            queues,
            swaps: self.swaps.get(),
            swap_failures: self.swap_failures.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_exposition() {
        let s = Stats::new(2);
        s.record(0, Some(protocol::STATUS_OK), 16, Duration::from_micros(3));
        s.record(
            0,
            Some(protocol::STATUS_BAD_DIMS),
            0,
            Duration::from_micros(1),
        );
        s.record(1, None, 0, Duration::from_micros(1));
        s.record(1, Some(protocol::STATUS_OK), 1, Duration::from_micros(2));
        s.record_swap(Some(2));
        s.record_swap(None);
        let sum = s.summary();
        assert_eq!(
            sum.queues,
            vec![
                QueueSummary {
                    queue: 0,
                    ok: 1,
                    errors: 1,
                    samples: 16
                },
                QueueSummary {
                    queue: 1,
                    ok: 1,
                    errors: 1,
                    samples: 1
                },
            ]
        );
        assert_eq!((sum.swaps, sum.swap_failures), (1, 1));
        let text = s.encode();
        assert!(
            text.contains("virtio_nn_requests_total{queue=\"0\",status=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("status=\"bad_dims\""), "{text}");
        assert!(
            text.contains("virtio_nn_request_latency_seconds_bucket{le="),
            "{text}"
        );
        assert!(text.contains("virtio_nn_model_generation 2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
