//! Helpers for tests of stage kinds, here and in applications: plan and run a pipeline
//! written into a temp folder, with its store beside it.

use std::path::PathBuf;

use crate::exec::{Outcome, RunOptions, RunReport};
use crate::store::Lookup;
use crate::{Error, Plan, Registry, Store};

/// A temp folder with a pipeline file and its store.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
}

impl Fixture {
    pub fn new(registry: Registry) -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp folder"),
            registry,
        }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pipeline.yaml")
    }
    pub fn write(&self, yaml: &str) -> PathBuf {
        std::fs::write(self.path(), yaml).expect("pipeline file written");
        self.path()
    }
    pub fn plan(&self, yaml: &str) -> Result<Plan, Error> {
        Plan::load(&self.write(yaml), &self.registry)
    }
    pub fn store(&self) -> Store {
        Store::open(&self.dir.path().join("store")).expect("store opens")
    }
    pub fn run_with(&self, yaml: &str, opts: &RunOptions) -> Result<(Plan, RunReport), Error> {
        let plan = self.plan(yaml)?;
        let report = crate::run(&plan, &self.store(), opts)?;
        Ok((plan, report))
    }
    pub fn run(&self, yaml: &str) -> Result<(Plan, RunReport), Error> {
        self.run_with(yaml, &RunOptions::default())
    }
    /// A node's committed artifact output.
    pub fn artifact(&self, plan: &Plan, node: &str, output: &str) -> crate::artifact::Artifact {
        let i = plan
            .index_of(node)
            .unwrap_or_else(|| panic!("no node {node}"));
        let key = &plan.nodes[i].output_keys[output];
        match self.store().lookup(key) {
            Lookup::Valid(a) => *a,
            other => panic!("{node}.{output}: {other:?}"),
        }
    }
}

/// Names of the nodes that ran in a report, sorted.
pub fn ran(report: &RunReport) -> Vec<String> {
    report
        .nodes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ran { .. }))
        .map(|(n, _)| n.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
