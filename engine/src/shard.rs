//! Sharded passes: one run split over N worker processes that share a store.
//!
//! A worker started as shard I of N rewrites its plan ([`crate::Plan::sharded`]): every
//! stream-connected group whose stages all run in parts becomes N part groups, each over a
//! contiguous share of the batches, plus one combine node per stored output that joins the
//! parts into exactly what one process writes (same key, same bytes). The parts are stored
//! under keys of their own, so the workers coordinate through the store's claims: each
//! computes its own part first, then any part nobody holds; whoever claims a combine node
//! joins the parts; nodes that do not shard run once, in whichever worker claims them.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

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
