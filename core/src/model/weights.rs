//! Loading and saving network weights as safetensors.
//!
//! Three key layouts are accepted, per key:
//! - ours: `backbone.conv1.weight`, `decoder.layer1.bias`, ... (what [`save`] writes);
//! - the PiCIE release's checkpoint (`model.state_dict()` of an `nn.DataParallel`):
//!   `module.backbone.*`, `module.decoder.*`;
//! - torchvision's ResNet: `conv1.weight`, `layer1.0.bn1.running_mean`, ... Its `fc.*`
//!   classifier is skipped silently (the backbone has none). A torchvision file has no decoder,
//!   so by default the decoder keeps its initialisation (reported in [`LoadReport::not_loaded`]).
//!
//! Loading is all-or-nothing: every problem (missing keys, unexpected keys, shape
//! mismatches) is collected and reported by name, and the VarStore is left untouched unless
//! everything fits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::ModelError;

/// The key layout a file uses (detected from its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `backbone.*` / `decoder.*`.
    Ours,
    /// The release's `module.backbone.*` / `module.decoder.*`.
    Release,
    /// torchvision's unprefixed ResNet names (backbone only).
    Torchvision,
}

/// Which of the network's variables a file must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// `BackboneOnly` for torchvision-layout files, `Full` otherwise.
    #[default]
    Auto,
    /// Every variable must come from the file.
    Full,
    /// Only `backbone.*` variables (e.g. ImageNet weights); decoder keys in the file are
    /// ignored and the decoder keeps its current values.
    BackboneOnly,
}

/// Options for [`load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadConfig {
    pub scope: Scope,
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub layout: Layout,
    /// Variables whose values came from the file.
    pub loaded: usize,
    /// File keys deliberately not used (torchvision's `fc.*`; decoder keys in backbone-only
    /// loads), sorted.
    pub skipped: Vec<String>,
    /// `*.num_batches_tracked` buffers absent from the file, left as they were: files saved
    /// before PyTorch 0.4.1 (such as torchvision's `resnet18-5c106cde.pth`) lack them, and
    /// PyTorch's own loader tolerates that the same way. Sorted.
    pub defaulted: Vec<String>,
    /// Variables outside the load's scope that kept their values (the decoder, for a
    /// backbone-only load), sorted.
    pub not_loaded: Vec<String>,
}

/// A tensor whose shape differs between file and network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The key in the file.
    pub key: String,
    /// The network variable it maps to.
    pub variable: String,
    pub file_shape: Vec<i64>,
    pub network_shape: Vec<i64>,
}

/// Everything that kept a file from loading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyMismatch {
    /// Network variables the file does not provide (our names), sorted.
    pub missing: Vec<String>,
    /// File keys that match no network variable (the file's names), sorted.
    pub unexpected: Vec<String>,
    pub shapes: Vec<ShapeMismatch>,
}

impl KeyMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

/// Lists at most this many names per category in messages; the error value holds all.
const SHOWN: usize = 40;

