//! The plugin interface: one `Stage` impl per stage kind, registered in one `Registry`.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::Node;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::diag::{Diagnostic, Loc};
use crate::error::StageError;
use crate::section::SectionDef;

/// How data crosses an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Items flow over a bounded channel while both stages run; nothing is stored.
    Stream,
    /// A committed, content-addressed artifact in the store; read after its producer ends.
    Artifact,
}

/// A named input or output of a stage, with its data type (a free name: plugins may add
/// types; an edge is valid when both ends name the same type and mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub ty: &'static str,
    pub mode: Mode,
    pub optional: bool,
    /// An input that stands in for another (`tokens` instead of `batches`): exactly one of
    /// the two must be wired, which the plan checks.
    pub instead_of: Option<&'static str>,
}

impl Port {
    pub const fn stream(name: &'static str, ty: &'static str) -> Self {
        Self {
            name,
            ty,
            mode: Mode::Stream,
            optional: false,
            instead_of: None,
        }
    }
    pub const fn artifact(name: &'static str, ty: &'static str) -> Self {
        Self {
            name,
            ty,
            mode: Mode::Artifact,
            optional: false,
            instead_of: None,
        }
    }
    pub const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
    /// Makes this input and `other` alternatives: both optional, exactly one wired.
    pub const fn instead_of(mut self, other: &'static str) -> Self {
        self.optional = true;
        self.instead_of = Some(other);
        self
    }
}

/// A stream port whose items are `T`. Declaring a port as a constant of this type is the
/// one place that ties its name and type name to the Rust type sent over it: a stage that
/// sends or receives through the constant cannot send or expect another type, and the plan
/// checks that the two ends of an edge name the same type.
pub struct StreamPort<T> {
    pub name: &'static str,
    pub ty: &'static str,
    item: PhantomData<fn() -> T>,
}

impl<T> StreamPort<T> {
    pub const fn new(name: &'static str, ty: &'static str) -> Self {
        Self {
            name,
            ty,
            item: PhantomData,
        }
    }

    /// The port, for [`Stage::inputs`] and [`Stage::outputs`].
    pub const fn port(&self) -> Port {
        Port::stream(self.name, self.ty)
    }
}

/// A bad parameter value, named by its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub field: String,
    pub message: String,
}

impl ParamError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One stage kind. Params come from the YAML `params:` mapping (absent fields take their
/// `Default`); their serialised form, the kind and `VERSION` go into the cache key, so bump
/// `VERSION` whenever a change to `run` changes what it writes.
pub trait Stage: Send + Sized + 'static {
    type Params: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;
    const KIND: &'static str;
    const VERSION: u32;
    const DESCRIPTION: &'static str;

    fn inputs(params: &Self::Params) -> Vec<Port>;
    fn outputs(params: &Self::Params) -> Vec<Port>;
    /// Every bad value at once; the plan reports them with their YAML places.
    fn validate(_params: &Self::Params) -> Vec<ParamError> {
        Vec::new()
    }
    /// The application's top-level sections (e.g. `dataset`) this kind reads: they go into
    /// its cache key, and its context hands them out ([`Context::section`]). Global
    /// sections (see [`SectionDef::global`]) are read by every kind without being listed.
    const SECTIONS: &'static [&'static str] = &[];
    /// Files the params name (param field, path as written) whose contents the output
    /// depends on, e.g. a weights file. Paths are resolved against the pipeline file's folder
    /// and hashed at plan time; the checksums go into the cache key, so replacing the file
    /// re-runs the stage. A missing file is a plan error at that param.
    fn input_files(_params: &Self::Params) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }
    /// Whether the output depends on the pipeline's seed (beyond what the inputs carry).
    /// The seed goes into the cache key only where it does, so that the runs of a
    /// multi-seed sweep share such nodes when their inputs agree.
    fn seeded(_params: &Self::Params) -> bool {
        true
    }
    /// The epoch that goes into a loop node's cache key: by default its own. A kind whose
    /// output repeats with a period (a pool of N augmentation draws) returns the epoch it
    /// repeats, and one whose output depends on its epoch only through its inputs returns
    /// `None`: such nodes of different epochs share one key, so later epochs read what an
    /// earlier one stored. The stage still sees its real epoch in [`Context::epoch`].
    fn key_epoch(_params: &Self::Params, epoch: u32) -> Option<u32> {
        Some(epoch)
    }
    /// Whether a node of this kind can run as N parts, each over its share of the batches
    /// ([`Context::shard`]), that [`Stage::combine`] joins into exactly what one process
    /// writes (see [`crate::shard`]); `Err` says why not (named in the run's log).
    fn shardable(_params: &Self::Params) -> Result<(), String> {
        Err("it does not run in parts".into())
    }
    /// Joins the stored outputs of the parts ([`Context::parts`]) into this node's outputs.
    /// By default each table output is the parts' batches in part order
    /// ([`Context::concat_parts`]); a kind with totals (counts, sums) adds them up itself.
    fn combine(_params: &Self::Params, ctx: &mut Context) -> Result<(), StageError> {
        ctx.concat_parts()
    }
    /// How many rounds of parts a sharded node of this kind takes (1 by default). With R > 1
    /// (an iterative pass such as Lloyd's k-means) round r's parts each store their share's
    /// statistics ([`crate::shard::ROUND_STATS`]), round r's join ([`Stage::combine`],
    /// [`Context::round`] says which) folds them into the state the next round's parts and
    /// join read ([`crate::shard::ROUND_STATE`]), and the last round's join writes the
    /// node's outputs. Every round's parts and join see the node's inputs too.
    fn rounds(_params: &Self::Params) -> u32 {
        1
    }
    fn new(params: Self::Params) -> Self;
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError>;
}

