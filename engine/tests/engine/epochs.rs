//! Key epochs (`Stage::key_epoch`): loop nodes whose outputs repeat share keys, so later
//! epochs read what an earlier one stored; and alternative inputs (`Port::instead_of`).

use std::sync::atomic::Ordering;

use picie_engine::testing::ran;
use picie_engine::Error;

use crate::common::{fixture, Values, HEADER, POOLED_RUNS};

fn pooled(pool: &str, input: &str) -> String {
    format!(
        "{HEADER}loop:
  epochs: 5
  stages:
    - name: p
      kind: pooled
      params: {pool}
    - name: e
      kind: either
      inputs: {{{input}}}
"
    )
}

#[test]
fn a_pool_of_draws_is_computed_once_per_draw_and_read_back_in_later_epochs() {
    let f = fixture();
    let yaml = pooled("{pool: 2}", "numbers: p.numbers");
    let before = POOLED_RUNS.load(Ordering::SeqCst);
    let (plan, report) = f.run(&yaml).unwrap();
    let key = |n: &str| plan.nodes[plan.index_of(n).unwrap()].key.clone();
    // Epochs 1, 3, 5 draw the same; `either` depends on its epoch only through its input.
    assert_eq!(key("p@1"), key("p@3"));
    assert_eq!(key("p@1"), key("p@5"));
    assert_eq!(key("e@2"), key("e@4"));
    assert_ne!(key("p@1"), key("p@2"));
    assert_ne!(key("e@1"), key("e@2"));
    assert_eq!(ran(&report), ["e@1", "e@2", "p@1", "p@2"]);
    assert!(POOLED_RUNS.load(Ordering::SeqCst) - before >= 2);
    for (node, total) in [
        ("e@1", 11),
        ("e@2", 22),
        ("e@3", 11),
        ("e@4", 22),
        ("e@5", 11),
    ] {
        assert_eq!(f.values(&plan, node, "total"), [total], "{node}");
    }

    // Without a pool every epoch is its own: the same file computes all five.
    let (_, report) = f.run(&pooled("{}", "numbers: p.numbers")).unwrap();
    assert_eq!(ran(&report).len(), 10, "{:?}", ran(&report));
}

#[test]
fn an_epoch_free_stage_on_a_per_epoch_input_keeps_per_epoch_keys() {
    let f = fixture();
    let (plan, report) = f.run(&pooled("{}", "table: p.table")).unwrap();
    assert_eq!(ran(&report).len(), 10);
    let keys: std::collections::BTreeSet<&str> = (1..=5)
        .map(|e| {
            plan.nodes[plan.index_of(&format!("e@{e}")).unwrap()]
                .key
                .as_str()
        })
        .collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(f.values(&plan, "e@4", "total"), [44]);
    // And one whose own output ignores the epoch shares one key across all of them.
    let (_, report) = f
        .run(&pooled("{epoch_free: true}", "table: p.table"))
        .unwrap();
    assert_eq!(ran(&report), ["e@1", "p@1"]);
}

#[test]
fn alternative_inputs_need_exactly_one() {
    let f = fixture();
    for (inputs, word) in [
        ("numbers: p.numbers, table: p.table", "both"),
        ("", "neither"),
    ] {
        match f.plan(&pooled("{}", inputs)) {
            Err(Error::Invalid(d)) => {
                let t = d.to_string();
                assert!(
                    t.contains(&format!(
                        "stage `e` (either) reads {word} of `numbers` and `table`; give exactly one"
                    )),
                    "{t}"
                );
                assert_eq!(t.matches("give exactly one").count(), 1, "{t}");
            }
            other => panic!("{inputs}: expected an error, got {:?}", other.map(|_| ())),
        }
    }
}
