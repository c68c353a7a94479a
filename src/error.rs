//! Library errors. The CLI adds context with anyhow; nothing here panics on user input.

use std::path::PathBuf;

use crate::diag::Diagnostics;
use crate::store::StoreError;

/// Why a stage's `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Msg(String),
    /// The run is stopping because another stage failed; not the root cause.
    #[error("cancelled because another stage failed")]
    Cancelled,
    /// A stream this stage reads ended without its producer finishing.
    #[error("the stream from `{0}` broke off because that stage failed")]
    UpstreamFailed(String),
    #[error("stage panicked: {0} (a bug in picie; please report it)")]
    Panicked(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StageError {
    pub fn msg(m: impl std::fmt::Display) -> Self {
        Self::Msg(m.to_string())
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Follow-on errors that a real failure elsewhere caused.
    pub fn is_secondary(&self) -> bool {
        matches!(self, Self::Cancelled | Self::UpstreamFailed(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read pipeline file {path}: {source}")]
    ReadPipeline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stage `{node}` ({kind}) failed: {source}")]
    StageFailed {
        node: String,
        kind: String,
        source: StageError,
    },
    #[error("no stage matches `{0}` (give a stage name, or `name@EPOCH` for one epoch)")]
    NoSuchStage(String),
    #[error("{0}")]
    Device(String),
}
