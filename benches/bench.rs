//! `picie-bench`: engine benchmarks, printed as a table (run with `make bench`).
//!
//! - plan: validate, unroll and key a synthetic 1,000-node DAG (target < 1 s).
//! - rerun: the default pipeline cold, then fully cached (target < 2 % of cold).

use std::time::Instant;

use picie::exec::RunOptions;
use picie::{Context, Plan, Port, Stage, StageError, Store};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PassParams {
    salt: u64,
}

/// A stage with two artifact inputs and one output, for planning only.
struct Pass;
impl Stage for Pass {
    type Params = PassParams;
    const KIND: &'static str = "bench_pass";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "benchmark node";
    fn inputs(_: &PassParams) -> Vec<Port> {
        vec![
            Port::artifact("a", "t").optional(),
            Port::artifact("b", "t").optional(),
        ]
    }
    fn outputs(_: &PassParams) -> Vec<Port> {
        vec![Port::artifact("out", "t")]
    }
    fn new(_: PassParams) -> Self {
        Self
    }
    fn run(&mut self, _: &mut Context) -> Result<(), StageError> {
        Ok(())
    }
}

/// 100 top-level nodes plus a 9-stage loop body unrolled over 100 epochs = 1,000 nodes.
fn thousand_node_yaml() -> String {
    let mut y = String::from("name: bench\nstore: store\ndevice: cpu\nstages:\n");
    for i in 0..100 {
        y.push_str(&format!(
            "  - name: t{i}\n    kind: bench_pass\n    params: {{salt: {i}}}\n"
        ));
        if i > 0 {
            y.push_str(&format!("    inputs: {{a: t{}.out", i - 1));
            if i > 1 {
                y.push_str(&format!(", b: t{}.out", i / 2));
            }
            y.push_str("}\n");
        }
    }
    y.push_str("loop:\n  epochs: 100\n  stages:\n");
    for j in 0..9 {
        y.push_str(&format!(
            "    - name: l{j}\n      kind: bench_pass\n      params: {{salt: {j}}}\n"
        ));
        if j == 0 {
            y.push_str(
                "      inputs:\n        a: t99.out\n        b: {from: l8.out, epoch: prev}\n",
            );
        } else {
            y.push_str(&format!(
                "      inputs: {{a: l{}.out, b: t{j}.out}}\n",
                j - 1
            ));
        }
    }
    y
}

fn bench_plan() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, thousand_node_yaml())?;
    let mut reg = picie::stages::builtin();
    reg.register::<Pass>();
    let mut best = f64::MAX;
    let mut nodes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let plan = Plan::load(&path, &reg)?;
        let store = Store::open(&plan.spec.store)?;
        let d = picie::exec::decide(&plan, &store, &RunOptions::default(), false)?;
        best = best.min(t.elapsed().as_secs_f64());
        nodes = plan.nodes.len();
        assert_eq!(d.len(), nodes);
    }
    println!(
        "plan     {nodes} nodes: {:.1} ms (best of 5; parse, validate, unroll, key, cache lookup)   target < 1000 ms",
        best * 1e3
    );
    Ok(())
}

fn bench_rerun(pipeline: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pipeline)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pipeline.yaml");
    // Same pipeline, private store.
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("store:") {
                "store: store"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, text)?;
    let reg = picie::stages::builtin();
    let run = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let plan = Plan::load(&path, &reg)?;
        let store = Store::open(&plan.spec.store)?;
        picie::run(&plan, &store, &RunOptions::default())?;
        Ok(t.elapsed().as_secs_f64())
    };
    let cold = run()?;
    let warm = (0..3).map(|_| run()).collect::<anyhow::Result<Vec<_>>>()?;
    let warm = warm.into_iter().fold(f64::MAX, f64::min);
    println!(
        "rerun    {pipeline}: cold {cold:.2} s, fully cached {:.1} ms = {:.2} % of cold   target < 2 %",
        warm * 1e3,
        100.0 * warm / cold
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    if matches!(which, "all" | "plan") {
        bench_plan()?;
    }
    if matches!(which, "all" | "rerun") {
        bench_rerun(args.get(1).map(String::as_str).unwrap_or("pipeline.yaml"))?;
    }
    Ok(())
}
