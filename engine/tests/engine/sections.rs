//! Application-defined top-level sections: parsed by the application, keyed into the nodes
//! that read them (global ones into every node), handed to those nodes' contexts.

use picie_engine::testing::ran;
use picie_engine::Error;

use crate::common::{fixture, ToyData, ToyDevice, Values};

fn pipeline(data: &str, device: &str) -> String {
    format!(
        "name: t
store: store
{device}{data}stages:
  - name: src
    kind: numbers
    params: {{count: 4}}
  - name: total
    kind: sum
    inputs: {{numbers: src.numbers}}
  - name: size
    kind: data_size
"
    )
}

#[test]
fn a_section_reaches_its_readers_and_their_keys_only() {
    let f = fixture();
    let (plan, report) = f.run(&pipeline("data: {size: 7}\n", "")).unwrap();
    assert_eq!(ran(&report), ["size", "src", "total"]);
    // The global section's default (cpu) reached the reader too.
    assert_eq!(f.values(&plan, "size", "total"), vec![70]);
    assert_eq!(plan.section::<ToyData>("data"), Some(&ToyData { size: 7 }));
    assert_eq!(plan.describe_global(), "cpu");
    let node = &plan.nodes[plan.index_of("size").unwrap()];
    assert_eq!(node.provenance["data"]["size"], 7);
    let src = &plan.nodes[plan.index_of("src").unwrap()];
    assert!(src.provenance["data"].is_null(), "{}", src.provenance);
    assert_eq!(src.provenance["device"], "cpu");

    // Another data section: only its reader runs again.
    let (plan2, report) = f.run(&pipeline("data: {size: 8}\n", "")).unwrap();
    assert_eq!(ran(&report), ["size"]);
    assert_eq!(f.values(&plan2, "size", "total"), vec![80]);

    // Another value of the global section: every node runs again.
    let (plan3, report) = f
        .run(&pipeline("data: {size: 8}\n", "device: gpu\n"))
        .unwrap();
    assert_eq!(ran(&report), ["size", "src", "total"]);
    assert_eq!(f.values(&plan3, "size", "total"), vec![81]);
    assert_eq!(plan3.section::<ToyDevice>("device").unwrap().0, "gpu");
}

#[test]
fn section_errors_are_located_and_collected() {
    let f = fixture();
    // No `data:` although a kind reads it.
    match f.plan(&pipeline("", "")) {
        Err(Error::Invalid(d)) => {
            let hit = d
                .items
                .iter()
                .find(|x| {
                    x.message
                        .contains("reads the toy data, but the pipeline has no `data:`")
                })
                .unwrap_or_else(|| panic!("{d}"));
            assert_eq!((hit.loc.line, hit.loc.column), (11, 11), "{d}");
            assert_eq!(hit.hint.as_deref(), Some("add `data: {size: N}`"));
        }
        other => panic!("expected diagnostics, got {:?}", other.map(|_| ())),
    }
    // A bad device, an unknown field and a bad value in `data:`: all at once, each placed.
    match f.plan(&pipeline("data: {size: many, sise: 3}\n", "device: tpu\n")) {
        Err(Error::Invalid(d)) => {
            let at = |needle: &str| {
                let hit = d
                    .items
                    .iter()
                    .find(|x| x.message.contains(needle))
                    .unwrap_or_else(|| panic!("no {needle:?} in {d}"));
                (hit.loc.line, hit.loc.column, hit.hint.clone())
            };
            assert_eq!(at("`tpu` is not a device").0, 3);
            let (line, column, hint) = at("unknown field `sise` for `data`");
            assert_eq!((line, column), (4, 20));
            assert!(hint.unwrap().contains("size"));
            assert_eq!(at("bad fields for `data`").0, 4);
        }
        other => panic!("expected diagnostics, got {:?}", other.map(|_| ())),
    }
    // A top-level key that is neither the engine's nor a registered section.
    match f.plan(&format!(
        "{}dataset: {{}}\n",
        pipeline("data: {size: 1}\n", "")
    )) {
        Err(Error::Invalid(d)) => {
            let t = d.to_string();
            assert!(t.contains("unknown top-level field `dataset`"), "{t}");
            assert!(t.contains("data"), "{t}");
        }
        other => panic!("expected diagnostics, got {:?}", other.map(|_| ())),
    }
}
