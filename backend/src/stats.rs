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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    name: String,
    /// Empty: the model has no repository version.
    version: String,
    checksum: String,
}

/// Label value for a request that could not be answered at all.
const DROPPED: &str = "dropped";

type HistogramFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 µs .. ~0.5 s, doubling.
    Histogram::new(exponential_buckets(1e-6, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    // 1 .. 1024 samples per request, doubling.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    num_queues: u32,
    requests: Family<RequestLabels, Counter>,
    samples: Family<QueueLabels, Counter>,
    latency: HistogramFamily,
    batch: HistogramFamily,
    in_flight: Family<QueueLabels, Gauge>,
    /// One series, value 1, labelled with the served model (none while no
    /// model is loaded).
    model_info: Family<ModelLabels, Gauge>,
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
        let batch = HistogramFamily::new_with_constructor(batch_histogram as fn() -> Histogram);
        let in_flight = Family::<QueueLabels, Gauge>::default();
        let model_info = Family::<ModelLabels, Gauge>::default();
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
            "request_samples",
            "Samples per request answered with OK (the batch size), by queue",
            batch.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests taken off their queue and not yet answered, by queue",
            in_flight.clone(),
        );
        registry.register(
            "model_info",
            "The served model: name, repository version (empty: none) and checksum; value 1",
            model_info.clone(),
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
        // Every queue's in-flight gauge from the start (at 0), so that a
        // scrape before the first request shows each queue.
        for queue in 0..num_queues {
            let _ = in_flight.get_or_create(&QueueLabels { queue });
        }
        Self {
            registry,
            num_queues,
            requests,
            samples,
            latency,
            batch,
            in_flight,
            model_info,
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

    /// Labels the info metric with the served model (`None`: no model).
    pub fn set_model(&self, model: Option<&nn_core::Model>, version: Option<u64>) {
        self.model_info.clear();
        if let Some(m) = model {
            self.model_info
                .get_or_create(&ModelLabels {
                    name: m.name.clone(),
                    version: version.map(|v| v.to_string()).unwrap_or_default(),
                    checksum: format!("crc32c:{:08x}", m.checksum),
                })
                .set(1);
        }
    }

    /// Counts a request of `queue` in flight until the guard is dropped.
    pub fn in_flight(&self, queue: u16) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&QueueLabels {
                queue: u32::from(queue),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
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
            self.batch.get_or_create(&q).observe(f64::from(samples));
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

    /// The OpenMetrics text exposition (`application/openmetrics-text`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text exposition, version 0.0.4 (`text/plain`): the
    /// OpenMetrics one with each counter's `# HELP`/`# TYPE` naming its
    /// `_total` samples, no `# UNIT` lines and no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
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

/// A request in flight (see [`Stats::in_flight`]).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition into the Prometheus
/// text format: the two differ only in the metadata lines (OpenMetrics
/// names a counter family without `_total`, Prometheus names it as its
/// samples) and the `# EOF` terminator.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let s = Stats::new(1);
        s.record(0, Some(protocol::STATUS_OK), 3, Duration::from_micros(3));
        let model = nn_core::Model::new(
            nn_core::Mlp::new(vec![nn_core::Layer::new(
                1,
                1,
                vec![1],
                vec![0],
                nn_core::Activation::Identity,
            )
            .unwrap()])
            .unwrap(),
            "a \"quoted\", name",
        );
        s.set_model(Some(&model), Some(3));
        let text = s.encode_prometheus();
        assert!(
            text.contains("# TYPE virtio_nn_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP virtio_nn_requests_total "), "{text}");
        assert!(text.contains("# TYPE virtio_nn_request_samples histogram\n"));
        assert!(text.contains("virtio_nn_request_samples_bucket{le=\"4.0\",queue=\"0\"} 1"));
        assert!(
            text.contains("name=\"a \\\"quoted\\\", name\",version=\"3\""),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        {
            let _held = s.in_flight(0);
            assert!(s
                .encode()
                .contains("virtio_nn_requests_in_flight{queue=\"0\"} 1"));
        }
        assert!(s
            .encode()
            .contains("virtio_nn_requests_in_flight{queue=\"0\"} 0"));
        s.set_model(None, None);
        assert!(!s.encode().contains("virtio_nn_model_info{"));
    }
}
