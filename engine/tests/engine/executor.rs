//! Threads and channels: fan-out, fan-in, failures, panics, back-pressure, the epoch loop.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use picie_engine::exec::{Outcome, RunOptions};
use picie_engine::Error;

use picie_engine::testing::ran;

use crate::common::{fixture, Values, HEADER, IN_FLIGHT, MAX_IN_FLIGHT};

/// The in-flight counters are global: tests that read them take turns.
static COUNTERS: Mutex<()> = Mutex::new(());

fn sum_0_to(n: u64) -> u64 {
    n * (n - 1) / 2
}

#[test]
fn fan_out_to_three_consumers() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let yaml = format!(
        "{HEADER}stages:
  - name: src
    kind: numbers
    params: {{count: 100, batch: 7}}
  - name: s1
    kind: sum
    inputs: {{numbers: src.numbers}}
  - name: x3
    kind: scale
    params: {{factor: 3}}
    inputs: {{numbers: src.numbers}}
  - name: s3
    kind: sum
    inputs: {{numbers: x3.numbers}}
  - name: copy
    kind: acc
    inputs: {{base: src.table}}
"
    );
    let f = fixture();
    let (plan, report) = f.run(&yaml).unwrap();
    assert_eq!(f.values(&plan, "s1", "total"), vec![sum_0_to(100)]);
    assert_eq!(f.values(&plan, "s3", "total"), vec![3 * sum_0_to(100)]);
    assert_eq!(
        f.values(&plan, "src", "table"),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(f.values(&plan, "copy", "total"), vec![sum_0_to(100)]);
    assert_eq!(ran(&report).len(), 5);
}

#[test]
fn fan_in_from_two_producers() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let yaml = format!(
        "{HEADER}channel_capacity: 1
stages:
  - name: a
    kind: numbers
    params: {{count: 50, batch: 1}}
  - name: b
    kind: numbers
    params: {{count: 50, batch: 1, start: 1000}}
  - name: m
    kind: merge
    inputs: {{a: a.numbers, b: b.numbers}}
"
    );
    let f = fixture();
    let (plan, _) = f.run(&yaml).unwrap();
    let mut want: Vec<u64> = (0..50).chain(1000..1050).collect();
    want.sort();
    assert_eq!(f.values(&plan, "m", "merged"), want);
}

#[test]
fn a_failing_stage_reports_its_own_error_and_keeps_committed_artifacts() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    // `early` commits before the slow branch starts (`bad` reads its table, so the
    // src/bad stream group waits for it), then the branch fails; the failure is the
    // consumer's. Without that edge, `early` could be cancelled before committing.
    let yaml = format!(
        "{HEADER}stages:
  - name: early
    kind: numbers
    params: {{count: 5}}
  - name: src
    kind: numbers
    params: {{count: 100000, batch: 10}}
  - name: bad
    kind: sum
    params: {{fail: true}}
    inputs: {{numbers: src.numbers, offset: early.table}}
  - name: after
    kind: acc
    inputs: {{base: bad.total}}
"
    );
    let f = fixture();
    let t = Instant::now();
    let err = f.run(&yaml).unwrap_err();
    match &err {
        Error::StageFailed { node, source, .. } => {
            assert_eq!(node, "bad");
            assert!(source.to_string().contains("told to fail"), "{source}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(t.elapsed().as_secs() < 20, "the run did not stop promptly");
    let plan = f.plan(&yaml).unwrap();
    assert_eq!(f.values(&plan, "early", "table"), vec![0, 1, 2, 3, 4]);
    // src was cancelled mid-way: nothing of it was committed, tmp/ is clean after a rerun.
    let src = &plan.nodes[plan.index_of("src").unwrap()];
    assert!(matches!(
        f.store().lookup(&src.output_keys["table"]),
        picie_engine::store::Lookup::Missing
    ));
    let record = std::fs::read_to_string(f.dir.path().join("store/runs/t/latest.json")).unwrap();
    assert!(record.contains("\"ok\": false"), "{record}");
}

#[test]
fn a_failing_producer_is_the_reported_error_not_its_consumers() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let yaml = format!(
        "{HEADER}stages:
  - name: src
    kind: numbers
    params: {{count: 1000, batch: 10, fail_at: 500}}
  - name: s
    kind: sum
    inputs: {{numbers: src.numbers}}
"
    );
    let err = fixture().run(&yaml).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stage `src` (numbers) failed: numbers: refusing value 500"),
        "{text}"
    );
    assert!(!text.contains("SendError"), "{text}");
}

