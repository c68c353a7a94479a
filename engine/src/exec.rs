//! Runs a plan: one thread per stage instance, bounded channels between streaming stages,
//! artifacts committed to the store as each stage succeeds.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::{debug, info, warn};

use crate::artifact::{Artifact, Manifest};
use crate::context::{Context, Msg, NodeInfo, StreamIn, StreamOut};
use crate::error::{Error, StageError};
use crate::lease::Claim;
use crate::plan::Plan;
use crate::shard::{count_key, part_key, Shard};
use crate::stage::Mode;
use crate::store::{now, Lookup, NodeRecord, RunRecord, Store};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Recompute these stages (or `name@N` nodes) even when cached.
    pub force: Vec<String>,
    /// Recompute these and everything downstream of them.
    pub from: Vec<String>,
    /// Run only these and what they need.
    pub until: Vec<String>,
    /// Draw progress bars (when stderr is a terminal).
    pub progress: bool,
}

/// Why a node runs or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Nothing that `--until` asked for reads it.
    NotNeeded,
    /// Named by `--force` or `--from` (or downstream of a `--from`).
    Forced,
    /// Every artifact output is in the store and verified.
    Cached,
    /// An output is missing from the store.
    NotCached,
    /// An output is in the store but fails verification: the reason.
    Corrupt(String),
    /// It only streams, and every consumer is cached.
    StreamsOnlyToCached,
    /// It only streams to this node, which runs.
    StreamsTo(String),
    /// It writes nothing that could be cached.
    NoOutputs,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotNeeded => f.write_str("not needed"),
            Self::Forced => f.write_str("forced"),
            Self::Cached => f.write_str("cached"),
            Self::NotCached => f.write_str("not cached"),
            Self::Corrupt(r) => write!(f, "corrupt: {r}"),
            Self::StreamsOnlyToCached => f.write_str("streams only to cached stages"),
            Self::StreamsTo(n) => write!(f, "streams to {n}"),
            Self::NoOutputs => f.write_str("has no outputs to cache"),
        }
    }
}

/// Whether a node runs, and why.
#[derive(Debug)]
pub struct Decision {
    pub run: bool,
    pub why: Why,
    /// Its verified artifacts, when cached.
    pub cached: BTreeMap<String, Artifact>,
}

