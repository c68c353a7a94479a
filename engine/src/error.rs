//! Engine errors. The CLI adds context with anyhow; nothing here panics on user input.

use std::fmt;
use std::path::PathBuf;

use crate::diag::Diagnostics;
use crate::store::StoreError;

/// A boxed error that keeps its type (downcastable) and its chain of causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a stage's `run` failed.
///
/// Like `anyhow::Error`, it converts from any error with `?` (a stage calls libraries the
/// engine does not know), so it does not implement `std::error::Error` itself; its
/// [`StageError::source`] gives the cause.
#[derive(Debug)]
pub enum StageError {
    Msg(String),
    /// A message with the error that caused it.
    Context {
        message: String,
        source: BoxError,
    },
    /// The run is stopping because another stage failed; not the root cause.
    Cancelled,
    /// A stream this stage reads ended without its producer finishing.
    UpstreamFailed(String),
    Panicked(String),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Any other error, as the library raised it.
    Other(BoxError),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StageError {
    fn from(e: E) -> Self {
        Self::Other(Box::new(e))
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Msg(m) => f.write_str(m),
            Self::Context { message, source } => write!(f, "{message}: {}", chain(&**source)),
            Self::Cancelled => f.write_str("cancelled because another stage failed"),
            Self::UpstreamFailed(p) => {
                write!(
                    f,
                    "the stream from `{p}` broke off because that stage failed"
                )
            }
            Self::Panicked(m) => write!(f, "stage panicked: {m} (a bug; please report it)"),
            Self::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            Self::Other(e) => f.write_str(&chain(&**e)),
        }
    }
}

/// An error and its causes, `a: b: c`, skipping causes whose text the outer ones already
/// say (many messages quote their source, which `{:#}` would print a second time).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl StageError {
    pub fn msg(m: impl fmt::Display) -> Self {
        Self::Msg(m.to_string())
    }

    /// `message` with its cause kept (not flattened into text).
    pub fn context(message: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::Context {
            message: message.to_string(),
            source: source.into(),
        }
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

    /// The underlying error, when there is one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Self::Context { source, .. } | Self::Other(source) => Some(&**source),
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The underlying error as `T`, when it is one.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.source().and_then(|e| e.downcast_ref::<T>())
    }
}

/// A [`StageError`] as a `std::error::Error`, for callers that need one (anyhow, `?` into
/// other error types).
#[derive(Debug)]
pub struct StageFailure(pub StageError);

impl fmt::Display for StageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<StageError> for StageFailure {
    fn from(e: StageError) -> Self {
        Self(e)
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
        source: StageFailure,
    },
    #[error("no stage matches `{0}` (give a stage name, or `name@EPOCH` for one epoch)")]
    NoSuchStage(String),
}

/// `?` from a stage's error into an application's `anyhow::Result` (CLI, benchmarks).
impl From<StageError> for anyhow::Error {
    fn from(e: StageError) -> Self {
        anyhow::Error::new(StageFailure(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_stage_error_keeps_its_cause() {
        let e: StageError = Outer(std::io::Error::other("disk on fire")).into();
        assert!(e.downcast_ref::<Outer>().is_some());
        assert_eq!(e.to_string(), "outer: disk on fire");
        let c = StageError::context("reading x.png", Outer(std::io::Error::other("gone")));
        assert_eq!(c.to_string(), "reading x.png: outer: gone");
        assert!(c.downcast_ref::<Outer>().is_some());
        // As a std error (anyhow at the CLI edge), the chain is still there.
        let a: anyhow::Error = c.into();
        assert_eq!(a.chain().count(), 3, "{a:#}");
        assert!(!StageError::msg("x").is_secondary());
        assert!(StageError::Cancelled.is_secondary());
    }
}
