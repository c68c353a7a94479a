//! Sharded passes: one run split over N worker processes that share a store.
//!
//! A worker started as shard I of N rewrites its plan ([`crate::Plan::sharded`]): every
//! stream-connected group whose stages all run in parts becomes N part groups, each over a
//! contiguous share of the batches, plus one combine node per stored output that joins the
//! parts into exactly what one process writes (same key, same bytes). The parts are stored
//! under keys of their own, so the workers coordinate through the store's claims: each
//! computes its own part first, then any part nobody holds; whoever claims a combine node
//! joins the parts; nodes that do not shard run once, in whichever worker claims them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::plan::{hash_hex, stream_groups, PartOf, Plan, PlanInput, PlanNode};
use crate::stage::{Configured, Mode, Port, Runnable};

/// Part `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// A bad shard spec or environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardError(pub String);

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self, ShardError> {
        if count == 0 {
            return Err(ShardError("a shard count must be at least 1".into()));
        }
        if index >= count {
            return Err(ShardError(format!(
                "shard {index}/{count} does not exist: shards of {count} are numbered 0 to {}",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }

    /// Which of `total` batches this part takes: contiguous, in order, sizes differing by
    /// at most one, so the parts concatenated are the whole in its order.
    pub fn range(&self, total: usize) -> Range<usize> {
        let (i, n) = (self.index as usize, self.count as usize);
        (i * total / n)..((i + 1) * total / n)
    }

    /// Which of `n` items, cut into batches of `batch`, this part takes: the items of its
    /// [`Shard::range`] of the batches.
    pub fn items(&self, n: usize, batch: usize) -> Range<usize> {
        let r = self.range(n.div_ceil(batch));
        (r.start * batch).min(n)..(r.end * batch).min(n)
    }

    /// Whether batch `b` of `total` is this part's.
    pub fn takes(&self, b: usize, total: usize) -> bool {
        self.range(total).contains(&b)
    }

    /// The shard from the scheduler's environment: a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`) or a
    /// Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` of `PICIE_SHARDS`); `None` outside both.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ShardError> {
        let num = |name: &str| -> Result<Option<u32>, ShardError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| ShardError(format!("{name}={v:?} is not a whole number"))),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                ShardError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into())
            })?;
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                ShardError(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })?;
            // `--array=0-7:2` or `1,5,9` numbers tasks sparsely: shards must be 0..count.
            return Self::new(index, count).map(Some).map_err(|e| {
                ShardError(format!(
                    "the Slurm array gives {e}; submit a dense array (`--array=0-{}`)",
                    count.saturating_sub(1)
                ))
            });
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("PICIE_SHARDS")?.ok_or_else(|| {
                ShardError(
                    "JOB_COMPLETION_INDEX is set but PICIE_SHARDS is not: set it to the \
                     Indexed Job's `completions`"
                        .into(),
                )
            })?;
            return Self::new(index, count).map(Some);
        }
        Ok(None)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;
    /// `I/N`, 0-based: `0/4` to `3/4`.
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let bad = || ShardError(format!("`{s}` is not a shard: write I/N, e.g. 0/4 to 3/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i: u32 = i.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Self::new(i, n)
    }
}

/// What each part of a round before the last stores, for the round's join
/// ([`crate::Stage::rounds`]).
pub const ROUND_STATS: Port = Port::artifact("round_stats", "round_stats");
/// What the join of a round before the last stores, for the next round's parts and join.
pub const ROUND_STATE: Port = Port::artifact("round_state", "round_state");

/// The input port of a combine node that reads part `q` of `output`: `part{q}.{output}`.
/// Ports name themselves with static strings, so these are interned (a few per output).
pub fn part_port(q: u32, output: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let name = format!("part{q}.{output}");
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = names.get(name.as_str()) {
        return s;
    }
    let s: &'static str = Box::leak(name.into_boxed_str());
    names.insert(s);
    s
}