/// Decides which nodes run. With `repair`, corrupt artifacts are deleted so that they are
/// recomputed (the caller holds the store lock).
pub fn decide(
    plan: &Plan,
    store: &Store,
    opts: &RunOptions,
    repair: bool,
) -> Result<Vec<Decision>, Error> {
    let n = plan.nodes.len();
    let mut forced = vec![false; n];
    for w in &opts.force {
        for i in plan.select(w)? {
            forced[i] = true;
        }
    }
    for w in &opts.from {
        for i in plan.select(w)? {
            forced[i] = true;
        }
    }
    if !opts.from.is_empty() {
        // Downstream closure, in topological order.
        for i in 0..n {
            if plan.nodes[i]
                .inputs
                .iter()
                .any(|inp| inp.source.as_ref().is_some_and(|(p, _)| forced[*p]))
                && !forced[i]
            {
                forced[i] = true;
            }
        }
    }
    let mut target = vec![opts.until.is_empty(); n];
    for w in &opts.until {
        for i in plan.select(w)? {
            target[i] = true;
        }
    }
    for i in (0..n).rev() {
        if target[i] {
            for inp in &plan.nodes[i].inputs {
                if let Some((p, _)) = &inp.source {
                    target[*p] = true;
                }
            }
        }
    }

    // On a remote store a cached output counts only if the store holds it: what it holds of
    // every cached output is listed in one batch of concurrent requests.
    let t = Instant::now();
    let inventory = store.remote_inventory(&output_keys(plan))?;
    if let Some(inv) = &inventory {
        debug!(
            "{}: listed {} cached artifact(s) in the store in {:.3}s",
            store.location().display(),
            inv.len(),
            t.elapsed().as_secs_f64()
        );
    }
    // Nodes of one run can share a key (a pool of repeating draws): each key is looked up
    // (and, on a remote store, put back) once.
    let mut found: BTreeMap<String, Artifact> = BTreeMap::new();
    let mut out: Vec<Decision> = Vec::with_capacity(n);
    for (i, node) in plan.nodes.iter().enumerate() {
        let mut cached = BTreeMap::new();
        let mut missing: Option<Why> = None;
        for port in node.outputs.iter().filter(|p| p.mode == Mode::Artifact) {
            let key = &node.output_keys[port.name];
            if let Some(a) = found.get(key) {
                cached.insert(port.name.to_string(), a.clone());
                continue;
            }
            // A remote store that fails here stops the run before anything is computed.
            // Without `repair` (plan) nothing is written: a cached copy the store lacks is
            // shown as not cached.
            match store.lookup_in(key, inventory.as_ref(), repair)? {
                Lookup::Valid(a) => {
                    found.insert(key.clone(), (*a).clone());
                    cached.insert(port.name.to_string(), *a);
                }
                Lookup::Missing => missing = Some(Why::NotCached),
                Lookup::Corrupt(reason) => {
                    warn!(
                        "artifact {key} ({}.{}) is corrupt: {reason}; it will be recomputed",
                        node.name, port.name
                    );
                    if repair {
                        store.remove(key)?;
                    }
                    missing = Some(Why::Corrupt(reason));
                }
            }
        }
        let is_cached = node.has_artifact_outputs() && missing.is_none();
        let run = target[i] && (forced[i] || !is_cached);
        let why = if !target[i] {
            Why::NotNeeded
        } else if forced[i] {
            Why::Forced
        } else if is_cached {
            Why::Cached
        } else if !node.has_artifact_outputs() && !node.outputs.is_empty() {
            Why::StreamsOnlyToCached
        } else if node.outputs.is_empty() {
            Why::NoOutputs
        } else {
            missing.unwrap_or(Why::NotCached)
        };
        // A pure producer runs only when a running stage reads its stream (below).
        let run = run && why != Why::StreamsOnlyToCached;
        out.push(Decision { run, why, cached });
    }
    // A part of a sharded node (or the join of a round before the last) runs only for a
    // reader that runs: once the parts are joined, they are not needed (readers come later
    // in the order, so they are decided first).
    for i in (0..n).rev() {
        if (plan.nodes[i].part.is_some() || plan.nodes[i].is_between_rounds())
            && out[i].run
            && out[i].why != Why::Forced
            && plan.consumers(i).iter().all(|&c| !out[c].run)
        {
            out[i].run = false;
            out[i].why = Why::NotNeeded;
        }
    }
    // A running stage needs its stream producers running too.
    for i in (0..n).rev() {
        if !out[i].run {
            continue;
        }
        for inp in &plan.nodes[i].inputs {
            if let (Some((p, _)), Mode::Stream) = (&inp.source, inp.port.mode) {
                if !out[*p].run {
                    out[*p].run = true;
                    out[*p].why = Why::StreamsTo(plan.nodes[i].name.clone());
                }
            }
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Cached,
    NotNeeded,
    Ran {
        seconds: f64,
    },
    Failed {
        error: String,
        secondary: bool,
    },
    /// Never started because the run stopped first.
    Skipped,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::NotNeeded => "not needed",
            Self::Ran { .. } => "ran",
            Self::Failed {
                secondary: true, ..
            } => "stopped",
            Self::Failed { .. } => "FAILED",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug)]
pub struct RunReport {
    pub nodes: Vec<(String, Outcome)>,
    pub seconds: f64,
    pub record: std::path::PathBuf,
}

impl RunReport {
    /// How many nodes ran (rather than being read from the store or skipped).
    pub fn ran(&self) -> usize {
        self.nodes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ran { .. }))
            .count()
    }
}

type Done = (usize, Result<BTreeMap<String, Artifact>, StageError>, f64);