fn write_names(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    write!(f, "\n  {} {what}: ", names.len())?;
    let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    write!(f, "{}", shown.join(", "))?;
    if names.len() > SHOWN {
        write!(f, ", ... ({} more)", names.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.missing.is_empty() {
            write_names(f, "missing keys", &self.missing)?;
        }
        if !self.unexpected.is_empty() {
            write_names(f, "unexpected keys", &self.unexpected)?;
        }
        if !self.shapes.is_empty() {
            write!(f, "\n  {} shape mismatches:", self.shapes.len())?;
            for m in self.shapes.iter().take(SHOWN) {
                write!(f, "\n    {}", m.key)?;
                if m.key != m.variable {
                    write!(f, " (-> {})", m.variable)?;
                }
                write!(
                    f,
                    ": file {:?}, network {:?}",
                    m.file_shape, m.network_shape
                )?;
            }
            if self.shapes.len() > SHOWN {
                write!(f, "\n    ... ({} more)", self.shapes.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

fn detect_layout<'a>(keys: impl Iterator<Item = &'a str>) -> Layout {
    let mut layout = Layout::Torchvision;
    for k in keys {
        if k.starts_with("module.") {
            return Layout::Release;
        }
        if k.starts_with("backbone.") || k.starts_with("decoder.") || k.starts_with("head.") {
            layout = Layout::Ours;
        }
    }
    layout
}

/// The network variable a file key is meant for, if any: the release's `module.` prefix is
/// dropped; unprefixed (torchvision) names go under `backbone.` when the network has one.
pub(crate) fn target<'v>(key: &str, vars: &'v HashMap<String, Tensor>) -> Option<&'v str> {
    let stripped = key.strip_prefix("module.").unwrap_or(key);
    [stripped.to_string(), format!("backbone.{stripped}")]
        .into_iter()
        .find_map(|cand| vars.get_key_value(&cand).map(|(k, _)| k.as_str()))
}

/// How one network's file keys fill its variables; [`load_tensors`] (ResNet + decoder) and
/// the ViT's loader share [`load_with`] through it, so both report problems the same way.
pub(crate) trait KeyRules {
    /// The variable a file key fills, if any.
    fn variable<'v>(&self, key: &str, vars: &'v HashMap<String, Tensor>) -> Option<&'v str>;
    /// A key that fills no variable on purpose and is skipped (torchvision's `fc.*`).
    fn ignored(&self, key: &str) -> bool;
    /// Whether this load fills the variable; the others keep their values (`not_loaded`)
    /// and file keys for them are skipped.
    fn in_scope(&self, variable: &str) -> bool;
    /// A variable the file may lack, left as it is (`defaulted`).
    fn may_default(&self, variable: &str) -> bool;
}

/// The network's rules: the layouts of the module docs, and the load's scope. A ViT
/// backbone's file (DINO's unprefixed names) loads like a torchvision one: the backbone
/// only, with DINOv2's training-only `mask_token` skipped; the head keeps its values.
struct ResNetRules {
    layout: Layout,
    backbone_only: bool,
}

impl KeyRules for ResNetRules {
    fn variable<'v>(&self, key: &str, vars: &'v HashMap<String, Tensor>) -> Option<&'v str> {
        target(key, vars)
    }
    fn ignored(&self, key: &str) -> bool {
        self.layout == Layout::Torchvision && (key.starts_with("fc.") || key == "mask_token")
    }
    fn in_scope(&self, variable: &str) -> bool {
        // A standalone backbone's variables have no prefix: all are in scope.
        !self.backbone_only || !(variable.starts_with("decoder.") || variable.starts_with("head."))
    }
    fn may_default(&self, variable: &str) -> bool {
        variable.ends_with(".num_batches_tracked")
    }
}

/// What [`load_with`] did: [`LoadReport`] without the layout, each list sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    /// Variables whose values came from the file.
    pub loaded: usize,
    /// File keys deliberately not used.
    pub skipped: Vec<String>,
    /// Variables the file lacked and that kept their values (see [`KeyRules::may_default`]).
    pub defaulted: Vec<String>,
    /// Variables outside the load's scope, which kept their values.
    pub not_loaded: Vec<String>,
}

/// Reads a safetensors file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    Tensor::read_safetensors(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Names `path` as the source of a key mismatch (the loaders see tensors, not files).
pub(crate) fn from_file<T>(path: &Path, r: Result<T, ModelError>) -> Result<T, ModelError> {
    r.map_err(|e| match e {
        ModelError::Checkpoint { mismatch, .. } => ModelError::Checkpoint {
            source_name: path.display().to_string(),
            mismatch,
        },
        e => e,
    })
}

/// Loads `path` (safetensors) into `vs`. See the module docs for the accepted layouts.
pub fn load(
    vs: &VarStore,
    path: impl AsRef<Path>,
    cfg: &LoadConfig,
) -> Result<LoadReport, ModelError> {
    let path = path.as_ref();
    from_file(path, load_tensors(vs, read_file(path)?, cfg))
}

/// [`load`] for tensors already in memory (e.g. converted by the caller).
pub fn load_tensors(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    cfg: &LoadConfig,
) -> Result<LoadReport, ModelError> {
    let layout = detect_layout(tensors.iter().map(|(k, _)| k.as_str()));
    let backbone_only = match cfg.scope {
        Scope::Auto => layout == Layout::Torchvision,
        Scope::Full => false,
        Scope::BackboneOnly => true,
    };
    let done = load_with(
        vs,
        tensors,
        &ResNetRules {
            layout,
            backbone_only,
        },
    )?;
    Ok(LoadReport {
        layout,
        loaded: done.loaded,
        skipped: done.skipped,
        defaulted: done.defaulted,
        not_loaded: done.not_loaded,
    })
}