/// A stage kind with its type erased, as the registry holds it.
pub trait Kind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    fn sections(&self) -> &'static [&'static str];
    /// The Rust type implementing it (its module path says where its code lives).
    fn type_name(&self) -> &'static str;
    /// Parses and validates `params:`; errors carry their YAML places.
    fn configure(
        &self,
        params: Option<&Node>,
        at: Loc,
        base_dir: &Path,
    ) -> Result<Arc<dyn Configured>, Vec<Diagnostic>>;
}

/// A stage kind with validated params.
pub trait Configured: Send + Sync {
    /// Canonical params (defaults filled in, keys sorted) for the cache key.
    fn canonical(&self) -> serde_json::Value;
    /// Param field -> {path, blake3} of the files in [`Stage::input_files`].
    fn files(&self) -> serde_json::Value;
    fn inputs(&self) -> Vec<Port>;
    fn outputs(&self) -> Vec<Port>;
    /// See [`Stage::seeded`].
    fn seeded(&self) -> bool;
    /// See [`Stage::key_epoch`].
    fn key_epoch(&self, epoch: u32) -> Option<u32>;
    /// See [`Stage::shardable`].
    fn shardable(&self) -> Result<(), String>;
    /// See [`Stage::rounds`].
    fn rounds(&self) -> u32 {
        1
    }
    fn instantiate(&self) -> Box<dyn Runnable>;
    /// A runnable that joins the parts ([`Stage::combine`]).
    fn combiner(&self) -> Box<dyn Runnable>;
}

pub trait Runnable: Send {
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError>;
}

impl<S: Stage> Runnable for S {
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        Stage::run(self, ctx)
    }
}

struct KindOf<S>(PhantomData<fn() -> S>);

struct ConfiguredOf<S: Stage> {
    params: S::Params,
    canonical: serde_json::Value,
    files: serde_json::Value,
}

impl<S: Stage> Configured for ConfiguredOf<S> {
    fn canonical(&self) -> serde_json::Value {
        self.canonical.clone()
    }
    fn files(&self) -> serde_json::Value {
        self.files.clone()
    }
    fn inputs(&self) -> Vec<Port> {
        S::inputs(&self.params)
    }
    fn outputs(&self) -> Vec<Port> {
        S::outputs(&self.params)
    }
    fn seeded(&self) -> bool {
        S::seeded(&self.params)
    }
    fn key_epoch(&self, epoch: u32) -> Option<u32> {
        S::key_epoch(&self.params, epoch)
    }
    fn shardable(&self) -> Result<(), String> {
        S::shardable(&self.params)
    }
    fn rounds(&self) -> u32 {
        S::rounds(&self.params).max(1)
    }
    fn instantiate(&self) -> Box<dyn Runnable> {
        Box::new(S::new(self.params.clone()))
    }
    fn combiner(&self) -> Box<dyn Runnable> {
        Box::new(CombineOf::<S>(self.params.clone()))
    }
}

struct CombineOf<S: Stage>(S::Params);

impl<S: Stage> Runnable for CombineOf<S> {
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        S::combine(&self.0, ctx)
    }
}

