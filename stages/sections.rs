//! picie's top-level sections of the pipeline file, as the engine sees them: `device:`
//! (global: its class is in every cache key) and `dataset:` (read by the kinds that list
//! it), and the typed accessors stages use.

use std::path::Path;
use std::sync::Arc;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use picie_engine::diag::{self, Diagnostic, Loc};
use picie_engine::{Context, Plan, Registry, Section, SectionDef, StageError};

use picie_core::data::{struct_fields, DatasetConfig, KindConfig, KindReader, KINDS};
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
    read_dataset(node, base_dir).map(|d| Some(Arc::new(DatasetSection(d)) as Arc<dyn Section>))
}

/// Reads a `dataset:` mapping with every problem placed: no or an unknown `kind`, each
/// unknown field (nested ones too), serde's error at its value, then the kind's checks of
/// the values at their fields. Relative paths resolve against `base_dir`.
pub fn read_dataset(node: &Node, base_dir: &Path) -> Result<DatasetConfig, Vec<Diagnostic>> {
    let kinds = KINDS.join(", ");
    let Some(map) = node.as_mapping() else {
        return Err(vec![Diagnostic::new(
            Loc::of(node.span()),
            "`dataset` must be a mapping with a `kind`",
        )
        .hint("e.g. `dataset: {kind: synthetic}`")]);
    };
    let Some(kind_node) = map.get_node("kind") else {
        return Err(vec![Diagnostic::new(
            Loc::of(map.span()),
            "the data set has no `kind`",
        )
        .hint(format!("kinds: {kinds}"))]);
    };
    let Some(kind) = kind_node.as_scalar().map(|s| s.as_str()) else {
        return Err(vec![Diagnostic::new(
            Loc::of(kind_node.span()),
            format!("`kind` must be one of {kinds}"),
        )]);
    };
    let reader = Located {
        map,
        kind,
        base_dir,
    };
    DatasetConfig::read_kind(kind, reader).unwrap_or_else(|| {
        Err(vec![Diagnostic::new(
            Loc::of(kind_node.span()),
            format!("unknown data set kind `{kind}`"),
        )
        .hint(diag::suggest(kind, &KINDS, "kinds"))])
    })
}

/// Reads a kind's settings through the engine's located deserialisation.
struct Located<'a> {
    map: &'a MarkedMappingNode,
    kind: &'a str,
    base_dir: &'a Path,
}

impl KindReader for Located<'_> {
    type Error = Vec<Diagnostic>;

    fn read<T: KindConfig>(self) -> Result<T, Vec<Diagnostic>> {
        let mut rest = self.map.clone();
        rest.remove("kind");
        let what = format!("the `{}` data set", self.kind);
        let (cfg, mut diags) =
            diag::from_mapping_with::<T>(&rest, struct_fields::<T>(), &T::nested(), "field", &what);
        // Values are checked once the fields are right: a check of a half-read mapping
        // would report what the unknown fields already explain.
        let Some(mut cfg) = cfg.filter(|_| diags.is_empty()) else {
            return Err(diags);
        };
        cfg.resolve(self.base_dir);
        for (field, message) in cfg.validate() {
            diags.push(Diagnostic::new(
                diag::locate(self.map, &field),
                format!("bad value for `{field}` of {what}: {message}"),
            ));
        }
        if diags.is_empty() {
            Ok(cfg)
        } else {
            Err(diags)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, base: &str) -> Result<DatasetConfig, Vec<Diagnostic>> {
        let node = marked_yaml::parse_yaml(0, text).unwrap();
        read_dataset(&node, Path::new(base))
    }

    fn issues(text: &str) -> Vec<Diagnostic> {
        read(text, "/base").unwrap_err()
    }

    fn at(d: &Diagnostic) -> (usize, usize) {
        (d.loc.line, d.loc.column)
    }

    #[test]
    fn every_unknown_field_is_listed_with_its_place() {
        let text =
            "kind: folder\nroot: data\nbogus: 1\ntrain:\n  images: a\n  mask: b\nalso_bad: x\n";
        let got = issues(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].message.contains("`bogus`"), "{got:?}");
        assert_eq!(at(&got[0]), (3, 1));
        assert!(got[1].message.contains("`also_bad`"), "{got:?}");
        assert_eq!(got[1].loc.line, 7);
        assert!(got[2].message.contains("`mask`") && got[2].message.contains("`train`"));
        assert_eq!(at(&got[2]), (6, 3));
        // The nearest field is suggested.
        assert!(got[2]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `masks`"));
    }

    #[test]
    fn kind_is_required_and_checked() {
        let got = issues("root: x\n");
        assert!(got[0].message.contains("no `kind`"), "{got:?}");
        let got = issues("kind: pascal\n");
        assert!(got[0].message.contains("unknown data set kind `pascal`"));
        assert_eq!(at(&got[0]), (1, 7));
        let got = issues("kind: cocostuff27\n");
        assert!(got[0].hint.as_deref().unwrap().contains("`coco_stuff27`"));
        let doc = marked_yaml::parse_yaml(0, "dataset: [a]\n").unwrap();
        let seq = doc.as_mapping().unwrap().get_node("dataset").unwrap();
        let got = read_dataset(seq, Path::new("/")).unwrap_err();
        assert!(got[0].message.contains("mapping"), "{got:?}");
    }

    #[test]
    fn type_errors_have_a_place() {
        let got = issues("kind: synthetic\nwidth: wide\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].loc.line, 2, "{got:?}");
        assert!(got[0].message.contains("synthetic"));
    }

    #[test]
    fn missing_required_field() {
        let got = issues("kind: coco_stuff27\n");
        assert!(got[0].message.contains("root"), "{got:?}");
    }

    #[test]
    fn value_checks_point_at_the_field() {
        let got = issues("kind: synthetic\nclasses: 12\nwidth: 4\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .any(|d| d.loc.line == 2 && d.message.contains("classes")));
        assert!(got
            .iter()
            .any(|d| d.loc.line == 3 && d.message.contains("width")));
        let got = issues("kind: cityscapes27\nroot: /cs\nval_splits: []\ntrain_splits: [../x]\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .any(|d| d.loc.line == 4 && d.message.contains("`../x`")));
    }

    #[test]
    fn relative_paths_resolve_against_the_pipeline_folder() {
        let c = read(
            "kind: folder\nroot: data/camvid\nnum_classes: 3\ntrain: {images: train}\n",
            "/pipelines",
        )
        .unwrap();
        assert_eq!(c.canonical()["root"], "/pipelines/data/camvid");
        assert_eq!(
            c.canonical()["train"]["images"],
            "/pipelines/data/camvid/train"
        );
    }
}