/// The key of part `shard` of the node keyed `key`.
pub fn part_key(key: &str, shard: Shard) -> String {
    blake3::hash(format!("{key}/part {shard}").as_bytes())
        .to_hex()
        .to_string()
}

/// The key of the record of how many parts the node keyed `key` is computed in.
pub fn count_key(key: &str) -> String {
    blake3::hash(format!("{key}/shard count").as_bytes())
        .to_hex()
        .to_string()
}

impl Plan {
    /// This plan as worker `shard` of a sharded run (see [`crate::shard`]): each stream
    /// group whose stages are all [`crate::Stage::shardable`] and that stores something
    /// becomes `shard.count` part groups plus a combine node per storing stage, which keeps
    /// the stage's name and keys. Also returns, for the log, why groups with a shardable
    /// stage run whole. The run is named NAME.shard-I-of-N. One part is the plan itself.
    pub fn into_sharded(mut self, shard: Shard) -> (Plan, Vec<String>) {
        let mut notes = Vec::new();
        if shard.count == 1 {
            return (self, notes);
        }
        let count = shard.count;
        // Workers run at once, so each is a run of its own name; the run's own name stays
        // free for the run that reads the joined result.
        self.spec.name = format!("{}.shard-{}-of-{count}", self.spec.name, shard.index);
        let mut why_not: BTreeMap<usize, String> = BTreeMap::new();
        let mut some_can = BTreeSet::new();
        let mut stores = BTreeSet::new();
        let mut members: BTreeMap<usize, usize> = BTreeMap::new();
        for node in &self.nodes {
            *members.entry(node.group).or_default() += 1;
        }
        for node in &self.nodes {
            let shardable = node.configured.shardable().and_then(|()| {
                if node.configured.rounds() > 1 && members[&node.group] > 1 {
                    Err("it runs in rounds, and a stream cannot wait between them".to_string())
                } else {
                    Ok(())
                }
            });
            match shardable {
                Ok(()) => {
                    some_can.insert(node.group);
                }
                Err(r) => {
                    why_not
                        .entry(node.group)
                        .or_insert(format!("`{}` runs whole: {r}", node.name));
                }
            }
            if node.has_artifact_outputs() {
                stores.insert(node.group);
            }
        }
        for g in &some_can {
            if let Some(r) = why_not.get(g) {
                notes.push(r.clone());
            }
        }
        let splits = |g: usize| stores.contains(&g) && !why_not.contains_key(&g);
        let old = std::mem::take(&mut self.nodes);
        let mut nodes: Vec<PlanNode> = Vec::with_capacity(old.len() * (count as usize + 1));
        // The node that stands for old node i downstream (itself or its combine node), and
        // its parts.
        let mut whole: Vec<usize> = Vec::with_capacity(old.len());
        let mut parts: Vec<Vec<usize>> = Vec::with_capacity(old.len());
        for node in old {
            let remap = |inputs: &[PlanInput], q: Option<u32>| -> Vec<PlanInput> {
                inputs
                    .iter()
                    .map(|inp| {
                        let mut inp = inp.clone();
                        if let Some((p, _)) = &mut inp.source {
                            *p = match q {
                                Some(q) if inp.port.mode == Mode::Stream => parts[*p][q as usize],
                                _ => whole[*p],
                            };
                        }
                        inp
                    })
                    .collect()
            };
            if !splits(node.group) {
                let mut n = node.clone();
                n.inputs = remap(&node.inputs, None);
                whole.push(nodes.len());
                parts.push(Vec::new());
                nodes.push(n);
                continue;
            }
            let rounds = node.configured.rounds();
            let stored: Vec<Port> = node
                .outputs
                .iter()
                .filter(|p| p.mode == Mode::Artifact)
                .cloned()
                .collect();
            // Joins see the node's stored inputs too (a history to append to, the data
            // again); streams end with the parts.
            let whole_inputs: Vec<PlanInput> = remap(&node.inputs, None)
                .into_iter()
                .filter(|i| i.port.mode == Mode::Artifact)
                .collect();
            let mut mine = Vec::with_capacity(count as usize);
            // The previous round's join: its state feeds this round's parts and join.
            let mut state: Option<usize> = None;
            for r in 0..rounds {
                let last = r + 1 == rounds;
                // One round keeps the node's key; earlier rounds key off it.
                let round_key = if last {
                    node.key.clone()
                } else {
                    hash_hex(format!("{}/round {r} of {rounds}", node.key).as_bytes())
                };
                let round = (rounds > 1).then_some((r, rounds));
                // `kmeans[round 3/21 part 0/2]`, `kmeans[round 3/21]`; one round: `kmeans[part 0/2]`.
                let tag = match round {
                    Some(_) => format!("round {}/{rounds}", r + 1),
                    None => String::new(),
                };
                let with_state = |mut inputs: Vec<PlanInput>| {
                    if let Some(s) = state {
                        inputs.push(PlanInput {
                            port: ROUND_STATE,
                            source: Some((s, ROUND_STATE.name.to_string())),
                        });
                    }
                    inputs
                };
                let part_outputs = if rounds > 1 {
                    vec![ROUND_STATS]
                } else {
                    node.outputs.clone()
                };
                mine.clear();
                for q in 0..count {
                    let part = Shard { index: q, count };
                    let key = part_key(&round_key, part);
                    let mut provenance = node.provenance.clone();
                    provenance["part"] =
                        serde_json::json!({"of": node.key, "part": part.to_string()});
                    if let Some((r, n)) = round {
                        provenance["part"]["round"] = serde_json::json!(format!("{}/{n}", r + 1));
                    }
                    let output_keys = part_outputs
                        .iter()
                        .map(|p| {
                            let k = hash_hex(format!("{key}/{}", p.name).as_bytes());
                            (p.name.to_string(), k)
                        })
                        .collect();
                    mine.push(nodes.len());
                    nodes.push(PlanNode {
                        name: if tag.is_empty() {
                            format!("{}[part {part}]", node.name)
                        } else {
                            format!("{}[{tag} part {part}]", node.name)
                        },
                        inputs: with_state(remap(&node.inputs, Some(q))),
                        outputs: part_outputs.clone(),
                        key,
                        output_keys,
                        provenance,
                        part: Some(PartOf {
                            shard: part,
                            round: r,
                            key: node.key.clone(),
                            group: node.group,
                        }),
                        round,
                        ..node.clone()
                    });
                }
                let joined: Vec<Port> = if rounds > 1 {
                    vec![ROUND_STATS]
                } else {
                    stored.clone()
                };
                if joined.is_empty() {
                    break;
                }
                let mut inputs = whole_inputs.clone();
                for (q, &pi) in mine.iter().enumerate() {
                    for p in &joined {
                        inputs.push(PlanInput {
                            port: Port::artifact(part_port(q as u32, p.name), p.ty),
                            source: Some((pi, p.name.to_string())),
                        });
                    }
                }
                let inputs = with_state(inputs);
                let (outputs, output_keys): (Vec<Port>, BTreeMap<String, String>) = if last {
                    let keys = node
                        .output_keys
                        .iter()
                        .filter(|(name, _)| stored.iter().any(|p| p.name == name.as_str()))
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect();
                    (stored.clone(), keys)
                } else {
                    let k = hash_hex(format!("{round_key}/{}", ROUND_STATE.name).as_bytes());
                    (
                        vec![ROUND_STATE],
                        [(ROUND_STATE.name.to_string(), k)].into(),
                    )
                };
                let mut provenance = node.provenance.clone();
                if let Some((r, n)) = round.filter(|_| !last) {
                    provenance["round"] =
                        serde_json::json!({"of": node.key, "round": format!("{}/{n}", r + 1)});
                }
                state = Some(nodes.len());
                nodes.push(PlanNode {
                    name: if last {
                        node.name.clone()
                    } else {
                        format!("{}[{tag}]", node.name)
                    },
                    configured: Arc::new(Combining {
                        inner: node.configured.clone(),
                        inputs: inputs.iter().map(|i| i.port.clone()).collect(),
                        outputs: outputs.clone(),
                    }),
                    key: round_key,
                    inputs,
                    outputs,
                    output_keys,
                    provenance,
                    parts: count,
                    round,
                    ..node.clone()
                });
            }
            if stored.is_empty() {
                // A pure stream producer: only its own group's parts read it.
                whole.push(usize::MAX);
            } else {
                whole.push(nodes.len() - 1);
            }
            parts.push(mine);
        }
        let inputs: Vec<Vec<PlanInput>> = nodes.iter().map(|n| n.inputs.clone()).collect();
        let groups = stream_groups(&inputs, nodes.len());
        for (node, g) in nodes.iter_mut().zip(groups) {
            node.group = g;
        }
        self.nodes = nodes;
        self.shard = Some(shard);
        (self, notes)
    }
}

