//! Process-wide metrics: plain atomics, rendered at `/metrics` in the Prometheus text
//! exposition format (version 0.0.4). Call sites record through the free functions below;
//! nothing here allocates on the hot path or can fail.
//!
//! Names, all prefixed `deis_builder_`:
//! - `pushes_total{result}` (counter): `success` (released), `failed` (the build or the
//!   release failed), `rejected` (refused before building: ref rules, app busy, queue full),
//!   `cancelled` (the client went away or the server stopped it).
//! - `build_duration_seconds{kind}` (histogram): builds that ran to an end, successful or
//!   not; `kind` is `buildpack`, `dockerfile` or `import`.
//! - `ssh_received_bytes_total`, `slug_bytes_total` (counters).
//! - `builds_active`, `builds_queued` (gauges, held by [`InFlight`] guards).
//! - `auth_failures_total`, `containers_swept_total`, `images_swept_total`,
//!   `source_archive_failures_total` (counters).
//! - `leases_held` (gauge), `leases_taken_over_total`, `leases_lost_total` (counters): app
//!   leases in the shared store (replicas).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    Success,
    Failed,
    Rejected,
    Cancelled,
}

impl PushResult {
    const ALL: [PushResult; 4] = [
        PushResult::Success,
        PushResult::Failed,
        PushResult::Rejected,
        PushResult::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            PushResult::Success => "success",
            PushResult::Failed => "failed",
            PushResult::Rejected => "rejected",
            PushResult::Cancelled => "cancelled",
        }
    }
}

/// What kind of build ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildKind {
    Buildpack,
    Dockerfile,
    Import,
}

impl BuildKind {
    const ALL: [BuildKind; 3] = [
        BuildKind::Buildpack,
        BuildKind::Dockerfile,
        BuildKind::Import,
    ];

    fn label(self) -> &'static str {
        match self {
            BuildKind::Buildpack => "buildpack",
            BuildKind::Dockerfile => "dockerfile",
            BuildKind::Import => "import",
        }
    }
}

/// Upper bounds (seconds) of the build duration buckets: builds take seconds to tens of
/// minutes (the default build timeout is 15 minutes).
const BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

#[derive(Debug)]
struct Histogram {
    /// Observations per bucket (not cumulative; summed when rendered). The last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric of the process. One static instance; tests make their own.
#[derive(Debug)]
pub struct Registry {
    pushes: [AtomicU64; PushResult::ALL.len()],
    builds: [Histogram; BuildKind::ALL.len()],
    ssh_received_bytes: AtomicU64,
    slug_bytes: AtomicU64,
    builds_active: AtomicI64,
    builds_queued: AtomicI64,
    auth_failures: AtomicU64,
    containers_swept: AtomicU64,
    images_swept: AtomicU64,
    source_archive_failures: AtomicU64,
    leases_held: AtomicI64,
    leases_taken_over: AtomicU64,
    leases_lost: AtomicU64,
}

static REGISTRY: Registry = Registry::new();

impl Registry {
    pub const fn new() -> Registry {
        Registry {
            pushes: [const { AtomicU64::new(0) }; PushResult::ALL.len()],
            builds: [const { Histogram::new() }; BuildKind::ALL.len()],
            ssh_received_bytes: AtomicU64::new(0),
            slug_bytes: AtomicU64::new(0),
            builds_active: AtomicI64::new(0),
            builds_queued: AtomicI64::new(0),
            auth_failures: AtomicU64::new(0),
            containers_swept: AtomicU64::new(0),
            images_swept: AtomicU64::new(0),
            source_archive_failures: AtomicU64::new(0),
            leases_held: AtomicI64::new(0),
            leases_taken_over: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
        }
    }

