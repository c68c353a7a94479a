//! A stage kind written outside picie and run by picie's engine: `count` streams batches of
//! integers, `double` doubles them and stores a table. docs/stage-kinds.md walks through it.
//!
//!     cargo run --example double_stage

use std::sync::Arc;

use anyhow::Context as _;
use arrow::array::{Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use picie::stage::StreamPort;
use picie::store::Lookup;
use picie::{Context, ParamError, Plan, Port, Registry, RunOptions, Stage, StageError, Store};
use serde::{Deserialize, Serialize};

// Ports are constants: a stream port carries its item type, so sending or expecting
// another type does not compile.
pub const NUMBERS: StreamPort<Vec<u64>> = StreamPort::new("numbers", "ints");
pub const TABLE: Port = Port::artifact("table", "int_table");

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountParams {
    pub count: u64,
    pub batch: u64,
}
impl Default for CountParams {
    fn default() -> Self {
        Self {
            count: 10,
            batch: 4,
        }
    }
}

/// A source: `count` integers in batches of `batch`.
pub struct Count(CountParams);
impl Stage for Count {
    type Params = CountParams; // serde, Default; goes into the cache key
    const KIND: &'static str = "count";
    const VERSION: u32 = 1; // bump when the output changes
    const DESCRIPTION: &'static str = "streams 0..count";
    fn inputs(_: &CountParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &CountParams) -> Vec<Port> {
        vec![NUMBERS.port()]
    }
    /// Every bad value at once; the plan places each at its line and column.
    fn validate(p: &CountParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if p.batch == 0 {
            errors.push(ParamError::new("batch", "must be at least 1"));
        }
        errors
    }
    fn new(p: CountParams) -> Self {
        Count(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let (count, batch) = (self.0.count, self.0.batch);
        for start in (0..count).step_by(batch as usize) {
            ctx.send_to(&NUMBERS, (start..count.min(start + batch)).collect())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoubleParams {}

/// Doubles a stream of integers into a stored table.
pub struct Double;
impl Stage for Double {
    type Params = DoubleParams;
    const KIND: &'static str = "double";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "doubles a stream";
    fn inputs(_: &DoubleParams) -> Vec<Port> {
        vec![NUMBERS.port()]
    }
    fn outputs(_: &DoubleParams) -> Vec<Port> {
        vec![TABLE]
    }
    fn new(_: DoubleParams) -> Self {
        Double
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::UInt64,
            false,
        )]));
        while let Some(v) = ctx.recv_from(&NUMBERS)? {
            // v: Arc<Vec<u64>>
            let doubled = UInt64Array::from(v.iter().map(|x| 2 * x).collect::<Vec<_>>());
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(doubled)])?;
            // Committed to the store only if `run` returns Ok.
            ctx.output(TABLE.name)?.write(&batch)?;
        }
        Ok(())
    }
}

const PIPELINE: &str = "
name: doubling
store: store
stages:
  - name: count
    kind: count
    params: {count: 10, batch: 4}
  - name: double
    kind: double
    inputs: {numbers: count.numbers}
";

fn main() -> anyhow::Result<()> {
    let mut registry = Registry::new();
    registry.register::<Count>().register::<Double>();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, PIPELINE)?;
    let plan = Plan::load(&file, &registry)?;
    let store = Store::open(&dir.path().join("store"))?;
    let report = picie::run(&plan, &store, &RunOptions::default())?;
    println!("{} node(s)", report.nodes.len());

    let node = plan.index_of("double").context("no node `double`")?;
    let key = &plan.nodes[node].output_keys[TABLE.name];
    let Lookup::Valid(table) = store.lookup(key) else {
        anyhow::bail!("double.table is not in the store");
    };
    let mut values = Vec::new();
    for batch in table.batches() {
        let batch = batch?;
        let column = batch.column(0).as_any().downcast_ref::<UInt64Array>();
        values.extend(column.context("a u64 column")?.values().iter().copied());
    }
    println!("double.table = {values:?}");
    Ok(())
}
