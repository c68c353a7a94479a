//! What `picie inspect` and `picie report` are pointed at: a pipeline file (what a user has
//! at hand), a run name or a sweep name, found in a store.

use std::fmt;
use std::path::{Path, PathBuf};

use picie_engine::seeds::sweep_name;

use crate::analysis::AnalysisError;
use crate::plan::Plan;
use crate::stage::Registry;
use crate::store::Store;

/// A recorded run or sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Run(String),
    Sweep(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Run(n) | Target::Sweep(n) => n,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Run(n) => write!(f, "run `{n}`"),
            Target::Sweep(n) => write!(f, "sweep `{n}`"),
        }
    }
}

/// A target found in its store, with what the reader should know (e.g. that a newer run of
/// it is in progress).
#[derive(Debug)]
pub struct Resolved {
    pub store: PathBuf,
    pub target: Target,
    pub notes: Vec<String>,
}

/// The runs and sweeps recorded in a store's folder ([`Store::root`]: for a remote store,
/// its cache, where its records are mirrored), for messages: `a, b, c-seeds (sweep)`.
pub fn recorded(store_dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(store_dir.join("runs"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().join("latest.json").is_file() {
                        Some(name)
                    } else if e.path().join("sweep.json").is_file() {
                        Some(format!("{name} (sweep)"))
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn has_run(store: &Path, name: &str) -> bool {
    plain(name) && store.join("runs").join(name).join("latest.json").is_file()
}

fn has_sweep(store: &Path, name: &str) -> bool {
    plain(name) && store.join("runs").join(name).join("sweep.json").is_file()
}

/// A name that cannot leave runs/.
pub(crate) fn plain(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}

/// Whether `arg` names a pipeline file rather than a run.
fn is_pipeline(arg: &str) -> bool {
    arg.ends_with(".yaml") || arg.ends_with(".yml") || Path::new(arg).is_file()
}

/// Finds what `arg` names. A pipeline file gives its `store:` (unless `store` is given) and
/// its run, or its sweep when it lists `seeds:` (or when only the sweep was recorded). A
/// name is looked up in `store` (default `artifacts`) as a run, then as a sweep. A run that
/// is in progress and has no record yet is an error saying so; one with an older record
/// comes with a note.
pub fn resolve(
    arg: &str,
    store: Option<&Path>,
    registry: &Registry,
) -> Result<Resolved, AnalysisError> {
    let (store_dir, candidates, from_file) = if is_pipeline(arg) {
        let spec = Plan::read_spec(Path::new(arg), registry)
            .map_err(|e| AnalysisError::Other(e.to_string()))?;
        let store_dir = store.map_or(spec.store.clone(), Path::to_path_buf);
        let sweep = Target::Sweep(sweep_name(&spec.name));
        let run = Target::Run(spec.name.clone());
        let candidates = if spec.seeds.is_empty() {
            vec![run, sweep]
        } else {
            vec![sweep, run]
        };
        (store_dir, candidates, Some(arg))
    } else {
        let store_dir = store.map_or(PathBuf::from("artifacts"), Path::to_path_buf);
        (
            store_dir,
            // `NAME-seeds` is a sweep's name: while its members run, it has no record yet.
            if arg.ends_with("-seeds") {
                vec![Target::Sweep(arg.into()), Target::Run(arg.into())]
            } else {
                vec![Target::Run(arg.into()), Target::Sweep(arg.into())]
            },
            None,
        )
    };
    if !Store::exists(&store_dir) {
        return Err(match from_file {
            Some(file) => AnalysisError::Other(format!(
                "{file} keeps its runs in {}, which holds no artifact store yet; run `picie run {file}` first",
                store_dir.display()
            )),
            None => AnalysisError::NotAStore { path: store_dir },
        });
    }
    let wanted = candidates[0].clone();
    // A remote store's records are read from its cache (mirrored when it opens).
    let store = Store::open(&store_dir)?;
    let local = store.root().to_path_buf();
    // Runs in progress hold runs/NAME/RUNNING (a sweep's members are NAME-seedN).
    let in_progress = store.running();
    let running = in_progress
        .iter()
        .find(|(name, _)| match &wanted {
            Target::Run(n) => name == n,
            Target::Sweep(n) => name.starts_with(&format!(
                "{}-seed",
                n.strip_suffix("-seeds").unwrap_or(n.as_str())
            )),
        })
        .map(|(_, who)| who.as_str());
    let found = candidates.into_iter().find(|t| match t {
        Target::Run(n) => has_run(&local, n),
        Target::Sweep(n) => has_sweep(&local, n),
    });
    let mut notes = Vec::new();
    match (found, running) {
        (Some(target), running) => {
            if let Some(h) = running {
                notes.push(format!(
                    "{wanted} is being run now ({h}); this shows what was recorded before it"
                ));
            }
            Ok(Resolved {
                store: store_dir,
                target,
                notes,
            })
        }
        (None, Some(h)) => Err(AnalysisError::Other(format!(
            "{wanted} is in progress ({h}) and has no record yet: its record is written when it ends. Recorded in {}: {}",
            store_dir.display(),
            recorded(&local)
        ))),
        (None, None) => Err(match from_file {
            Some(file) => AnalysisError::Other(format!(
                "{file} names {wanted}, which {} does not hold; run `picie run {file}` first. Recorded there: {}",
                store_dir.display(),
                recorded(&local)
            )),
            None => AnalysisError::NoSuchRun {
                run: arg.into(),
                store: store_dir.clone(),
                available: recorded(&local),
            },
        }),
    }
}
