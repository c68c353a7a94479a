//! Sharded passes (`Plan::into_sharded`): parts computed by several workers on one store
//! join into exactly what one process writes.

use std::time::Duration;

use picie_engine::exec::RunOptions;
use picie_engine::shard::Shard;
use picie_engine::testing::ran;
use picie_engine::{Error, Plan};

use crate::common::{fixture, Values, HEADER};

/// `n` stores 300000 numbers in batches of 3331 (Parquet, several 1024-row chunks, an odd last
/// batch); `a` reads the table.
fn pipeline(delay_ms: u64) -> String {
    format!(
        "{HEADER}stages:
  - name: n
    kind: numbers
    params: {{count: 300000, batch: 3331, delay_ms: {delay_ms}}}
  - name: a
    kind: acc
    inputs: {{base: n.table}}
"
    )
}

/// The blake3 of each file of a node's output, as its manifest records them.
fn files(f: &picie_engine::testing::Fixture, plan: &Plan, node: &str, out: &str) -> Vec<String> {
    f.artifact(plan, node, out)
        .manifest
        .files
        .iter()
        .map(|e| e.blake3.clone())
        .collect()
}

fn worker(
    f: &picie_engine::testing::Fixture,
    yaml: &str,
    shard: Shard,
) -> Result<(Plan, picie_engine::exec::RunReport), Error> {
    // Workers on threads read the file written once (writing it again races their reads).
    if std::fs::read_to_string(f.path()).ok().as_deref() != Some(yaml) {
        f.write(yaml);
    }
    let plan = Plan::load(&f.path(), &f.registry)?.into_sharded(shard).0;
    let report = picie_engine::run(&plan, &f.store(), &RunOptions::default())?;
    Ok((plan, report))
}

#[test]
fn parts_join_into_the_bytes_one_process_writes() {
    let whole = fixture();
    let (plan, _) = whole.run(&pipeline(0)).unwrap();
    let expected = files(&whole, &plan, "n", "table");
    assert_eq!(
        whole.values(&plan, "a", "total"),
        [(0..300000).sum::<u64>()]
    );
    for count in 1..=3 {
        let f = fixture();
        // Workers one after another: the first also computes the parts nobody holds.
        let (plan, report) = worker(&f, &pipeline(0), Shard::new(0, count).unwrap()).unwrap();
        if count > 1 {
            let parts: Vec<String> = (0..count).map(|q| format!("n[part {q}/{count}]")).collect();
            for p in &parts {
                assert!(ran(&report).contains(p), "{p} in {:?}", ran(&report));
            }
        }
        assert_eq!(files(&f, &plan, "n", "table"), expected, "{count} parts");
        assert_eq!(
            f.values(&plan, "a", "total"),
            whole.values(&plan, "a", "total")
        );
        for i in 1..count {
            let (_, report) = worker(&f, &pipeline(0), Shard::new(i, count).unwrap()).unwrap();
            assert!(ran(&report).is_empty(), "worker {i}: {:?}", ran(&report));
        }
        // The joined node has the whole's key: a plain run finds everything cached.
        let (_, report) = f.run(&pipeline(0)).unwrap();
        assert!(ran(&report).is_empty(), "{:?}", ran(&report));
    }
}

#[test]
fn concurrent_workers_each_compute_their_own_part() {
    let f = fixture();
    let yaml = pipeline(40);
    f.write(&yaml);
    let reports: Vec<Vec<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (f, yaml) = (&f, &yaml);
                s.spawn(move || ran(&worker(f, yaml, Shard::new(i, 2).unwrap()).unwrap().1))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        reports[0].contains(&"n[part 0/2]".to_string()),
        "{reports:?}"
    );
    assert!(
        reports[1].contains(&"n[part 1/2]".to_string()),
        "{reports:?}"
    );
    // Each shared node was computed once, by one of the two.
    crate::common::assert_computed_once(&reports, &["n", "a", "n[part 0/2]", "n[part 1/2]"]);
    let plan = f.plan(&yaml).unwrap();
    assert_eq!(f.values(&plan, "a", "total"), [(0..300000).sum::<u64>()]);
}

#[test]
fn a_group_with_a_stage_that_does_not_shard_runs_whole_and_says_why() {
    let f = fixture();
    let yaml = format!(
        "{HEADER}stages:
  - name: n
    kind: numbers
  - name: s
    kind: sum
    inputs: {{numbers: n.numbers}}
"
    );
    let (plan, notes) = f
        .plan(&yaml)
        .unwrap()
        .into_sharded(Shard::new(0, 2).unwrap());
    assert_eq!(plan.nodes.len(), 2);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("`s` runs whole"), "{notes:?}");
}

#[test]
fn workers_with_another_shard_count_are_refused_while_the_first_ones_work() {
    let f = fixture();
    let yaml = pipeline(150);
    f.write(&yaml);
    std::thread::scope(|s| {
        let first = s.spawn(|| worker(&f, &yaml, Shard::new(0, 2).unwrap()));
        // Part 0 of 2 holds its claim for ~1.5 s (8 batches of 150 ms).
        std::thread::sleep(Duration::from_millis(500));
        let e = worker(&f, &yaml, Shard::new(1, 3).unwrap()).expect_err("another count is refused");
        let chain = picie_engine::error::chain(&e);
        assert!(
            chain.contains("is being computed in 2 parts") && chain.contains("part 1/3"),
            "{chain}"
        );
        first.join().unwrap().unwrap();
    });
    // Once those workers are gone, a new count is free to take over what is left.
    let (_, report) = worker(&f, &yaml, Shard::new(0, 3).unwrap()).unwrap();
    assert!(
        ran(&report).is_empty(),
        "all was joined: {:?}",
        ran(&report)
    );
}

/// A pass that takes rounds (`Stage::rounds`): each round's parts and join are nodes of
/// their own, the state travels through the store, the last join has the whole's key.
#[test]
fn rounds_of_parts_carry_their_state_into_what_one_process_computes() {
    let yaml = format!(
        "{HEADER}stages:
  - name: base
    kind: slow
    params: {{batches: 7, rows: 1000}}
  - name: r
    kind: rounds
    params: {{rounds: 3}}
    inputs: {{base: base.table}}
"
    );
    let whole = fixture();
    let (plan, _) = whole.run(&yaml).unwrap();
    let expected = whole.values(&plan, "r", "result");
    for count in 1..=3u32 {
        let f = fixture();
        let (plan, report) = worker(&f, &yaml, Shard::new(0, count).unwrap()).unwrap();
        if count > 1 {
            for name in [
                format!("r[round 1/3 part 0/{count}]"),
                format!("r[round 1/3 part {}/{count}]", count - 1),
                "r[round 1/3]".to_string(),
                format!("r[round 3/3 part 1/{count}]"),
                "r[round 2/3]".to_string(),
                "r".to_string(),
            ] {
                assert!(ran(&report).contains(&name), "{name} in {:?}", ran(&report));
            }
            assert!(!ran(&report).contains(&"r[round 3/3]".to_string()));
        }
        assert_eq!(f.values(&plan, "r", "result"), expected, "{count} parts");
        for i in 1..count {
            let (_, report) = worker(&f, &yaml, Shard::new(i, count).unwrap()).unwrap();
            assert!(ran(&report).is_empty(), "worker {i}: {:?}", ran(&report));
        }
        let (_, report) = f.run(&yaml).unwrap();
        assert!(ran(&report).is_empty(), "{:?}", ran(&report));
    }
}