    fn push_finished(&self, result: PushResult) {
        let slot = PushResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.pushes[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn build_finished(&self, kind: BuildKind, took: Duration) {
        let slot = BuildKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.builds[slot].observe(took);
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(4096);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);

        header(
            &mut text,
            "pushes_total",
            "counter",
            "Pushes by outcome: success, failed, rejected (before building), cancelled.",
        );
        for (result, count) in PushResult::ALL.iter().zip(&self.pushes) {
            let _ = writeln!(
                text,
                "deis_builder_pushes_total{{result=\"{}\"}} {}",
                result.label(),
                load(count)
            );
        }

        header(
            &mut text,
            "build_duration_seconds",
            "histogram",
            "Duration of builds that ran to an end, by kind.",
        );
        for (kind, histogram) in BuildKind::ALL.iter().zip(&self.builds) {
            let kind = kind.label();
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += load(bucket);
                let _ = writeln!(
                    text,
                    "deis_builder_build_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += load(&histogram.buckets[BUCKETS.len()]);
            let _ = writeln!(
                text,
                "deis_builder_build_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = load(&histogram.sum_micros) as f64 / 1e6;
            let _ = writeln!(
                text,
                "deis_builder_build_duration_seconds_sum{{kind=\"{kind}\"}} {sum}"
            );
            let _ = writeln!(
                text,
                "deis_builder_build_duration_seconds_count{{kind=\"{kind}\"}} {}",
                load(&histogram.count)
            );
        }

        let counters = [
            (
                "ssh_received_bytes_total",
                "Bytes received from SSH clients on session channels.",
                &self.ssh_received_bytes,
            ),
            (
                "slug_bytes_total",
                "Compressed bytes of slugs stored.",
                &self.slug_bytes,
            ),
            (
                "auth_failures_total",
                "SSH public keys refused.",
                &self.auth_failures,
            ),
            (
                "containers_swept_total",
                "Leftover build containers removed by the start-up sweep.",
                &self.containers_swept,
            ),
            (
                "images_swept_total",
                "Leftover untagged images removed by the start-up sweep.",
                &self.images_swept,
            ),
            (
                "source_archive_failures_total",
                "Source tarballs of deployed pushes that could not be stored.",
                &self.source_archive_failures,
            ),
            (
                "leases_taken_over_total",
                "App leases taken over from a replica that stopped renewing them.",
                &self.leases_taken_over,
            ),
            (
                "leases_lost_total",
                "App leases this builder lost while holding them (its push was stopped).",
                &self.leases_lost,
            ),
        ];
        for (name, help, counter) in counters {
            header(&mut text, name, "counter", help);
            let _ = writeln!(text, "deis_builder_{name} {}", load(counter));
        }

        let gauges = [
            ("builds_active", "Builds running now.", &self.builds_active),
            (
                "builds_queued",
                "Pushes waiting for a build slot.",
                &self.builds_queued,
            ),
            (
                "leases_held",
                "App leases this builder holds in the shared store.",
                &self.leases_held,
            ),
        ];
        for (name, help, gauge) in gauges {
            header(&mut text, name, "gauge", help);
            let _ = writeln!(
                text,
                "deis_builder_{name} {}",
                gauge.load(Ordering::Relaxed)
            );
        }
        text
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

fn header(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP deis_builder_{name} {help}");
    let _ = writeln!(text, "# TYPE deis_builder_{name} {kind}");
}

/// Counts one gauge up while it lives: an active or a queued build. Hold it for exactly as
/// long as the state lasts; dropping it (on any path) counts down again.
#[derive(Debug)]
#[must_use = "the gauge counts down when this guard is dropped"]
pub struct InFlight {
    gauge: &'static AtomicI64,
}

impl InFlight {
    fn enter(gauge: &'static AtomicI64) -> InFlight {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The process-wide registry's text, for `/metrics`.
pub fn render() -> String {
    REGISTRY.render()
}

pub fn push_finished(result: PushResult) {
    REGISTRY.push_finished(result);
}

pub fn build_finished(kind: BuildKind, took: Duration) {
    REGISTRY.build_finished(kind, took);
}

/// A build is running (from the moment it has a build slot until its clean-up is done).
pub fn build_active() -> InFlight {
    InFlight::enter(&REGISTRY.builds_active)
}

/// A push waits for a build slot (the concurrent-build limit).
pub fn build_queued() -> InFlight {
    InFlight::enter(&REGISTRY.builds_queued)
}

/// An app lease is held in the shared store.
pub fn lease_held() -> InFlight {
    InFlight::enter(&REGISTRY.leases_held)
}

pub fn lease_taken_over() {
    REGISTRY.leases_taken_over.fetch_add(1, Ordering::Relaxed);
}

pub fn lease_lost() {
    REGISTRY.leases_lost.fetch_add(1, Ordering::Relaxed);
}

pub fn ssh_bytes_received(bytes: usize) {
    REGISTRY
        .ssh_received_bytes
        .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

pub fn slug_stored(bytes: u64) {
    REGISTRY.slug_bytes.fetch_add(bytes, Ordering::Relaxed);
}

pub fn auth_failed() {
    REGISTRY.auth_failures.fetch_add(1, Ordering::Relaxed);
}

/// The source tarball of a deployed push could not be stored.
pub fn source_archive_failed() {
    REGISTRY
        .source_archive_failures
        .fetch_add(1, Ordering::Relaxed);
}

pub fn containers_swept(count: usize) {
    REGISTRY
        .containers_swept
        .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
}

pub fn images_swept(count: usize) {
    REGISTRY
        .images_swept
        .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let registry = Registry::new();
        registry.push_finished(PushResult::Success);
        registry.push_finished(PushResult::Success);
        registry.push_finished(PushResult::Cancelled);
        registry.build_finished(BuildKind::Buildpack, Duration::from_millis(1500));
        registry.build_finished(BuildKind::Buildpack, Duration::from_secs(4000));
        registry.slug_bytes.fetch_add(1234, Ordering::Relaxed);
        let text = registry.render();

        let get = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(get("deis_builder_pushes_total{result=\"success\"}"), 2.0);
        assert_eq!(get("deis_builder_pushes_total{result=\"cancelled\"}"), 1.0);
        assert_eq!(get("deis_builder_pushes_total{result=\"failed\"}"), 0.0);
        let bucket = |kind: &str, le: &str| {
            get(&format!(
                "deis_builder_build_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("buildpack", "1"), 0.0);
        assert_eq!(bucket("buildpack", "2.5"), 1.0);
        assert_eq!(bucket("buildpack", "1800"), 1.0);
        assert_eq!(bucket("buildpack", "+Inf"), 2.0);
        assert_eq!(bucket("dockerfile", "+Inf"), 0.0);
        assert_eq!(
            get("deis_builder_build_duration_seconds_count{kind=\"buildpack\"}"),
            2.0
        );
        assert_eq!(
            get("deis_builder_build_duration_seconds_sum{kind=\"buildpack\"}"),
            4001.5
        );
        assert_eq!(get("deis_builder_slug_bytes_total"), 1234.0);
        assert!(text.contains("# TYPE deis_builder_build_duration_seconds histogram"));
        assert!(text.contains("# TYPE deis_builder_builds_queued gauge"));
        // Every sample line is `name{labels} value` or `name value`, nothing else.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, number) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("deis_builder_"), "{line}");
            assert!(number.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn gauges_count_down_when_guards_drop() {
        let before = REGISTRY.builds_queued.load(Ordering::Relaxed);
        let first = build_queued();
        let second = build_queued();
        assert!(REGISTRY.builds_queued.load(Ordering::Relaxed) >= before + 2);
        drop(first);
        drop(second);
        // Other tests may hold guards concurrently; ours are gone.
        assert!(REGISTRY.builds_queued.load(Ordering::Relaxed) <= before);
    }
}