#[test]
fn a_panic_becomes_an_error() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let yaml = format!(
        "{HEADER}stages:
  - name: src
    kind: numbers
    params: {{count: 30, panic_at: 12}}
  - name: s
    kind: sum
    inputs: {{numbers: src.numbers}}
"
    );
    let text = fixture().run(&yaml).unwrap_err().to_string();
    assert!(
        text.contains("stage `src` (numbers) failed: stage panicked: numbers: panic at 12"),
        "{text}"
    );
}

#[test]
fn back_pressure_bounds_items_in_flight() {
    let _g = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    IN_FLIGHT.store(0, Ordering::SeqCst);
    MAX_IN_FLIGHT.store(0, Ordering::SeqCst);
    let yaml = format!(
        "{HEADER}channel_capacity: 2
stages:
  - name: src
    kind: numbers
    params: {{count: 60, batch: 1}}
  - name: s
    kind: sum
    params: {{delay_ms: 5}}
    inputs: {{numbers: src.numbers}}
"
    );
    let f = fixture();
    let (plan, _) = f.run(&yaml).unwrap();
    assert_eq!(f.values(&plan, "s", "total"), vec![sum_0_to(60)]);
    // 2 in the channel, 1 being sent, 1 being consumed; unbounded buffering would reach 60.
    let max = MAX_IN_FLIGHT.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} items were in flight");
}

#[test]
fn the_epoch_loop_unrolls_and_chains_epochs() {
    let yaml = format!(
        "{HEADER}stages:
  - name: src
    kind: numbers
    params: {{count: 4}}
  - name: init
    kind: acc
    params: {{add: 5}}
    inputs: {{base: src.table}}
  - name: final
    kind: acc
    inputs: {{base: step.total}}
loop:
  epochs: 3
  stages:
    - name: step
      kind: acc
      inputs:
        base: src.table
        prev: {{from: step.total, epoch: prev, first: init.total}}
"
    );
    let f = fixture();
    let (plan, _) = f.run(&yaml).unwrap();
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    for n in ["step@1", "step@2", "step@3"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(plan.nodes[plan.index_of("step@2").unwrap()].epoch, Some(2));
    // init = 6 + 5 = 11; step@e = 6 + prev + 1000 e.
    assert_eq!(f.values(&plan, "init", "total"), vec![11]);
    assert_eq!(f.values(&plan, "step@1", "total"), vec![6 + 11 + 1000]);
    assert_eq!(f.values(&plan, "step@2", "total"), vec![6 + 1017 + 2000]);
    assert_eq!(f.values(&plan, "step@3", "total"), vec![6 + 3023 + 3000]);
    // Outside the loop, `step.total` is the last epoch.
    assert_eq!(f.values(&plan, "final", "total"), vec![6029]);
}

#[test]
fn until_force_and_from_select_what_runs() {
    let yaml = format!(
        "{HEADER}stages:
  - name: src
    kind: numbers
  - name: a
    kind: acc
    inputs: {{base: src.table}}
  - name: b
    kind: acc
    inputs: {{base: a.total}}
  - name: c
    kind: acc
    inputs: {{base: b.total}}
"
    );
    let f = fixture();
    let until = RunOptions {
        until: vec!["a".into()],
        ..Default::default()
    };
    let (_, r) = f.run_with(&yaml, &until).unwrap();
    assert_eq!(ran(&r), ["a", "src"]);
    let (_, r) = f.run(&yaml).unwrap();
    assert_eq!(ran(&r), ["b", "c"]);
    let force = RunOptions {
        force: vec!["b".into()],
        ..Default::default()
    };
    let (_, r) = f.run_with(&yaml, &force).unwrap();
    assert_eq!(ran(&r), ["b"]);
    let from = RunOptions {
        from: vec!["a".into()],
        ..Default::default()
    };
    let (_, r) = f.run_with(&yaml, &from).unwrap();
    assert_eq!(ran(&r), ["a", "b", "c"]);
    let bad = RunOptions {
        force: vec!["zz".into()],
        ..Default::default()
    };
    assert!(matches!(
        f.run_with(&yaml, &bad),
        Err(Error::NoSuchStage(_))
    ));
    let (_, r) = f.run(&yaml).unwrap();
    assert!(r.nodes.iter().all(|(_, o)| *o == Outcome::Cached));
}
