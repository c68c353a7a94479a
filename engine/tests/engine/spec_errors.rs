//! Each kind of bad pipeline file gives its error at its place, and all errors come at once.

use picie_engine::diag::Diagnostics;
use picie_engine::Error;

use crate::common::fixture;

fn diags(yaml: &str) -> Diagnostics {
    match fixture().plan(yaml) {
        Err(Error::Invalid(d)) => d,
        Err(e) => panic!("expected diagnostics, got {e}"),
        Ok(_) => panic!("expected diagnostics, the plan was valid"),
    }
}

/// Asserts one diagnostic contains `needle` at `line:column`, and returns its hint.
fn expect(d: &Diagnostics, needle: &str, line: usize, column: usize) -> Option<String> {
    let hit = d
        .items
        .iter()
        .find(|x| x.message.contains(needle))
        .unwrap_or_else(|| panic!("no error containing {needle:?} in:\n{d}"));
    assert_eq!(
        (hit.loc.line, hit.loc.column),
        (line, column),
        "place of {needle:?} in:\n{d}"
    );
    hit.hint.clone()
}

const OK: &str = "name: t
store: store
stages:
  - name: src
    kind: numbers
  - name: total
    kind: sum
    inputs:
      numbers: src.numbers
";

#[test]
fn a_valid_file_plans() {
    let plan = fixture().plan(OK).unwrap();
    assert_eq!(plan.nodes.len(), 2);
    assert_eq!(plan.nodes[0].name, "src");
}

#[test]
fn unknown_kind_suggests_the_nearest() {
    let d = diags(&OK.replace("kind: sum", "kind: summ"));
    let hint = expect(&d, "unknown stage kind `summ`", 7, 11).unwrap();
    assert!(hint.contains("did you mean `sum`"), "{hint}");
}

#[test]
fn unknown_fields_everywhere() {
    let yaml = "name: t
colour: blue
stages:
  - name: src
    kind: numbers
    parms: {}
    params:
      count: 3
      batchsize: 2
";
    let d = diags(yaml);
    expect(&d, "unknown top-level field `colour`", 2, 1);
    let h = expect(&d, "unknown stage field `parms`", 6, 5).unwrap();
    assert!(h.contains("did you mean `params`"), "{h}");
    let h = expect(&d, "unknown param `batchsize` for kind `numbers`", 9, 7).unwrap();
    assert!(h.contains("did you mean `batch`"), "{h}");
}

#[test]
fn missing_and_dangling_inputs() {
    let missing = "name: t
stages:
  - name: total
    kind: sum
";
    let h = expect(&diags(missing), "is missing input `numbers`", 3, 11).unwrap();
    assert!(h.contains("no stage here produces"), "{h}");

    let dangling = OK.replace("src.numbers", "srcc.numbers");
    let h = expect(&diags(&dangling), "refers to unknown stage `srcc`", 9, 16).unwrap();
    assert!(h.contains("did you mean `src`"), "{h}");

    let no_output = OK.replace("src.numbers", "src.numbrs");
    expect(&diags(&no_output), "has no output `numbrs`", 9, 16);

    let no_port = OK.replace("      numbers: src", "      nums: src");
    expect(&diags(&no_port), "has no input `nums`", 9, 7);
}

#[test]
fn type_mismatch_names_both_ends() {
    // `table` is an artifact of int_table; `sum` reads a stream of ints.
    let d = diags(&OK.replace("src.numbers", "src.table"));
    let h = expect(
        &d,
        "type mismatch: input `numbers` of `total` takes stream `ints`",
        9,
        16,
    )
    .unwrap();
    assert!(h.contains("src.numbers"), "{h}");
}

#[test]
fn cycles_are_reported() {
    let yaml = "name: t
stages:
  - name: a
    kind: acc
    inputs: {base: b.total}
  - name: b
    kind: acc
    inputs: {base: a.total}
";
    let d = diags(yaml);
    assert!(
        d.items.iter().any(
            |x| x.message.contains("cycle") && x.message.contains("a -> b")
                || x.message.contains("b -> a")
        ),
        "{d}"
    );
}

