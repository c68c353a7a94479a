//! Toy stage kinds and sections: the engine tested without any application.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use picie_engine::diag::{Diagnostic, Loc};
use picie_engine::shard::{ROUND_STATE, ROUND_STATS};
use picie_engine::store::Lookup;
use picie_engine::testing::Fixture;
use picie_engine::{
    Context, ParamError, Plan, Port, Registry, Section, SectionDef, Stage, StageError,
};
use serde::{Deserialize, Serialize};

pub fn u64_batch(values: &[u64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::UInt64,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(values.to_vec()))]).unwrap()
}

pub fn values_of(batches: &[RecordBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

/// Items in flight between `numbers` and `sum`: for the back-pressure test.
pub static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
pub static MAX_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersParams {
    pub count: u64,
    pub batch: u64,
    pub start: u64,
    pub delay_ms: u64,
    pub fail_at: Option<u64>,
    pub panic_at: Option<u64>,
}
impl Default for NumbersParams {
    fn default() -> Self {
        Self {
            count: 10,
            batch: 3,
            start: 0,
            delay_ms: 0,
            fail_at: None,
            panic_at: None,
        }
    }
}

/// A source: streams batches of integers and stores them as a table.
pub struct Numbers(NumbersParams);
impl Stage for Numbers {
    type Params = NumbersParams;
    const KIND: &'static str = "numbers";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source of integers";
    fn inputs(_: &NumbersParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &NumbersParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints"),
            Port::artifact("table", "int_table"),
        ]
    }
    fn validate(p: &NumbersParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.batch == 0 {
            e.push(ParamError::new("batch", "must be at least 1"));
        }
        if p.count > 1_000_000 {
            e.push(ParamError::new("count", "at most 1000000"));
        }
        e
    }
    /// Its values come from its params alone: sweeps share it.
    fn seeded(_: &NumbersParams) -> bool {
        false
    }
    fn shardable(_: &NumbersParams) -> Result<(), String> {
        Ok(())
    }
    fn new(p: NumbersParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = &self.0;
        let mine = ctx.shard_items(p.count as usize, p.batch as usize);
        let mut i = p.start + mine.start as u64;
        let end = p.start + mine.end as u64;
        while i < end {
            let n = p.batch.min(end - i);
            let v: Vec<u64> = (i..i + n).collect();
            if p.fail_at.is_some_and(|f| f >= i && f < i + n) {
                return Err(StageError::msg(format!(
                    "numbers: refusing value {}",
                    p.fail_at.unwrap()
                )));
            }
            if p.panic_at.is_some_and(|f| f >= i && f < i + n) {
                panic!("numbers: panic at {}", p.panic_at.unwrap());
            }
            ctx.output("table")?.write(&u64_batch(&v))?;
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
            ctx.send("numbers", v)?;
            if p.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(p.delay_ms));
            }
            i += n;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SumParams {
    pub delay_ms: u64,
    pub fail: bool,
}

/// A sink: sums a stream into a one-row table.
pub struct Sum(SumParams);
impl Stage for Sum {
    type Params = SumParams;
    const KIND: &'static str = "sum";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test sink";
    fn inputs(_: &SumParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints"),
            Port::artifact("offset", "int_table").optional(),
        ]
    }
    fn outputs(_: &SumParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    fn new(p: SumParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        if self.0.fail {
            return Err(StageError::msg("sum: told to fail"));
        }
        let mut total: u64 = if ctx.has_input("offset") {
            values_of(&ctx.input("offset")?.read_all()?).iter().sum()
        } else {
            0
        };
        while let Some(v) = ctx.recv_as::<Vec<u64>>("numbers")? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            total += v.iter().sum::<u64>();
            if self.0.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.0.delay_ms));
            }
        }
        ctx.output("total")?.write(&u64_batch(&[total]))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleParams {
    pub factor: u64,
}
impl Default for ScaleParams {
    fn default() -> Self {
        Self { factor: 2 }
    }
}

