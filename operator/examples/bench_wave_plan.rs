//! `make bench-controller` (second table): planning a reimage wave over N endpoints (default
//! 10,000) with the pure planner, next to a naive planner in the same run. Target from the
//! issue: under 100 ms for 10,000 endpoints.
//!
//! Rows:
//! - `plan`: selection (matchLabels + matchExpressions), skips, canary and batches;
//! - `decide, first reconcile`: plan plus the first step (tally, batch 1 due);
//! - `decide, mid-wave`: a reconcile halfway through, with every member's state tallied;
//! - baseline `naive plan`: the same selection done the obvious way (every batch rescans the
//!   fleet and checks "already planned" with a list search), which is quadratic.
//!
//! Usage: bench_wave_plan [N]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use recast_core::wave::{self, Candidate, Member, WaveInput};
use recast_crds::wave::{ReimageWaveSpec, ReimageWaveStatus, WaveStrategy};

const RUNS: usize = 15;
/// The naive planner takes seconds at 10,000 endpoints: fewer runs of it.
const NAIVE_RUNS: usize = 3;

fn fleet(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            name: format!("ep-{i:05}"),
            labels: BTreeMap::from([
                ("ring".to_string(), ["pilot", "broad"][i % 2].to_string()),
                ("site".to_string(), format!("site-{}", i % 40)),
                ("role".to_string(), "pos".to_string()),
            ]),
            protected: i % 97 == 0,
            paused: i % 101 == 0,
            quarantined: i % 103 == 0,
        })
        .collect()
}

fn spec() -> ReimageWaveSpec {
    ReimageWaveSpec {
        multicast: None,
        // Every endpoint but those of two sites: 95% of the fleet.
        selector: LabelSelector {
            match_labels: Some(BTreeMap::from([("role".into(), "pos".into())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "site".into(),
                operator: "NotIn".into(),
                values: Some(vec!["site-0".into(), "site-1".into()]),
            }]),
        },
        image: "win11-24h2-2026-02".into(),
        strategy: WaveStrategy {
            batch_size: Some(IntOrString::String("2%".into())),
            max_failures: Some(IntOrString::String("1%".into())),
            canary: Some(IntOrString::Int(10)),
            ..Default::default()
        },
        maintenance_window: None,
        require_approval: false,
        approved_by: None,
        paused: false,
        aborted: false,
        reason: "benchmark".into(),
    }
}

/// The obvious planner: rescan the fleet for every batch, and check whether an endpoint was
/// already planned by searching the list of planned names.
fn naive_plan(spec: &ReimageWaveSpec, fleet: &[Candidate], batch: usize) -> Vec<Vec<String>> {
    let mut planned: Vec<String> = Vec::new();
    let mut batches = Vec::new();
    loop {
        let mut b = Vec::new();
        for c in fleet {
            if b.len() == batch {
                break;
            }
            let eligible = !c.protected && !c.paused && !c.quarantined;
            if eligible
                && wave::selects(&spec.selector, &c.labels).unwrap_or(false)
                && !planned.contains(&c.name)
                && !b.contains(&c.name)
            {
                b.push(c.name.clone());
            }
        }
        if b.is_empty() {
            return batches;
        }
        planned.extend(b.iter().cloned());
        batches.push(b);
    }
}

struct Row {
    what: &'static str,
    runs: usize,
    median: Duration,
    max: Duration,
    detail: String,
}

fn time<T>(
    what: &'static str,
    runs: usize,
    mut f: impl FnMut() -> T,
    detail: impl Fn(&T) -> String,
) -> Row {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = std::hint::black_box(f());
        times.push(t.elapsed());
        last = Some(out);
    }
    times.sort();
    Row {
        what,
        runs,
        median: times[runs / 2],
        max: times[runs - 1],
        detail: last.map(|o| detail(&o)).unwrap_or_default(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let fleet = fleet(n);
    let spec = spec();
    let now: Timestamp = "2026-02-11T08:00:00Z".parse().unwrap();
    let waiting: BTreeMap<String, Member> = fleet
        .iter()
        .map(|c| (c.name.clone(), Member::Waiting))
        .collect();

    let plan = time(
        "plan",
        RUNS,
        || wave::plan(&spec, &fleet).unwrap(),
        |p| {
            format!(
                "{} planned in {} batches, {} skipped",
                p.planned(),
                p.batches.len(),
                p.skipped.len()
            )
        },
    );
    let empty = ReimageWaveStatus::default();
    let first = time(
        "decide, first reconcile",
        RUNS,
        || {
            wave::decide(
                WaveInput {
                    name: "feb",
                    spec: &spec,
                    status: &empty,
                    image_known_good: true,
                },
                &fleet,
                &waiting,
                now,
            )
        },
        |d| format!("{} due", d.due.len()),
    );
    // Halfway: the first half of the batches succeeded.
    let planned = wave::decide(
        WaveInput {
            name: "feb",
            spec: &spec,
            status: &empty,
            image_known_good: true,
        },
        &fleet,
        &waiting,
        now,
    )
    .status;
    let half = planned.batches.len() / 2;
    let mut members = waiting.clone();
    let mut status = planned.clone();
    for b in &mut status.batches[..half] {
        b.started_at = Some("2026-02-11T08:00:00Z".into());
        b.finished_at = Some("2026-02-11T08:30:00Z".into());
        for e in &b.endpoints {
            members.insert(e.clone(), Member::Succeeded);
        }
    }
    let mid = time(
        "decide, mid-wave",
        RUNS,
        || {
            wave::decide(
                WaveInput {
                    name: "feb",
                    spec: &spec,
                    status: &status,
                    image_known_good: true,
                },
                &fleet,
                &members,
                now,
            )
        },
        |d| {
            format!(
                "batch {} of {}, {} succeeded so far",
                d.status.current_batch.unwrap_or(0),
                d.status.batches.len(),
                d.status.counts.succeeded
            )
        },
    );
    let batch = planned
        .batches
        .get(1)
        .map(|b| b.endpoints.len())
        .unwrap_or(1);
    let naive = time(
        "naive plan (baseline)",
        NAIVE_RUNS,
        || naive_plan(&spec, &fleet, batch),
        |b| format!("{} batches", b.len()),
    );
    let target = Duration::from_millis(100);
    println!();
    println!(
        "| wave planning | endpoints | runs | median | max | vs naive | under 100 ms | result |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in [&plan, &first, &mid, &naive] {
        let speedup = naive.median.as_secs_f64() / r.median.as_secs_f64().max(1e-9);
        let meets = if std::ptr::eq(r, &naive) {
            "(baseline)".to_string()
        } else if r.max < target {
            "yes".to_string()
        } else {
            "NO".to_string()
        };
        println!(
            "| {} | {n} | {} | {} | {} | {:.0}x | {meets} | {} |",
            r.what,
            r.runs,
            ms(r.median),
            ms(r.max),
            speedup,
            r.detail
        );
    }
}