/// A combine node's stage: the kind's [`crate::Stage::combine`] over the parts' outputs.
struct Combining {
    inner: Arc<dyn Configured>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

impl Configured for Combining {
    fn canonical(&self) -> serde_json::Value {
        self.inner.canonical()
    }
    fn files(&self) -> serde_json::Value {
        self.inner.files()
    }
    fn inputs(&self) -> Vec<Port> {
        self.inputs.clone()
    }
    fn outputs(&self) -> Vec<Port> {
        self.outputs.clone()
    }
    fn seeded(&self) -> bool {
        self.inner.seeded()
    }
    fn key_epoch(&self, epoch: u32) -> Option<u32> {
        self.inner.key_epoch(epoch)
    }
    fn shardable(&self) -> Result<(), String> {
        Err("it joins parts".into())
    }
    fn rounds(&self) -> u32 {
        self.inner.rounds()
    }
    fn instantiate(&self) -> Box<dyn Runnable> {
        self.inner.combiner()
    }
    fn combiner(&self) -> Box<dyn Runnable> {
        self.inner.combiner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batches_once_in_order() {
        for total in [0usize, 1, 2, 5, 7, 46] {
            for n in 1..=5u32 {
                let mut next = 0;
                for i in 0..n {
                    let r = Shard::new(i, n).unwrap().range(total);
                    assert_eq!(r.start, next);
                    assert!(r.len() + 1 >= total / n as usize);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn items_are_whole_batches_of_the_part() {
        let parts: Vec<Range<usize>> = (0..3)
            .map(|i| Shard::new(i, 3).unwrap().items(10, 3))
            .collect();
        // 10 items are 4 batches (3, 3, 3, 1); the parts take 1, 1 and 2 of them.
        assert_eq!(parts, [0..3, 3..6, 6..10]);
        assert_eq!(Shard::new(3, 4).unwrap().items(2, 3), 0..2);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        let e = "3/2".parse::<Shard>().unwrap_err().0;
        assert!(e.contains("shard 3/2 does not exist"), "{e}");
        assert!("0/0".parse::<Shard>().unwrap_err().0.contains("at least 1"));
        assert!("1-2".parse::<Shard>().unwrap_err().0.contains("write I/N"));
    }

    #[test]
    fn the_shard_comes_from_slurm_or_kubernetes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        assert_eq!(Shard::from_env(env(&[])).unwrap(), None);
        const SLURM: &[(&str, &str)] = &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(
            Shard::from_env(env(SLURM)).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        const K8S: &[(&str, &str)] = &[("JOB_COMPLETION_INDEX", "1"), ("PICIE_SHARDS", "2")];
        assert_eq!(
            Shard::from_env(env(K8S)).unwrap(),
            Some(Shard { index: 1, count: 2 })
        );
        let e = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "1")])).unwrap_err();
        assert!(e.0.contains("PICIE_SHARDS"), "{e}");
        const SPARSE: &[(&str, &str)] = &[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        let e = Shard::from_env(env(SPARSE)).unwrap_err();
        assert!(e.0.contains("dense array"), "{e}");
    }
}