/// A map: multiplies a stream.
pub struct Scale(ScaleParams);
impl Stage for Scale {
    type Params = ScaleParams;
    const KIND: &'static str = "scale";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test map";
    fn inputs(_: &ScaleParams) -> Vec<Port> {
        vec![Port::stream("numbers", "ints")]
    }
    fn outputs(_: &ScaleParams) -> Vec<Port> {
        vec![Port::stream("numbers", "ints")]
    }
    fn shardable(_: &ScaleParams) -> Result<(), String> {
        Ok(())
    }
    fn new(p: ScaleParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        while let Some(v) = ctx.recv_as::<Vec<u64>>("numbers")? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            let out: Vec<u64> = v.iter().map(|x| x * self.0.factor).collect();
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            ctx.send("numbers", out)?;
        }
        Ok(())
    }
}

/// Fan-in: merges two streams into one sorted table.
pub struct Merge;
impl Stage for Merge {
    type Params = SumParams;
    const KIND: &'static str = "merge";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test fan-in";
    fn inputs(_: &SumParams) -> Vec<Port> {
        vec![Port::stream("a", "ints"), Port::stream("b", "ints")]
    }
    fn outputs(_: &SumParams) -> Vec<Port> {
        vec![Port::artifact("merged", "int_table")]
    }
    fn new(_: SumParams) -> Self {
        Self
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let mut all = Vec::new();
        while let Some((_, item)) = ctx.recv_any()? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            all.extend(item.downcast::<Vec<u64>>().unwrap().iter().copied());
        }
        all.sort();
        ctx.output("merged")?.write(&u64_batch(&all))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccParams {
    pub add: u64,
}

/// Reads an artifact (and optionally its own previous epoch) and writes a new one: the
/// shape of PiCIE's epoch loop.
pub struct Acc(AccParams);
impl Stage for Acc {
    type Params = AccParams;
    const KIND: &'static str = "acc";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test accumulator";
    fn inputs(_: &AccParams) -> Vec<Port> {
        vec![
            Port::artifact("base", "int_table"),
            Port::artifact("prev", "int_table").optional(),
        ]
    }
    fn outputs(_: &AccParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    fn new(p: AccParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let base: u64 = values_of(&ctx.input("base")?.read_all()?).iter().sum();
        let prev: u64 = if ctx.has_input("prev") {
            values_of(&ctx.input("prev")?.read_all()?).iter().sum()
        } else {
            0
        };
        let epoch = ctx.epoch().unwrap_or(0) as u64;
        ctx.output("total")?
            .write(&u64_batch(&[base + prev + self.0.add + 1000 * epoch]))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowParams {
    pub batches: u64,
    pub rows: u64,
    pub delay_ms: u64,
}
impl Default for SlowParams {
    fn default() -> Self {
        Self {
            batches: 4,
            rows: 1000,
            delay_ms: 0,
        }
    }
}

/// Writes a large artifact slowly, batch by batch: the target of the SIGKILL test.
pub struct Slow(SlowParams);
impl Stage for Slow {
    type Params = SlowParams;
    const KIND: &'static str = "slow";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test slow writer";
    fn inputs(_: &SlowParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &SlowParams) -> Vec<Port> {
        vec![Port::artifact("table", "int_table")]
    }
    fn new(p: SlowParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let w = ctx.output("table")?;
        w.set_part_rows(self.0.rows as usize);
        for b in 0..self.0.batches {
            let v: Vec<u64> = (b * self.0.rows..(b + 1) * self.0.rows)
                .map(|x| x * 7 % 1013)
                .collect();
            w.write(&u64_batch(&v))?;
            std::thread::sleep(Duration::from_millis(self.0.delay_ms));
        }
        Ok(())
    }
}

/// A global section, as an application's device would be: `device: cpu | gpu`, keyed
/// into every node; `cpu` when absent.
#[derive(Debug, PartialEq)]
pub struct ToyDevice(pub String);
impl Section for ToyDevice {
    fn canonical(&self) -> serde_json::Value {
        self.0.clone().into()
    }
}

/// A section only some kinds read, as an application's data set would be.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyData {
    pub size: u64,
}
impl Section for ToyData {
    fn canonical(&self) -> serde_json::Value {
        serde_json::json!({ "size": self.size })
    }
}

/// Writes the `data:` section's size: a kind that reads a section.
pub struct DataSize;
impl Stage for DataSize {
    type Params = NoParams;
    const KIND: &'static str = "data_size";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test reader of the data section";
    const SECTIONS: &'static [&'static str] = &["data"];
    fn inputs(_: &NoParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &NoParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    fn new(_: NoParams) -> Self {
        Self
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let size = ctx.section::<ToyData>("data")?.size;
        let device = ctx.section::<ToyDevice>("device")?.0.clone();
        let d = if device == "gpu" { 1 } else { 0 };
        ctx.output("total")?.write(&u64_batch(&[size * 10 + d]))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Runs of `pooled` and `either` (the key-epoch test counts them).
pub static POOLED_RUNS: AtomicI64 = AtomicI64::new(0);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PooledParams {
    /// Epoch e repeats epoch ((e - 1) mod pool) + 1.
    pub pool: Option<u32>,
    /// The output depends on the epoch only through the inputs.
    pub epoch_free: bool,
}

/// A loop source whose output repeats with a period: streams and stores [draw, draw * 10]
/// for its draw = ((epoch - 1) mod pool) + 1; with `epoch_free`, [0] whatever the epoch.
pub struct Pooled(PooledParams);
impl Pooled {
    fn draw(p: &PooledParams, epoch: u32) -> Option<u32> {
        if p.epoch_free {
            return None;
        }
        Some(p.pool.map_or(epoch, |n| (epoch - 1) % n + 1))
    }
}
impl Stage for Pooled {
    type Params = PooledParams;
    const KIND: &'static str = "pooled";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source repeating over epochs";
    fn inputs(_: &PooledParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &PooledParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints"),
            Port::artifact("table", "int_table"),
        ]
    }
    fn key_epoch(p: &PooledParams, epoch: u32) -> Option<u32> {
        Self::draw(p, epoch)
    }
    fn new(p: PooledParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        POOLED_RUNS.fetch_add(1, Ordering::SeqCst);
        let d = Self::draw(&self.0, ctx.epoch().unwrap_or(0)).unwrap_or(0) as u64;
        ctx.output("table")?.write(&u64_batch(&[d, d * 10]))?;
        ctx.send("numbers", vec![d, d * 10])
    }
}

/// Sums a stream or a table, whichever is wired (exactly one): `Port::instead_of`.
pub struct Either;
impl Stage for Either {
    type Params = NoParams;
    const KIND: &'static str = "either";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test stage with alternative inputs";
    fn inputs(_: &NoParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints").instead_of("table"),
            Port::artifact("table", "int_table").instead_of("numbers"),
        ]
    }
    fn outputs(_: &NoParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    /// Its output depends on the epoch only through its input.
    fn key_epoch(_: &NoParams, _: u32) -> Option<u32> {
        None
    }
    fn new(_: NoParams) -> Self {
        Self
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let mut total = 0u64;
        if ctx.has_input("table") {
            total = values_of(&ctx.input("table")?.read_all()?).iter().sum();
        } else {
            while let Some(v) = ctx.recv_as::<Vec<u64>>("numbers")? {
                total += v.iter().sum::<u64>();
            }
        }
        ctx.output("total")?.write(&u64_batch(&[total]))?;
        Ok(())
    }
}

fn toy_sections(r: &mut Registry) {
    r.section(
        SectionDef::new("device", "the device", "", |node, _| {
            let Some(node) = node else {
                return Ok(Some(Arc::new(ToyDevice("cpu".into()))));
            };
            let loc = Loc::of(node.span());
            match node.as_scalar().map(|s| s.as_str()) {
                Some(v @ ("cpu" | "gpu")) => Ok(Some(Arc::new(ToyDevice(v.into())))),
                Some(v) => Err(vec![Diagnostic::new(loc, format!("`{v}` is not a device"))]),
                None => Err(vec![Diagnostic::new(
                    loc,
                    "`device` must be a single value",
                )]),
            }
        })
        .global(),
    )
    .section(SectionDef::new(
        "data",
        "the toy data",
        "add `data: {size: N}`",
        |node, _| match node {
            None => Ok(None),
            Some(n) => picie_engine::diag::from_node::<ToyData>(n, "data")
                .map(|d| Some(Arc::new(d) as Arc<dyn Section>)),
        },
    ));
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundsParams {
    pub rounds: u32,
}
impl Default for RoundsParams {
    fn default() -> Self {
        Self { rounds: 3 }
    }
}

/// An iterative pass over a stored table, as Lloyd's k-means: s_0 = 1, and each round
/// s_(r+1) = (sum of (v * s_r) mod 1009 over the values) mod 100003 + r. Sharded, each round's
/// parts sum their chunks ([`Artifact::chunks`]), the join carries s to the next round.
pub struct Rounds(RoundsParams);
impl Rounds {
    fn step(r: u32, t: u64) -> u64 {
        t % 100_003 + r as u64
    }
    fn partial(ctx: &Context, s: u64) -> Result<u64, StageError> {
        let base = ctx.input("base")?;
        let n = base.chunk_count()?;
        let range = ctx.shard().map_or(0..n, |sh| sh.range(n));
        let mut t = 0;
        for b in base.chunks(range) {
            t += values_of(&[b?]).iter().map(|v| v * s % 1009).sum::<u64>();
        }
        Ok(t)
    }
    fn state(ctx: &Context) -> Result<u64, StageError> {
        Ok(if ctx.has_input(ROUND_STATE.name) {
            values_of(&ctx.input(ROUND_STATE.name)?.read_all()?)[0]
        } else {
            1
        })
    }
}
impl Stage for Rounds {
    type Params = RoundsParams;
    const KIND: &'static str = "rounds";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test iterative pass";
    fn inputs(_: &RoundsParams) -> Vec<Port> {
        vec![Port::artifact("base", "int_table")]
    }
    fn outputs(_: &RoundsParams) -> Vec<Port> {
        vec![Port::artifact("result", "int_table")]
    }
    fn shardable(_: &RoundsParams) -> Result<(), String> {
        Ok(())
    }
    fn rounds(p: &RoundsParams) -> u32 {
        p.rounds
    }
    fn combine(_: &RoundsParams, ctx: &mut Context) -> Result<(), StageError> {
        let (r, n) = ctx.round().expect("a join of rounds knows its round");
        let mut t = 0;
        for part in ctx.parts(ROUND_STATS.name)? {
            t += values_of(&part.read_all()?)[0];
        }
        let next = Self::step(r, t);
        let out = if r + 1 < n {
            ROUND_STATE.name
        } else {
            "result"
        };
        ctx.output(out)?.write(&u64_batch(&[next]))?;
        Ok(())
    }
    fn new(p: RoundsParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        if ctx.round().is_some() {
            let t = Self::partial(ctx, Self::state(ctx)?)?;
            ctx.output(ROUND_STATS.name)?.write(&u64_batch(&[t]))?;
            return Ok(());
        }
        let mut s = 1;
        for r in 0..self.0.rounds {
            s = Self::step(r, Self::partial(ctx, s)?);
        }
        ctx.output("result")?.write(&u64_batch(&[s]))?;
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Numbers>()
        .register::<Sum>()
        .register::<Scale>()
        .register::<Merge>()
        .register::<Acc>()
        .register::<Slow>()
        .register::<DataSize>()
        .register::<Pooled>()
        .register::<Either>()
        .register::<Rounds>();
    toy_sections(&mut r);
    r
}

pub fn fixture() -> Fixture {
    Fixture::new(registry())
}

/// The u64 values of a node's artifact output.
pub trait Values {
    fn values(&self, plan: &Plan, node: &str, output: &str) -> Vec<u64>;
}
impl Values for Fixture {
    fn values(&self, plan: &Plan, node: &str, output: &str) -> Vec<u64> {
        values_of(&self.artifact(plan, node, output).read_all().unwrap())
    }
}

#[allow(dead_code)]
pub fn lookup(f: &Fixture, key: &str) -> Lookup {
    f.store().lookup(key)
}

pub const HEADER: &str = "name: t\nseed: 1\ndevice: cpu\nstore: store\n";

/// A manifest for an artifact committed by hand under `key`.
pub fn manifest(key: &str) -> picie_engine::artifact::Manifest {
    picie_engine::artifact::Manifest {
        key: key.to_string(),
        node: "n".into(),
        kind: "numbers".into(),
        output: "table".into(),
        ty: "int_table".into(),
        epoch: None,
        files: Vec::new(),
        rows: 0,
        schema: Vec::new(),
        meta: Default::default(),
        wall_time_s: 0.0,
        created: picie_engine::store::now(),
        picie_version: "test".into(),
        provenance: serde_json::Value::Null,
    }
}

/// Asserts that each of `nodes` ran in exactly one of the runs whose ran-lists are given.
pub fn assert_computed_once(ran: &[Vec<String>], nodes: &[&str]) {
    for node in nodes {
        let by = ran.iter().filter(|r| r.iter().any(|n| n == node)).count();
        assert_eq!(by, 1, "{node}: {ran:?}");
    }
}