#[test]
fn duplicate_names_and_bad_values() {
    let yaml = "name: t
seed: -3
device: tpu
stages:
  - name: src
    kind: numbers
    params: {batch: 0, count: many}
  - name: src
    kind: numbers
loop:
  epochs: 0
  stages: []
";
    let d = diags(yaml);
    expect(&d, "`seed` must be a non-negative integer", 2, 7);
    expect(&d, "`tpu` is not a device", 3, 9);
    expect(&d, "duplicate stage name `src`", 8, 11);
    expect(&d, "`loop.epochs` must be at least 1", 11, 11);
    // serde's type error comes with the value's place.
    let bad = d
        .items
        .iter()
        .find(|x| x.message.contains("bad params for kind `numbers`"));
    assert!(bad.is_some(), "{d}");
    let yaml2 = "name: t\nstages:\n  - name: src\n    kind: numbers\n    params: {batch: 0}\n";
    expect(
        &diags(yaml2),
        "bad value for `batch`: must be at least 1",
        5,
        21,
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "name: t
extra: 1
stages:
  - name: a
    kind: nope
  - name: b
    kind: sum
    inputs: {numbers: ghost.out}
  - name: c
    kind: numbers
    params: {wrong: 1}
";
    let d = diags(yaml);
    assert!(d.items.len() >= 4, "{d}");
    let text = d.to_string();
    for needle in ["extra", "nope", "ghost", "wrong"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(text.contains("pipeline.yaml:2:1"), "{text}");
}

#[test]
fn yaml_syntax_error_has_a_place() {
    let d = diags("name: t\nstages: [\n");
    assert!(d.items[0].message.contains("not valid YAML"), "{d}");
    assert!(d.items[0].loc.line >= 2, "{d}");
}

#[test]
fn loop_inputs_need_a_first_epoch() {
    let yaml = "name: t
stages:
  - name: src
    kind: numbers
loop:
  epochs: 2
  stages:
    - name: a
      kind: acc
      inputs:
        base: src.table
        prev: a.total@prev
    - name: b
      kind: acc
      inputs:
        base: {from: b.total, epoch: prev}
";
    let d = diags(yaml);
    let h = expect(
        &d,
        "in epoch 1, input `base` of `b` has no previous epoch",
        16,
        22,
    )
    .unwrap();
    assert!(h.contains("first:"), "{h}");
    // `a.prev` is optional, so it simply stays unconnected in epoch 1.
    assert_eq!(d.items.len(), 1, "{d}");
}

#[test]
fn a_stream_that_would_deadlock_is_rejected() {
    // `s` reads src's stream, but also an artifact that needs src to finish first: src
    // would block on s's full channel while s waits for `mid`.
    let yaml = "name: t
stages:
  - name: src
    kind: numbers
  - name: mid
    kind: acc
    inputs: {base: src.table}
  - name: s
    kind: sum
    inputs: {numbers: src.numbers, offset: mid.total}
";
    let h = expect(
        &diags(yaml),
        "stream `src.numbers` into `s` would deadlock",
        8,
        11,
    )
    .unwrap();
    assert!(h.contains("artifact"), "{h}");
    // Fan-out of one stream to two ports of one stage, and to a stage whose artifact
    // input does not depend on the producer, are fine.
    let ok = "name: t
stages:
  - name: src
    kind: numbers
  - name: other
    kind: numbers
    params: {start: 100}
  - name: mid
    kind: acc
    inputs: {base: other.table}
  - name: s
    kind: sum
    inputs: {numbers: src.numbers, offset: mid.total}
  - name: m
    kind: merge
    inputs: {a: src.numbers, b: src.numbers}
";
    fixture().plan(ok).unwrap();
}

#[test]
fn an_artifact_inside_a_stream_group_is_rejected() {
    // `s` would wait for src's table while src waits for `s` to read its stream.
    let yaml = "name: t
stages:
  - name: src
    kind: numbers
  - name: s
    kind: sum
    inputs: {numbers: src.numbers, offset: src.table}
";
    let h = expect(
        &diags(yaml),
        "`s` reads artifact `src.table` but also shares a stream with `src`",
        5,
        11,
    );
    assert!(h.unwrap().contains("artifact"));
}
