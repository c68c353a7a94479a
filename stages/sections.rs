//! picie's top-level sections of the pipeline file, as the engine sees them: `device:`
//! (global: its class is in every cache key) and `dataset:` (read by the kinds that list
//! it), and the typed accessors stages use.

use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;
use picie_engine::diag::{Diagnostic, Loc};
use picie_engine::{Context, Plan, Registry, Section, SectionDef, StageError};

use picie_core::data::DatasetConfig;
use picie_core::device::{Device, DeviceSpec};

pub const DEVICE: &str = "device";
pub const DATASET: &str = "dataset";

/// `device:` as the engine holds it.
#[derive(Debug)]
pub struct DeviceSection(pub Device);

impl Section for DeviceSection {
    /// The class, not the index: GPU 0 and GPU 1 share a cache (see [`Device::class`]).
    fn canonical(&self) -> serde_json::Value {
        self.0.class().into()
    }
    fn describe(&self) -> String {
        self.0.to_string()
    }
}

/// `dataset:` as the engine holds it.
#[derive(Debug)]
pub struct DatasetSection(pub DatasetConfig);

impl Section for DatasetSection {
    fn canonical(&self) -> serde_json::Value {
        self.0.canonical()
    }
}

/// The data set a planned pipeline names, if any.
pub fn dataset_of(plan: &Plan) -> Option<&DatasetConfig> {
    plan.section::<DatasetSection>(DATASET).map(|d| &d.0)
}

fn parse_device(
    node: Option<&Node>,
    _: &Path,
) -> Result<Option<Arc<dyn Section>>, Vec<Diagnostic>> {
    let loc = node.map_or(Loc { line: 1, column: 1 }, |n| Loc::of(n.span()));
    let spec = match node {
        None => DeviceSpec::Auto,
        Some(n) => {
            let Some(s) = n.as_scalar() else {
                return Err(vec![Diagnostic::new(
                    loc,
                    "`device` must be a single value",
                )]);
            };
            s.as_str()
                .parse::<DeviceSpec>()
                .map_err(|e| vec![Diagnostic::new(loc, e).hint("auto picks CUDA when present")])?
        }
    };
    spec.resolve()
        .map(|d| Some(Arc::new(DeviceSection(d)) as Arc<dyn Section>))
        .map_err(|e| vec![Diagnostic::new(loc, e)])
}

fn parse_dataset(
    node: Option<&Node>,
    base_dir: &Path,
) -> Result<Option<Arc<dyn Section>>, Vec<Diagnostic>> {
    let Some(node) = node else { return Ok(None) };
    if node.as_mapping().is_none() {
        return Err(vec![Diagnostic::new(
            Loc::of(node.span()),
            "`dataset` must be a mapping",
        )
        .hint("e.g. `dataset: {kind: synthetic}`")]);
    }
    DatasetConfig::from_node(node, base_dir)
        .map(|d| Some(Arc::new(DatasetSection(d)) as Arc<dyn Section>))
        .map_err(|issues| {
            issues
                .into_iter()
                .map(|i| {
                    Diagnostic::new(
                        Loc {
                            line: i.line,
                            column: i.column,
                        },
                        format!("dataset: {}", i.message),
                    )
                })
                .collect()
        })
}

/// Registers picie's sections, the versions that go into every cache key, and the memory
/// hook, on a registry of stage kinds.
pub fn register(r: &mut Registry) {
    r.section(SectionDef::new(DEVICE, "the device", "", parse_device).global())
        .section(SectionDef::new(
            DATASET,
            "the data set",
            "add e.g. `dataset: {kind: synthetic}` at the top level",
            parse_dataset,
        ));
    let mut fields = serde_json::Map::new();
    fields.insert("picie".into(), env!("CARGO_PKG_VERSION").into());
    fields.insert(
        "libtorch".into(),
        picie_core::device::libtorch_version().into(),
    );
    r.provenance(env!("CARGO_PKG_VERSION"), fields)
        .after_stage(crate::memory::release_free_memory);
}

/// What picie's stages read from their context beyond what the engine gives every stage.
pub trait PicieContext {
    /// The device the run resolved `device:` to.
    fn device(&self) -> Device;
    /// The pipeline's `dataset:` (for kinds whose `SECTIONS` list it).
    fn dataset(&self) -> Result<&DatasetConfig, StageError>;
}

impl PicieContext for Context {
    fn device(&self) -> Device {
        // Global: the plan always has it (it defaults to `auto`).
        self.section::<DeviceSection>(DEVICE)
            .map_or(Device::Cpu, |d| d.0)
    }
    fn dataset(&self) -> Result<&DatasetConfig, StageError> {
        self.section::<DatasetSection>(DATASET).map(|d| &d.0)
    }
}