/// Fills the variables of `vs` from `tensors` under `rules`, all or nothing: every missing
/// key, unexpected key and shape mismatch is collected into one error, and `vs` is left
/// untouched unless everything fits.
pub(crate) fn load_with(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    rules: &impl KeyRules,
) -> Result<Loaded, ModelError> {
    let vars = vs.variables();
    let mut mismatch = KeyMismatch::default();
    let mut skipped = Vec::new();
    // variable -> (file key, tensor); BTreeMap for a deterministic copy order.
    let mut assigned: BTreeMap<&str, (String, Tensor)> = BTreeMap::new();
    for (key, tensor) in tensors {
        match rules.variable(&key, &vars) {
            Some(var) if !rules.in_scope(var) => skipped.push(key),
            Some(var) => {
                let (file_shape, network_shape) = (tensor.size(), vars[var].size());
                if let Some((first, _)) = assigned.get(var) {
                    // Two spellings of one variable (e.g. `conv1.weight` and
                    // `backbone.conv1.weight`): ambiguous, so refuse rather than pick one.
                    mismatch
                        .unexpected
                        .push(format!("{key} (duplicate of {first})"));
                } else if file_shape != network_shape {
                    mismatch.shapes.push(ShapeMismatch {
                        key,
                        variable: var.to_string(),
                        file_shape,
                        network_shape,
                    });
                } else {
                    assigned.insert(var, (key, tensor));
                }
            }
            None if rules.ignored(&key) => skipped.push(key),
            None => mismatch.unexpected.push(key),
        }
    }

    let mut defaulted = Vec::new();
    let mut not_loaded = Vec::new();
    let shape_failed: Vec<&str> = mismatch
        .shapes
        .iter()
        .map(|m| m.variable.as_str())
        .collect();
    for name in vars.keys() {
        if assigned.contains_key(name.as_str()) || shape_failed.contains(&name.as_str()) {
            continue;
        }
        if !rules.in_scope(name) {
            not_loaded.push(name.clone());
        } else if rules.may_default(name) {
            defaulted.push(name.clone());
        } else {
            mismatch.missing.push(name.clone());
        }
    }
    if !mismatch.is_empty() {
        mismatch.missing.sort();
        mismatch.unexpected.sort();
        mismatch.shapes.sort_by(|a, b| a.key.cmp(&b.key));
        return Err(ModelError::Checkpoint {
            source_name: "tensors".into(),
            mismatch: Box::new(mismatch),
        });
    }

    // Everything fits: copy, converting dtype (e.g. f16 files) and device to the variable's.
    tch::no_grad(|| -> Result<(), ModelError> {
        for (var, (key, src)) in &assigned {
            let mut dst = vars[*var].shallow_clone();
            dst.f_copy_(src).map_err(|e| {
                ModelError::Torch(tch::TchError::Torch(format!(
                    "copying {key} into {var}: {e}"
                )))
            })?;
        }
        Ok(())
    })?;
    skipped.sort();
    defaulted.sort();
    not_loaded.sort();
    Ok(Loaded {
        loaded: assigned.len(),
        skipped,
        defaulted,
        not_loaded,
    })
}

/// Writes every variable of `vs` to `path` as safetensors, under our names (`backbone.*`,
/// `decoder.*`), on the CPU, in the variables' own dtypes.
pub fn save(vs: &VarStore, path: impl AsRef<Path>) -> Result<(), ModelError> {
    save_as(vs, path, Layout::Ours)
}

