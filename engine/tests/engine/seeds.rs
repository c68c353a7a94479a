//! Multi-seed sweeps: member plans, what they share, and `seeds:` in the file.

use picie_engine::seeds::{member_name, SweepRecord};
use picie_engine::testing::ran;

use crate::common::{fixture, HEADER};

const STAGES: &str = "stages:
  - name: src
    kind: numbers
    params: {count: 10}
  - name: x
    kind: scale
    inputs: {numbers: src.numbers}
  - name: s
    kind: sum
    inputs: {numbers: x.numbers}
  - name: a
    kind: acc
    inputs: {base: src.table}
";

fn key<'a>(plan: &'a picie_engine::Plan, node: &str) -> &'a str {
    &plan.nodes[plan.index_of(node).unwrap()].key
}

#[test]
fn a_member_is_the_single_run_with_that_seed_and_shares_unseeded_nodes() {
    let f = fixture();
    let plan = f.plan(&format!("{HEADER}{STAGES}")).unwrap();
    assert!(plan.spec.seeds.is_empty());
    let one = plan.with_seed(1, &f.registry).unwrap();
    let two = plan.with_seed(2, &f.registry).unwrap();
    assert_eq!(one.spec.name, "t-seed1");
    assert_eq!(member_name("t", 2), two.spec.name);
    // HEADER says `seed: 1`: member 1 is that run, key for key.
    for n in ["src", "x", "s", "a"] {
        assert_eq!(key(&one, n), key(&plan, n), "{n}");
    }
    // `numbers` draws nothing from the seed; `scale` does, and `sum` reads it.
    assert_eq!(key(&one, "src"), key(&two, "src"));
    assert_ne!(key(&one, "x"), key(&two, "x"));
    assert_ne!(key(&one, "s"), key(&two, "s"));
    assert_ne!(key(&one, "a"), key(&two, "a"));

    // Run: with only artifact edges from the source, the second seed reuses it. (A stream
    // producer reruns whenever a reader of its stream runs.)
    let plan = f
        .plan(&format!(
            "{HEADER}stages:
  - name: src
    kind: numbers
    params: {{count: 10}}
  - name: a
    kind: acc
    inputs: {{base: src.table}}
"
        ))
        .unwrap();
    let store = f.store();
    let opts = Default::default();
    let r1 = picie_engine::run(&plan.with_seed(1, &f.registry).unwrap(), &store, &opts).unwrap();
    assert_eq!(ran(&r1), ["a", "src"]);
    let r2 = picie_engine::run(&plan.with_seed(2, &f.registry).unwrap(), &store, &opts).unwrap();
    assert_eq!(ran(&r2), ["a"], "the seed-free source is shared");
    let names: Vec<String> = store
        .run_records()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["t-seed1", "t-seed2"]);
    let rec = SweepRecord::new("t", &plan.spec.file, &[1, 2]);
    store.write_sweep_record(&rec).unwrap();
    assert_eq!(store.sweep_record("t-seeds").unwrap(), Some(rec));
}

#[test]
fn seeds_in_the_file_are_read_and_checked() {
    let f = fixture();
    let plan = f
        .plan(&format!("{HEADER}seeds: [3, 0, 7]\n{STAGES}"))
        .unwrap();
    assert_eq!(plan.spec.seeds, [3, 0, 7]);
    for (bad, want, line) in [
        ("seeds: 3\n", "`seeds` must be a list", 5),
        ("seeds: []\n", "`seeds` is empty", 5),
        (
            "seeds: [1, x]\n",
            "`a seed` must be a non-negative integer, not `x`",
            5,
        ),
        ("seeds: [1, 1]\n", "seed 1 is listed twice", 5),
    ] {
        let e = f.plan(&format!("{HEADER}{bad}{STAGES}")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(want), "{bad}: {text}");
        assert!(text.contains(&format!(":{line}:")), "{bad}: {text}");
    }
}