impl<S: Stage> Kind for KindOf<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn description(&self) -> &'static str {
        S::DESCRIPTION
    }
    fn sections(&self) -> &'static [&'static str] {
        S::SECTIONS
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<S>()
    }

    fn configure(
        &self,
        params: Option<&Node>,
        at: Loc,
        base_dir: &Path,
    ) -> Result<Arc<dyn Configured>, Vec<Diagnostic>> {
        let map = params.and_then(Node::as_mapping);
        let (params, mut diags): (S::Params, _) = match map {
            None => (S::Params::default(), Vec::new()),
            Some(map) => {
                match crate::diag::from_mapping(map, "param", &format!("kind `{}`", S::KIND)) {
                    (Some(p), d) => (p, d),
                    (None, d) => return Err(d),
                }
            }
        };
        let field_loc = |field: &str| {
            map.and_then(|m| m.get_node(field))
                .map(|n| Loc::of(n.span()))
                .or(map.map(|m| Loc::of(m.span())))
                .unwrap_or(at)
        };
        for e in S::validate(&params) {
            diags.push(Diagnostic::new(
                field_loc(&e.field),
                format!("bad value for `{}`: {}", e.field, e.message),
            ));
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let mut files = serde_json::Map::new();
        for (field, path) in S::input_files(&params) {
            let full = base_dir.join(&path);
            match crate::store::checksum(&full) {
                Ok(sum) => {
                    files.insert(
                        field.to_string(),
                        serde_json::json!({"path": path, "blake3": sum}),
                    );
                }
                Err(e) => diags.push(Diagnostic::new(
                    field_loc(field),
                    format!("cannot read `{field}` file {}: {e}", full.display()),
                )),
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let canonical = serde_json::to_value(&params).map_err(|e| {
            vec![Diagnostic::new(
                at,
                format!("params of `{}` do not serialise: {e}", S::KIND),
            )]
        })?;
        Ok(Arc::new(ConfiguredOf::<S> {
            params,
            canonical,
            files: serde_json::Value::Object(files),
        }))
    }
}

/// What an application hands the engine: the stage kinds a pipeline may use, the
/// top-level sections it understands, and what identifies the application in cache keys.
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Kind>>,
    sections: Vec<SectionDef>,
    provenance: serde_json::Map<String, serde_json::Value>,
    version: String,
    after_stage: Option<fn()>,
    plan_checks: Vec<PlanCheck>,
}

/// An application's check across a whole plan (see [`Registry::check_plan`]).
pub type PlanCheck = fn(&crate::plan::Plan) -> Vec<crate::plan::PlanProblem>;

impl Default for Registry {
    fn default() -> Self {
        Self {
            kinds: BTreeMap::new(),
            sections: Vec::new(),
            provenance: serde_json::Map::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            after_stage: None,
            plan_checks: Vec::new(),
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind; a later registration of the same name replaces the earlier one.
    pub fn register<S: Stage>(&mut self) -> &mut Self {
        self.kinds
            .insert(S::KIND, Arc::new(KindOf::<S>(PhantomData)));
        self
    }

    /// Adds a top-level section; a later one of the same name replaces the earlier one.
    pub fn section(&mut self, def: SectionDef) -> &mut Self {
        self.sections.retain(|d| d.name != def.name);
        self.sections.push(def);
        self
    }

    /// Fields that go into every node's cache key (library versions, say), and the
    /// application's version recorded in manifests.
    pub fn provenance(
        &mut self,
        version: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> &mut Self {
        self.version = version.to_string();
        self.provenance = fields;
        self
    }

    /// Called on each stage's thread after it finishes (e.g. to return freed memory).
    pub fn after_stage(&mut self, hook: fn()) -> &mut Self {
        self.after_stage = Some(hook);
        self
    }

    /// Adds a check that needs several nodes at once (a network's patch size against the
    /// image size another stage makes, say); its problems are reported with the rest of the
    /// plan's, at the stage and param they name.
    pub fn check_plan(&mut self, check: PlanCheck) -> &mut Self {
        self.plan_checks.push(check);
        self
    }

    pub fn plan_checks(&self) -> &[PlanCheck] {
        &self.plan_checks
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.get(kind)
    }
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn Kind>> {
        self.kinds.values()
    }
    pub fn sections(&self) -> &[SectionDef] {
        &self.sections
    }
    pub fn provenance_fields(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.provenance
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn after_stage_hook(&self) -> Option<fn()> {
        self.after_stage
    }
}