/// Runs what `decide` says must run. On failure, the first real error is returned after
/// every started stage has stopped; artifacts committed before it stay valid.
pub fn run(plan: &Plan, store: &Store, opts: &RunOptions) -> Result<RunReport, Error> {
    let t0 = Instant::now();
    let started = now();
    let who = format!("run `{}` of {}", plan.spec.name, plan.spec.file.display());
    // On object storage the lease keeps what this run reads and writes from a gc.
    let mut protects = output_keys(plan);
    protects.extend(
        plan.nodes
            .iter()
            .filter_map(|n| n.part.as_ref().map(|p| count_key(&p.key))),
    );
    let lease = store.enter_run_protecting(&plan.spec.name, &who, &protects)?;
    let stale = store.clean_tmp()?;
    if stale > 0 {
        info!("removed {stale} half-written artifact(s) left by an interrupted run");
    }
    let decisions = decide(plan, store, opts, true)?;
    let n = plan.nodes.len();
    let running: Vec<bool> = decisions.iter().map(|d| d.run).collect();
    let forced: Vec<bool> = decisions.iter().map(|d| d.why == Why::Forced).collect();
    let mut available: BTreeMap<(usize, String), Artifact> = BTreeMap::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(n);
    for (i, d) in decisions.into_iter().enumerate() {
        outcomes.push(if d.run {
            Outcome::Skipped
        } else if d.why == Why::Cached {
            Outcome::Cached
        } else {
            Outcome::NotNeeded
        });
        for (out, a) in d.cached {
            available.insert((i, out), a);
        }
    }

    // Channels for stream edges between running nodes.
    let cap = plan.spec.channel_capacity;
    let mut ins: Vec<BTreeMap<String, StreamIn>> = (0..n).map(|_| BTreeMap::new()).collect();
    let mut outs: Vec<BTreeMap<String, StreamOut>> = (0..n).map(|_| BTreeMap::new()).collect();
    for (c, node) in plan.nodes.iter().enumerate() {
        for p in node.outputs.iter().filter(|p| p.mode == Mode::Stream) {
            outs[c].insert(
                p.name.to_string(),
                StreamOut {
                    consumers: Vec::new(),
                },
            );
        }
        if !running[c] {
            continue;
        }
        for inp in node.inputs.iter().filter(|i| i.port.mode == Mode::Stream) {
            if let Some((p, out)) = &inp.source {
                let (tx, rx): (Sender<Msg>, Receiver<Msg>) = bounded(cap);
                ins[c].insert(
                    inp.port.name.to_string(),
                    StreamIn {
                        producer: plan.nodes[*p].name.clone(),
                        rx,
                        ended: false,
                    },
                );
                outs[*p]
                    .get_mut(out.as_str())
                    .expect("stream output declared")
                    .consumers
                    .push((node.name.clone(), tx));
            }
        }
    }

    let multi =
        MultiProgress::with_draw_target(if opts.progress && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
    let style = ProgressStyle::with_template("{spinner} {prefix:<22} {wide_bar} {pos}/{len} {msg}")
        .expect("valid template");

    let (cancel_tx, cancel_rx) = bounded::<()>(0);
    let mut cancel_tx = Some(cancel_tx);
    let (done_tx, done_rx) = unbounded::<Done>();
    let mut started_nodes = vec![false; n];
    let mut finished = vec![false; n];
    let mut first_error: Option<(usize, StageError)> = None;
    let mut secondary: Option<(usize, StageError)> = None;
    // Claims on the nodes this run computes, held until each has committed; and the groups
    // whose nodes another run is computing, with who (see `crate::lease`).
    let mut claims: Vec<Option<Claim>> = (0..n).map(|_| None).collect();
    let mut elsewhere: BTreeMap<usize, String> = BTreeMap::new();
    let mut announced = std::collections::BTreeSet::new();

    std::thread::scope(|scope| {
        let mut live = 0usize;
        loop {
            // Nodes read from another run's commits free their readers: look again at once.
            let mut adopted = false;
            if cancel_tx.is_some() {
                // A stream-connected group starts as a whole once every artifact its members
                // read is committed: no producer fills channels that nobody reads yet.
                let waiting = |i: usize| {
                    plan.nodes[i].inputs.iter().any(|inp| match &inp.source {
                        Some((p, _)) if inp.port.mode == Mode::Artifact && running[*p] => {
                            !finished[*p]
                        }
                        _ => false,
                    })
                };
                // In a sharded run a worker takes its own part of a node first, and the
                // others' parts (those nobody holds) only once its own is done.
                let own = plan.shard.map(|s| s.index);
                let deferred = |i: usize| {
                    plan.nodes[i].part.as_ref().is_some_and(|p| {
                        Some(p.shard.index) != own
                            && (0..n).any(|j| {
                                running[j]
                                    && !finished[j]
                                    && plan.nodes[j].part.as_ref().is_some_and(|o| {
                                        o.group == p.group
                                            && o.round == p.round
                                            && Some(o.shard.index) == own
                                    })
                            })
                    })
                };
                let mut group_waits = vec![false; n];
                for i in (0..n).filter(|&i| running[i] && !started_nodes[i]) {
                    if waiting(i) || deferred(i) {
                        group_waits[plan.nodes[i].group] = true;
                    }
                }
                // Claim every ready group's nodes; a group another run computes waits, and
                // one that another run has finished meanwhile is read, not recomputed.
                let ready: std::collections::BTreeSet<usize> = (0..n)
                    .filter(|&i| running[i] && !started_nodes[i])
                    .map(|i| plan.nodes[i].group)
                    .filter(|g| !group_waits[*g] && !elsewhere.contains_key(g))
                    .collect();
                for g in ready {
                    let members: Vec<usize> = (0..n)
                        .filter(|&i| running[i] && !started_nodes[i] && plan.nodes[i].group == g)
                        .collect();
                    // The store failed while this group was being taken: the group fails
                    // and nothing more is started.
                    macro_rules! fail_and_stop {
                        ($e:expr) => {{
                            fail_group(
                                members[0],
                                $e,
                                &mut outcomes,
                                &mut first_error,
                                &mut cancel_tx,
                            );
                            break;
                        }};
                    }
                    let claimed = match claim_group(plan, store, &members, &who) {
                        Ok(c) => c,
                        // The claims folder is unusable: nothing can be run safely.
                        Err(e) => fail_and_stop!(e),
                    };
                    match claimed {
                        Err(holder) => {
                            if announced.insert(g) {
                                // Nodes of one run can share a key (a pool of repeating draws).
                                let own =
                                    holder.starts_with(&format!("pid {},", std::process::id()));
                                let by = if own { "this run" } else { "another run" };
                                info!(
                                    "{}: computed by {by} now ({holder}); waiting for it",
                                    plan.nodes[members[0]].name
                                );
                            }
                            elsewhere.insert(g, holder);
                        }
                        Ok(held) => {
                            let done = match committed_elsewhere(plan, store, &members, &forced) {
                                Ok(done) => done,
                                Err(e) => fail_and_stop!(e),
                            };
                            if let Some(done) = done {
                                for (i, arts) in done {
                                    info!("{} was computed by another run", plan.nodes[i].name);
                                    adopt(i, arts, &mut available, &mut outcomes);
                                    started_nodes[i] = true;
                                    finished[i] = true;
                                    adopted = true;
                                }
                            } else {
                                let counted = members
                                    .iter()
                                    .try_for_each(|&i| check_shard_count(plan, store, i, &who));
                                if let Err(e) = counted {
                                    fail_and_stop!(e);
                                }
                                for (i, c) in held {
                                    claims[i] = Some(c);
                                }
                            }
                        }
                    }
                }
                for i in 0..n {
                    if cancel_tx.is_none()
                        || !running[i]
                        || started_nodes[i]
                        || group_waits[plan.nodes[i].group]
                        || elsewhere.contains_key(&plan.nodes[i].group)
                    {
                        continue;
                    }
                    started_nodes[i] = true;
                    live += 1;
                    let node = &plan.nodes[i];
                    let mut artifacts_in = BTreeMap::new();
                    for inp in node.inputs.iter().filter(|i| i.port.mode == Mode::Artifact) {
                        if let Some((p, out)) = &inp.source {
                            if let Some(a) = available.get(&(*p, out.clone())) {
                                artifacts_in.insert(inp.port.name.to_string(), a.clone());
                            }
                        }
                    }
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(node.name.clone());
                    bar.enable_steady_tick(Duration::from_millis(200));
                    let ctx = Context {
                        info: NodeInfo {
                            name: node.name.clone(),
                            stage: node.stage.clone(),
                            kind: node.kind.clone(),
                            epoch: node.epoch,
                            seed: plan.spec.seed,
                            shard: node.part.as_ref().map(|p| p.shard),
                            parts: node.parts,
                            round: node.round,
                        },
                        sections: node.sections.clone(),
                        base_dir: plan
                            .spec
                            .file
                            .parent()
                            .unwrap_or(std::path::Path::new("."))
                            .to_path_buf(),
                        streams_in: std::mem::take(&mut ins[i]),
                        streams_out: std::mem::take(&mut outs[i]),
                        artifacts_in,
                        writers: BTreeMap::new(),
                        cancel: cancel_rx.clone(),
                        progress: bar,
                    };
                    let tx = done_tx.clone();
                    let forced_here = forced[i];
                    let builder = std::thread::Builder::new().name(node.name.clone());
                    let spawned = builder.spawn_scoped(scope, move || {
                        let t = Instant::now();
                        let r = run_node(plan, store, i, ctx, forced_here);
                        let _ = tx.send((i, r, t.elapsed().as_secs_f64()));
                    });
                    if let Err(e) = spawned {
                        let _ = done_tx.send((
                            i,
                            Err(StageError::msg(format!("cannot start a thread: {e}"))),
                            0.0,
                        ));
                    }
                }
            }
            if adopted {
                continue;
            }
            if live == 0 && (elsewhere.is_empty() || cancel_tx.is_none()) {
                break;
            }
            let got = if elsewhere.is_empty() {
                Some(done_rx.recv().expect("a sender is held here"))
            } else {
                done_rx.recv_timeout(store.poll_interval()).ok()
            };
            let Some((i, r, secs)) = got else {
                // Try the waiting groups again: their holder may have finished or died.
                elsewhere.clear();
                continue;
            };
            live -= 1;
            finished[i] = true;
            claims[i] = None;
            if let Some(hook) = plan.after_stage {
                hook();
            }
            match r {
                Ok(arts) => {
                    info!("{} finished in {secs:.2}s", plan.nodes[i].name);
                    for (out, a) in arts {
                        available.insert((i, out), a);
                    }
                    outcomes[i] = Outcome::Ran { seconds: secs };
                }
                Err(e) => {
                    let sec = e.is_secondary();
                    outcomes[i] = Outcome::Failed {
                        error: e.to_string(),
                        secondary: sec,
                    };
                    if cancel_tx.take().is_some() {
                        warn!("{} failed; stopping the run", plan.nodes[i].name);
                    }
                    if sec {
                        secondary.get_or_insert((i, e));
                    } else {
                        first_error.get_or_insert((i, e));
                    }
                }
            }
        }
        // Anything never started keeps its receivers here; dropping them is harmless now.
        drop(ins);
        drop(outs);
    });
    multi.clear().ok();

    let failure = first_error.or(secondary);
    let mut record = RunRecord {
        name: plan.spec.name.clone(),
        pipeline: plan.spec.file.clone(),
        started,
        finished: now(),
        ok: failure.is_none(),
        error: failure
            .as_ref()
            .map(|(i, e)| format!("{}: {e}", plan.nodes[*i].name)),
        device: plan.describe_global(),
        nodes: plan
            .nodes
            .iter()
            .zip(&outcomes)
            .map(|(node, o)| NodeRecord {
                name: node.name.clone(),
                stage: node.stage.clone(),
                kind: node.kind.clone(),
                epoch: node.epoch,
                status: o.label().to_string(),
                seconds: match o {
                    Outcome::Ran { seconds } => *seconds,
                    _ => 0.0,
                },
                outputs: node
                    .outputs
                    .iter()
                    .filter(|p| p.mode == Mode::Artifact)
                    .map(|p| (p.name.to_string(), node.output_keys[p.name].clone()))
                    .collect(),
            })
            .collect(),
    };
    // Written last, naming only what the store is seen to hold now.
    let confirmed = confirm_record(store, &mut record, &outcomes);
    let record_path = match (
        confirmed.and_then(|()| store.write_run_record(&record)),
        &failure,
    ) {
        (Ok(p), _) => p,
        (Err(e), None) => return Err(e.into()),
        // The store failing is most likely also why the run failed: report that failure.
        (Err(e), Some(_)) => {
            warn!("cannot write the run record: {e}");
            std::path::PathBuf::new()
        }
    };
    drop(lease);
    if let Some((i, source)) = failure {
        return Err(Error::StageFailed {
            node: plan.nodes[i].name.clone(),
            kind: plan.nodes[i].kind.clone(),
            source: source.into(),
        });
    }
    if let (false, Some(why)) = (record.ok, record.error) {
        // Outputs lost from the store during the run and not to be put back.
        return Err(Error::Store(crate::store::StoreError::Bad {
            path: store.location().to_path_buf(),
            message: why,
        }));
    }
    Ok(RunReport {
        nodes: plan
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .zip(outcomes)
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
        record: record_path,
    })
}

/// Every artifact output key of the plan, in node order.
fn output_keys(plan: &Plan) -> Vec<String> {
    plan.nodes
        .iter()
        .flat_map(|n| {
            n.outputs
                .iter()
                .filter(|p| p.mode == Mode::Artifact)
                .map(|p| n.output_keys[p.name].clone())
        })
        .collect()
}

/// Drops from `record` every output the store does not hold (a remote store gets what it
/// lacks of this run's computed or cached outputs back from the cache first): a record
/// never names a missing artifact. A computed or cached output still missing fails the
/// record (`ok: false`), with which.
fn confirm_record(
    store: &Store,
    record: &mut RunRecord,
    outcomes: &[Outcome],
) -> Result<(), crate::store::StoreError> {
    let used = |o: &Outcome| matches!(o, Outcome::Cached | Outcome::Ran { .. });
    let keys: Vec<(String, bool)> = record
        .nodes
        .iter()
        .zip(outcomes)
        .flat_map(|(n, o)| n.outputs.values().map(move |k| (k.clone(), used(o))))
        .collect();
    let present = store.confirm(&keys)?;
    for (n, o) in record.nodes.iter_mut().zip(outcomes) {
        let lost: Vec<String> = n
            .outputs
            .iter()
            .filter(|(_, k)| !present.contains(*k))
            .map(|(out, k)| format!("{}.{out} ({k})", n.name))
            .collect();
        n.outputs.retain(|_, k| present.contains(k));
        if used(o) && !lost.is_empty() {
            let why = format!(
                "{} missing from the store {} at the end of the run",
                lost.join(", "),
                store.location().display()
            );
            warn!("{why}");
            record.ok = false;
            record.error.get_or_insert(why);
        }
    }
    Ok(())
}

/// Claims `members`' nodes that commit artifacts (streams are not shared), or says who
/// holds one of them (and holds none).
fn claim_group(
    plan: &Plan,
    store: &Store,
    members: &[usize],
    who: &str,
) -> Result<Result<Vec<(usize, Claim)>, String>, Error> {
    let mut held = Vec::new();
    for &i in members {
        let node = &plan.nodes[i];
        if !node.has_artifact_outputs() {
            continue;
        }
        match store.claim(&node.key, who)? {
            Ok(c) => held.push((i, c)),
            Err(holder) => return Ok(Err(format!("{holder}: `{}`", node.name))),
        }
    }
    Ok(Ok(held))
}

/// The store failed while claiming or adopting a group (node `at` first): nothing can be run
/// safely, so the run stops with that error (dropping the cancel sender stops it).
fn fail_group<E: std::fmt::Display + Into<StageError>>(
    at: usize,
    e: E,
    outcomes: &mut [Outcome],
    first_error: &mut Option<(usize, StageError)>,
    cancel_tx: &mut Option<Sender<()>>,
) {
    outcomes[at] = Outcome::Failed {
        error: e.to_string(),
        secondary: false,
    };
    first_error.get_or_insert((at, e.into()));
    cancel_tx.take();
}

/// Refuses to compute a part of a node while workers started with another shard count
/// compute parts of it: their parts would not join with this worker's. The count is
/// recorded in the store per node (the first worker's); a record whose workers hold no
/// part any more (they ended or died) gives way to this worker's count.
fn check_shard_count(plan: &Plan, store: &Store, i: usize, who: &str) -> Result<(), StageError> {
    let node = &plan.nodes[i];
    let Some(part) = &node.part else {
        return Ok(());
    };
    let n = part.shard.count;
    let key = count_key(&part.key);
    let whole = node.name.split('[').next().unwrap_or(&node.name);
    for _ in 0..3 {
        let recorded = match store.try_lookup(&key)? {
            Lookup::Valid(a) => a.meta("shards").and_then(|v| v.as_u64()),
            _ => None,
        };
        let Some(m) = recorded else {
            record_shard_count(plan, store, i, whole, &key, who, false)?;
            continue;
        };
        if m == n as u64 {
            return Ok(());
        }
        for q in 0..m as u32 {
            let other = Shard {
                index: q,
                count: m as u32,
            };
            if let Err(holder) = store.claim(&part_key(&part.key, other), who)? {
                return Err(StageError::msg(format!(
                    "`{whole}` is being computed in {m} parts ({holder} holds part {other}), \
                     but this worker was started as part {} of {n}: start every worker of a \
                     run with the same shard count",
                    plan.shard.unwrap_or(part.shard)
                )));
            }
        }
        record_shard_count(plan, store, i, whole, &key, who, true)?;
        return Ok(());
    }
    Err(StageError::msg(format!(
        "the shard count of `{whole}` keeps changing in the store: workers with different \
         counts are starting at once"
    )))
}

/// Records in the store that node `i`'s whole (named `whole`) is computed in its part's
/// count of parts.
fn record_shard_count(
    plan: &Plan,
    store: &Store,
    i: usize,
    whole: &str,
    key: &str,
    who: &str,
    replace: bool,
) -> Result<(), StageError> {
    let node = &plan.nodes[i];
    let Some(part) = &node.part else {
        return Ok(());
    };
    let mut w = store.begin(key)?;
    w.set_meta("shards", part.shard.count);
    w.set_meta("by", who);
    let manifest = Manifest {
        key: key.to_string(),
        node: whole.to_string(),
        kind: node.kind.clone(),
        output: "shard count".into(),
        ty: "shard_count".into(),
        epoch: node.epoch,
        files: Vec::new(),
        rows: 0,
        schema: Vec::new(),
        meta: BTreeMap::new(),
        wall_time_s: 0.0,
        created: now(),
        picie_version: plan.version.clone(),
        provenance: serde_json::json!({ "shard_count_of": part.key }),
    };
    store.commit(w, manifest, replace)?;
    Ok(())
}

/// Committed artifacts per node of a group: (node index, output name -> artifact).
type Adopted = Vec<(usize, BTreeMap<String, Artifact>)>;

/// When every node of a group that commits artifacts finds them valid in the store (another
/// run computed them), those artifacts per node; `None` if something is still to compute
/// or a node is forced. An error is the store failing.
fn committed_elsewhere(
    plan: &Plan,
    store: &Store,
    members: &[usize],
    forced: &[bool],
) -> Result<Option<Adopted>, crate::store::StoreError> {
    let mut out = Vec::new();
    for &i in members {
        let node = &plan.nodes[i];
        if forced[i] {
            return Ok(None);
        }
        let mut arts = BTreeMap::new();
        for p in node.outputs.iter().filter(|p| p.mode == Mode::Artifact) {
            match store.try_lookup(&node.output_keys[p.name])? {
                Lookup::Valid(a) => {
                    arts.insert(p.name.to_string(), *a);
                }
                _ => return Ok(None),
            }
        }
        out.push((i, arts));
    }
    // A group of pure stream producers commits nothing: there is nothing to adopt.
    Ok(out.iter().any(|(_, a)| !a.is_empty()).then_some(out))
}

/// Takes another run's committed outputs of node `i` as this run's.
fn adopt(
    i: usize,
    arts: BTreeMap<String, Artifact>,
    available: &mut BTreeMap<(usize, String), Artifact>,
    outcomes: &mut [Outcome],
) {
    outcomes[i] = if arts.is_empty() {
        Outcome::NotNeeded
    } else {
        Outcome::Cached
    };
    for (out, a) in arts {
        available.insert((i, out), a);
    }
}

/// Runs node `i` and commits its outputs. Unless `forced`, an output that another run
/// committed meanwhile under the same key is kept as it is (content-addressed: it is the
/// same result), so that readers of it never see it swapped.
fn run_node(
    plan: &Plan,
    store: &Store,
    i: usize,
    mut ctx: Context,
    forced: bool,
) -> Result<BTreeMap<String, Artifact>, StageError> {
    let node = &plan.nodes[i];
    let t = Instant::now();
    for p in node.outputs.iter().filter(|p| p.mode == Mode::Artifact) {
        let w = store.begin(&node.output_keys[p.name])?;
        ctx.writers.insert(p.name.to_string(), w);
    }
    let mut stage = node.configured.instantiate();
    let r = catch_unwind(AssertUnwindSafe(|| stage.run(&mut ctx)));
    ctx.progress.finish_and_clear();
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            return Err(StageError::Panicked(msg));
        }
    }
    ctx.end_streams();
    let mut committed = BTreeMap::new();
    for (name, w) in std::mem::take(&mut ctx.writers) {
        let port = node
            .outputs
            .iter()
            .find(|p| p.name == name)
            .expect("writer for a declared output");
        let manifest = Manifest {
            key: node.output_keys[&name].clone(),
            node: node.name.clone(),
            kind: node.kind.clone(),
            output: name.clone(),
            ty: port.ty.to_string(),
            epoch: node.epoch,
            files: Vec::new(),
            rows: 0,
            schema: Vec::new(),
            meta: BTreeMap::new(),
            wall_time_s: t.elapsed().as_secs_f64(),
            created: now(),
            picie_version: plan.version.clone(),
            provenance: node.provenance.clone(),
        };
        committed.insert(name, store.commit(w, manifest, forced)?);
    }
    Ok(committed)
}
