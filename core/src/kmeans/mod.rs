//! K-means as PiCIE's release uses it: full-batch Lloyd (the release's faiss initialisation)
//! and the release's online mini-batch centroid update, plus its nearest-centroid label rule.
//!
//! Assignment minimises `|c|^2 - 2 x.c` (the `|x|^2` term does not change the argmin), a matmul
//! per chunk of rows. On a GPU that is a libtorch matmul; on the CPU it is a fused host kernel
//! (register-blocked matmul, argmin, objective and per-cluster sums in one pass over rows that
//! are still in cache, AVX2/FMA when the CPU has them), which does not pay libtorch's several
//! memory passes and thread barriers per op. Per-cluster sums are accumulated in f64 so that tens
//! of millions of points lose no precision. Data can be streamed: `lloyd` asks its source for a
//! fresh pass of chunks each iteration, so memory does not grow with the data set. All
//! randomness (sampling, k-means++, empty-cluster repair) comes from a seeded ChaCha RNG on the
//! host, so results do not depend on libtorch's global RNG; the CPU kernel's results do not
//! depend on the thread count either.
//!
//! ```ignore
//! let fit = Kmeans::init_from(&feats, &KmeansConfig { k: 27, ..Default::default() }, device)?;
//! let mut km = fit.kmeans; // centroids and N_k
//! for batch in later_batches {
//!     km.minibatch_update(&batch)?;
//! }
//! let labels = label_release(&feature_map, km.centroids())?;
//! ```

use std::error::Error as StdError;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Relative size of the perturbation that turns a copy of the largest centroid into a new one
/// (faiss uses the same 1/1024).
const SPLIT_EPS: f64 = 1.0 / 1024.0;
/// RNG streams, so that init and repairs draw independent numbers from one seed.
const STREAM_INIT: u64 = 0;
const STREAM_REPAIR: u64 = 1;

/// Distance used for assignment and centroid updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Plain (squared) Euclidean k-means, as the release's faiss call.
    #[default]
    L2,
    /// Spherical k-means: centroids are kept at unit length and points go to the centroid of
    /// largest dot product. Inputs are expected to be unit vectors already (PiCIE's are); they
    /// are not renormalised here.
    Cosine,
}

/// How the initial centroids are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// K distinct rows drawn uniformly (the release: faiss's random-sample init).
    #[default]
    RandomSample,
    /// k-means++ (D^2 sampling) over the init pool, which is held in memory.
    KMeansPlusPlus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeansConfig {
    /// Number of clusters.
    pub k: usize,
    pub metric: Metric,
    pub init: Init,
    /// Lloyd iterations (the release: 20 to 30).
    pub n_iter: usize,
    pub seed: u64,
    /// Rows per distance matmul (per host-kernel call on CPU); bounds the N x K distance block
    /// and the per-chunk temporaries (a conversion to f32 or a copy to the device).
    pub chunk_rows: usize,
    /// Initial centroids are drawn from the first this-many rows; `None` = all rows. Random
    /// sampling streams over the pool (K rows in memory); k-means++ holds the pool in memory.
    pub init_pool_rows: Option<usize>,
}

impl Default for KmeansConfig {
    fn default() -> Self {
        Self {
            k: 27,
            metric: Metric::L2,
            init: Init::RandomSample,
            n_iter: 20,
            seed: 0,
            chunk_rows: 65536,
            init_pool_rows: None,
        }
    }
}

impl KmeansConfig {
    pub fn validate(&self) -> Result<(), KmeansError> {
        if self.k == 0 {
            return Err(KmeansError::ZeroK);
        }
        if self.chunk_rows == 0 {
            return Err(KmeansError::Config("chunk_rows must be at least 1".into()));
        }
        if let Some(pool) = self.init_pool_rows {
            if pool < self.k {
                return Err(KmeansError::Config(format!(
                    "init_pool_rows = {pool} is smaller than k = {}",
                    self.k
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KmeansError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} is larger than the {rows} points available")]
    TooFewPoints { k: usize, rows: u64 },
    #[error("the input has no rows")]
    Empty,
    #[error("feature dimension {got} does not match the expected {expected}")]
    DimMismatch { expected: i64, got: i64 },
    #[error("expected a rows x features tensor with at least one feature, got shape {0:?}")]
    Shape(Vec<i64>),
    #[error("features must be floating point, got {0:?}")]
    Kind(Kind),
    #[error("non-finite feature value (NaN or infinity) in rows {start}..{end}")]
    NonFinite { start: u64, end: u64 },
    #[error(
        "feature values in rows {start}..{end} are so large that squared distances overflow f32"
    )]
    Overflow { start: u64, end: u64 },
    #[error("the given centroids contain NaN or infinite values")]
    NonFiniteCentroids,
    #[error("the data source yielded {now} rows on this pass but {first} on the first")]
    SourceChanged { first: u64, now: u64 },
    #[error("invalid k-means config: {0}")]
    Config(String),
    #[error("reading the data failed: {0}")]
    Source(#[source] Box<dyn StdError + Send + Sync>),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("internal k-means error: {0} (a bug in picie; please report it)")]
    Internal(&'static str),
}

/// One Lloyd iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterStat {
    pub iteration: usize,
    /// Sum of squared distances of all points to their nearest centroid, with the centroids
    /// this iteration started from (so it is non-increasing over iterations).
    pub objective: f64,
    /// Clusters that ended up empty and were re-seeded by splitting the largest one.
    pub empty_repaired: usize,
}

/// One mini-batch update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchStat {
    pub rows: u64,
    /// Sum of squared distances of the batch to the centroids before the update.
    pub objective: f64,
    /// Clusters that received at least one point (and so moved).
    pub clusters_updated: usize,
}

/// The outcome of a full Lloyd run.
#[derive(Debug)]
pub struct Fit {
    /// Final centroids; `counts` are the cluster sizes under them (the release searches all
    /// init points once more after training and seeds N_k with these counts).
    pub kmeans: Kmeans,
    pub iters: Vec<IterStat>,
    /// Objective of the final centroids (from that last assignment pass).
    pub objective: f64,
    /// Rows seen per pass.
    pub rows: u64,
}

mod assign;
mod cpu_kernel;
mod init;
mod lloyd;
mod minibatch;
#[cfg(test)]
mod tests;

use assign::*;
pub use assign::{label_release, tensor_chunks};
use cpu_kernel::*;
use init::*;
use lloyd::*;
pub use lloyd::{lloyd, lloyd_from, pass_blocks, BlockStats, LloydState, SavedLloyd};
pub use minibatch::{zero_minibatch_rows, Kmeans, Mode, Online, StatRow};