/// [`save`] under another layout: `Release` prefixes `module.` (for the release's code);
/// `Torchvision` writes the backbone alone under torchvision's names.
pub fn save_as(vs: &VarStore, path: impl AsRef<Path>, layout: Layout) -> Result<(), ModelError> {
    let path = path.as_ref();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in vs.variables() {
        let key = match layout {
            Layout::Ours => name,
            Layout::Release => format!("module.{name}"),
            Layout::Torchvision => match name.strip_prefix("backbone.") {
                Some(rest) => rest.to_string(),
                None if name.starts_with("decoder.") || name.starts_with("head.") => continue,
                // A standalone backbone VarStore already uses torchvision's names.
                None => name,
            },
        };
        // safetensors wants contiguous host memory; detach so no graph is kept alive.
        named.push((key, t.f_to_device(Device::Cpu)?.f_contiguous()?.detach()));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path).map_err(|source| ModelError::Write {
        path: PathBuf::from(path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetConfig, PicieNet};
    use tch::Kind;

    fn net() -> (VarStore, PicieNet) {
        let vs = VarStore::new(Device::Cpu);
        let net = PicieNet::new(&vs.root(), &NetConfig::default()).unwrap();
        (vs, net)
    }

    /// All variables of `vs`, as owned copies, under names rewritten by `rename`.
    fn dump(vs: &VarStore, rename: impl Fn(&str) -> Option<String>) -> Vec<(String, Tensor)> {
        vs.variables()
            .into_iter()
            .filter_map(|(k, v)| rename(&k).map(|k| (k, v.copy())))
            .collect()
    }

    fn same_values(a: &VarStore, b: &VarStore, prefix: &str) -> bool {
        let bv = b.variables();
        a.variables()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .all(|(k, v)| v.to_kind(Kind::Double).equal(&bv[k].to_kind(Kind::Double)))
    }

    #[test]
    fn save_then_load_round_trips() {
        let (a, _na) = net();
        let (b, _nb) = net();
        // Make a buffer non-default so that buffers are seen to travel too.
        let _ = a.variables()["backbone.bn1.num_batches_tracked"]
            .shallow_clone()
            .fill_(7);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        save(&a, &file).unwrap();
        let rep = load(&b, &file, &LoadConfig::default()).unwrap();
        assert_eq!(rep.layout, Layout::Ours);
        assert_eq!(rep.loaded, a.variables().len());
        assert!(rep.skipped.is_empty() && rep.defaulted.is_empty() && rep.not_loaded.is_empty());
        assert!(same_values(&a, &b, ""));
        assert_eq!(
            b.variables()["backbone.bn1.num_batches_tracked"].int64_value(&[]),
            7
        );

        // The release layout round-trips as well.
        let rel = dir.path().join("r.safetensors");
        save_as(&a, &rel, Layout::Release).unwrap();
        let (c, _nc) = net();
        let rep = load(&c, &rel, &LoadConfig::default()).unwrap();
        assert_eq!(rep.layout, Layout::Release);
        assert!(same_values(&a, &c, ""));
    }

    #[test]
    fn torchvision_layout_loads_the_backbone_and_skips_fc() {
        let (a, _na) = net();
        let (b, _nb) = net();
        let mut tensors = dump(&a, |k| k.strip_prefix("backbone.").map(str::to_string));
        tensors.push((
            "fc.weight".into(),
            Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)),
        ));
        tensors.push((
            "fc.bias".into(),
            Tensor::zeros([1000], (Kind::Float, Device::Cpu)),
        ));
        // Old torchvision files predate num_batches_tracked.
        tensors.retain(|(k, _)| k != "layer1.0.bn1.num_batches_tracked");
        let rep = load_tensors(&b, tensors, &LoadConfig::default()).unwrap();
        assert_eq!(rep.layout, Layout::Torchvision);
        assert_eq!(rep.skipped, ["fc.bias", "fc.weight"]);
        assert_eq!(rep.defaulted, ["backbone.layer1.0.bn1.num_batches_tracked"]);
        assert_eq!(rep.not_loaded.len(), 8, "{:?}", rep.not_loaded);
        assert!(rep.not_loaded.iter().all(|k| k.starts_with("decoder.")));
        assert!(same_values(&a, &b, "backbone.conv1"));
        assert!(same_values(&a, &b, "backbone.layer4"));
        assert!(
            !same_values(&a, &b, "decoder."),
            "decoder keeps its own init"
        );

        // Asking for the full network from a backbone-only file names the decoder keys.
        let tensors = dump(&a, |k| k.strip_prefix("backbone.").map(str::to_string));
        let cfg = LoadConfig { scope: Scope::Full };
        let Err(ModelError::Checkpoint { mismatch, .. }) = load_tensors(&b, tensors, &cfg) else {
            panic!("expected a checkpoint error")
        };
        assert_eq!(mismatch.missing.len(), 8);
        assert!(mismatch
            .missing
            .contains(&"decoder.layer1.weight".to_string()));
    }

    #[test]
    fn problems_are_reported_by_name_and_nothing_is_loaded() {
        let (a, _na) = net();
        let (b, _nb) = net();
        let before = b.variables()["backbone.conv1.weight"].copy();
        let mut tensors = dump(&a, |k| Some(format!("module.{k}")));
        tensors.retain(|(k, _)| {
            k != "module.backbone.layer2.1.conv2.weight" && k != "module.decoder.layer3.bias"
        });
        tensors.push((
            "module.classifier1.weight".into(),
            Tensor::zeros([27, 128, 1, 1], (Kind::Float, Device::Cpu)),
        ));
        // fc.* is only skipped for torchvision files; here it is unexpected.
        tensors.push((
            "fc.bias".into(),
            Tensor::zeros([1000], (Kind::Float, Device::Cpu)),
        ));
        for (k, t) in tensors.iter_mut() {
            if k == "module.decoder.layer1.weight" {
                *t = Tensor::zeros([256, 2048, 1, 1], (Kind::Float, Device::Cpu));
            }
        }
        let err = load_tensors(&b, tensors, &LoadConfig::default()).unwrap_err();
        let msg = err.to_string();
        let ModelError::Checkpoint { mismatch, .. } = err else {
            panic!("expected a checkpoint error, got {msg}")
        };
        assert_eq!(
            mismatch.missing,
            ["backbone.layer2.1.conv2.weight", "decoder.layer3.bias"]
        );
        assert_eq!(
            mismatch.unexpected,
            ["fc.bias", "module.classifier1.weight"]
        );
        assert_eq!(
            mismatch.shapes,
            [ShapeMismatch {
                key: "module.decoder.layer1.weight".into(),
                variable: "decoder.layer1.weight".into(),
                file_shape: vec![256, 2048, 1, 1],
                network_shape: vec![128, 512, 1, 1],
            }]
        );
        for needle in [
            "backbone.layer2.1.conv2.weight",
            "decoder.layer3.bias",
            "module.classifier1.weight",
            "module.decoder.layer1.weight",
            "[256, 2048, 1, 1]",
            "[128, 512, 1, 1]",
        ] {
            assert!(msg.contains(needle), "{needle} not in: {msg}");
        }
        let after = b.variables()["backbone.conv1.weight"].shallow_clone();
        assert!(before.equal(&after), "a failed load changes nothing");
    }

    #[test]
    fn duplicate_spellings_and_bad_files_are_errors() {
        let (a, _na) = net();
        let mut tensors = dump(&a, |k| Some(k.to_string()));
        tensors.push((
            "conv1.weight".into(),
            a.variables()["backbone.conv1.weight"].copy(),
        ));
        let err = load_tensors(&a, tensors, &LoadConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("conv1.weight (duplicate of backbone.conv1.weight)"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file").unwrap();
        let err = load(&a, &junk, &LoadConfig::default()).unwrap_err();
        assert!(matches!(err, ModelError::Read { .. }));
        assert!(err.to_string().contains("junk.safetensors"), "{err}");
        let err = load(
            &a,
            dir.path().join("absent.safetensors"),
            &LoadConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ModelError::Read { .. }), "{err}");
    }

    #[test]
    fn half_precision_files_are_converted() {
        let (a, _na) = net();
        let (b, _nb) = net();
        let tensors = dump(&a, |k| Some(k.to_string()))
            .into_iter()
            .map(|(k, t)| {
                let t = if t.is_floating_point() {
                    t.to_kind(Kind::Half)
                } else {
                    t
                };
                (k, t)
            })
            .collect();
        load_tensors(&b, tensors, &LoadConfig::default()).unwrap();
        let w = b.variables()["backbone.conv1.weight"].shallow_clone();
        assert_eq!(w.kind(), Kind::Float);
        let diff = (w - a.variables()["backbone.conv1.weight"].shallow_clone())
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-2, "{diff}");
    }
}
