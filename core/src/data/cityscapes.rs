//! Cityscapes-27: Cityscapes' labelIds 7..=33 as classes 0..=26, every
//! other id (0..=6 and license plate, -1 stored as 255) ignored, as PiCIE's
//! release evaluates it.
//!
//! Layout under `root`: `leftImg8bit/{split}/{city}/*_leftImg8bit.png`, with
//! labels in `gtFine/{split}/{city}/*_gtFine_labelIds.png` (the official
//! layout) or `annotations/gtFine/...` (the release's). A split without a
//! label folder (train_extra has only coarse labels) has no masks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::KindConfig;
use super::io::{list_dirs, list_files, missing_mask};
use super::paired::{Entry, LabelMap, PairedDataset};
use super::{ClassInfo, DataError, Split};

/// Settings of Cityscapes-27. `root` resolves against the pipeline file's
/// folder.
///
/// The defaults are the release's protocol (train on `test` + `train_extra`,
/// evaluate on `val` + `train`); the standard one is
/// `train_splits: [train]`, `val_splits: [val]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityscapesConfig {
    pub root: PathBuf,
    #[serde(default = "release_train")]
    pub train_splits: Vec<String>,
    #[serde(default = "release_val")]
    pub val_splits: Vec<String>,
    /// Leave out (and report) unusable files instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

fn release_train() -> Vec<String> {
    vec!["test".into(), "train_extra".into()]
}

fn release_val() -> Vec<String> {
    vec!["val".into(), "train".into()]
}

/// The 27 classes: (labelId, name, colour, has instances), from
/// cityscapesScripts' `labels.py`.
pub const CITYSCAPES27_LABEL_IDS: [(u8, &str, [u8; 3], bool); 27] = [
    (7, "road", [128, 64, 128], false),
    (8, "sidewalk", [244, 35, 232], false),
    (9, "parking", [250, 170, 160], false),
    (10, "rail track", [230, 150, 140], false),
    (11, "building", [70, 70, 70], false),
    (12, "wall", [102, 102, 156], false),
    (13, "fence", [190, 153, 153], false),
    (14, "guard rail", [180, 165, 180], false),
    (15, "bridge", [150, 100, 100], false),
    (16, "tunnel", [150, 120, 90], false),
    (17, "pole", [153, 153, 153], false),
    (18, "polegroup", [153, 153, 153], false),
    (19, "traffic light", [250, 170, 30], false),
    (20, "traffic sign", [220, 220, 0], false),
    (21, "vegetation", [107, 142, 35], false),
    (22, "terrain", [152, 251, 152], false),
    (23, "sky", [70, 130, 180], false),
    (24, "person", [220, 20, 60], true),
    (25, "rider", [255, 0, 0], true),
    (26, "car", [0, 0, 142], true),
    (27, "truck", [0, 0, 70], true),
    (28, "bus", [0, 60, 100], true),
    (29, "caravan", [0, 0, 90], true),
    (30, "trailer", [0, 0, 110], true),
    (31, "train", [0, 80, 100], true),
    (32, "motorcycle", [0, 0, 230], true),
    (33, "bicycle", [119, 11, 32], true),
];

const FIRST_ID: u16 = 7;
const IGNORE: u16 = 255;
const IMAGE_SUFFIX: &str = "_leftImg8bit.png";
const LABEL_SUFFIX: &str = "_gtFine_labelIds.png";

pub(crate) fn cityscapes27_classes() -> Vec<ClassInfo> {
    CITYSCAPES27_LABEL_IDS
        .iter()
        .map(|&(_, name, colour, thing)| ClassInfo {
            name: name.into(),
            colour,
            is_thing: Some(thing),
        })
        .collect()
}

fn label_map() -> LabelMap {
    // 8-bit ids: all valid, most ignored; wider values are not labelIds.
    let lut = (0..256u16)
        .map(|v| {
            Some(if (FIRST_ID..FIRST_ID + 27).contains(&v) {
                v - FIRST_ID
            } else {
                IGNORE
            })
        })
        .collect();
    LabelMap {
        lut,
        detail: "which is not a Cityscapes labelId (0..=255)".into(),
    }
}

fn valid_split_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl KindConfig for CityscapesConfig {
    fn resolve(&mut self, base_dir: &Path) {
        self.root = base_dir.join(&self.root);
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (field, splits) in [
            ("train_splits", &self.train_splits),
            ("val_splits", &self.val_splits),
        ] {
            if splits.is_empty() {
                out.push((field.into(), "name at least one split".into()));
            }
            for s in splits.iter().filter(|s| !valid_split_name(s)) {
                out.push((field.into(), format!("`{s}` is not a split folder name")));
            }
        }
        out
    }
}

impl CityscapesConfig {
    /// The label folder of `split`, if the data set has one.
    fn label_dir(&self, split: &str) -> Option<PathBuf> {
        [
            self.root.join("gtFine").join(split),
            self.root.join("annotations/gtFine").join(split),
        ]
        .into_iter()
        .find(|p| p.is_dir())
    }

    pub(crate) fn open(&self, split: Split) -> Result<PairedDataset, DataError> {
        let splits = match split {
            Split::Train => &self.train_splits,
            Split::Val => &self.val_splits,
        };
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for s in splits {
            let img_root = self.root.join("leftImg8bit").join(s);
            let labels = self.label_dir(s);
            for city in list_dirs(&img_root, "image")? {
                let city_name = city.file_name().map(PathBuf::from).unwrap_or_default();
                for image in list_files(&city, "image", &["png"])? {
                    let name = image
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let Some(id) = name.strip_suffix(IMAGE_SUFFIX) else {
                        continue;
                    };
                    let id = id.to_string();
                    let mask = match &labels {
                        None => None,
                        Some(dir) => {
                            let m = dir.join(&city_name).join(format!("{id}{LABEL_SUFFIX}"));
                            if !m.is_file() {
                                missing_mask(image, m, self.skip_bad, &mut skipped)?;
                                continue;
                            }
                            Some(m)
                        }
                    };
                    entries.push(Entry { id, image, mask });
                }
            }
        }
        let folder = match splits.as_slice() {
            [one] => self.root.join("leftImg8bit").join(one),
            _ => self.root.join("leftImg8bit"),
        };
        PairedDataset::build(
            entries,
            cityscapes27_classes(),
            IGNORE,
            label_map(),
            self.skip_bad,
            skipped,
            &folder,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_yaml, DatasetConfig};
    use super::*;
    use image::{GrayImage, Luma, RgbImage};

    /// labelId -> class (255: ignored), written out from `labels.py`.
    const EXPECTED: [(u16, u16); 36] = [
        (0, 255),   // unlabeled
        (1, 255),   // ego vehicle
        (2, 255),   // rectification border
        (3, 255),   // out of roi
        (4, 255),   // static
        (5, 255),   // dynamic
        (6, 255),   // ground
        (7, 0),     // road
        (8, 1),     // sidewalk
        (9, 2),     // parking
        (10, 3),    // rail track
        (11, 4),    // building
        (12, 5),    // wall
        (13, 6),    // fence
        (14, 7),    // guard rail
        (15, 8),    // bridge
        (16, 9),    // tunnel
        (17, 10),   // pole
        (18, 11),   // polegroup
        (19, 12),   // traffic light
        (20, 13),   // traffic sign
        (21, 14),   // vegetation
        (22, 15),   // terrain
        (23, 16),   // sky
        (24, 17),   // person
        (25, 18),   // rider
        (26, 19),   // car
        (27, 20),   // truck
        (28, 21),   // bus
        (29, 22),   // caravan
        (30, 23),   // trailer
        (31, 24),   // train
        (32, 25),   // motorcycle
        (33, 26),   // bicycle
        (34, 255),  // not a label
        (255, 255), // license plate (-1)
    ];

    #[test]
    fn label_ids_map_entry_by_entry() {
        let map = label_map();
        for (id, class) in EXPECTED {
            assert_eq!(map.lut[usize::from(id)], Some(class), "labelId {id}");
        }
        for v in 34..256 {
            assert_eq!(map.lut[v], Some(255), "labelId {v}");
        }
        let classes = cityscapes27_classes();
        assert_eq!(classes.len(), 27);
        assert_eq!(classes[0].name, "road");
        assert_eq!(classes[16].name, "sky");
        assert_eq!(classes[26].name, "bicycle");
        assert_eq!(classes[19].colour, [0, 0, 142]);
        assert_eq!(
            classes.iter().filter(|c| c.is_thing == Some(true)).count(),
            10
        );
        for (i, (id, ..)) in CITYSCAPES27_LABEL_IDS.iter().enumerate() {
            assert_eq!(usize::from(*id), i + 7);
        }
    }

    /// Splits `train` (cities a, b; labels under `labels`) and `train_extra`
    /// (no labels), 4x2 images.
    fn fixture(labels: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (split, city, n, with_labels) in [
            ("train", "aachen", 2, true),
            ("train", "bremen", 1, true),
            ("train_extra", "zurich", 2, false),
        ] {
            let img = d.path().join("leftImg8bit").join(split).join(city);
            std::fs::create_dir_all(&img).unwrap();
            let gt = d.path().join(labels).join(split).join(city);
            if with_labels {
                std::fs::create_dir_all(&gt).unwrap();
            }
            for i in 0..n {
                let id = format!("{city}_000000_{i:06}");
                RgbImage::new(4, 2)
                    .save(img.join(format!("{id}_leftImg8bit.png")))
                    .unwrap();
                if with_labels {
                    let ids = [[0u8, 7, 33, 34], [23, 26, 6, 255]];
                    GrayImage::from_fn(4, 2, |x, y| Luma([ids[y as usize][x as usize]]))
                        .save(gt.join(format!("{id}_gtFine_labelIds.png")))
                        .unwrap();
                    // Other gtFine files sit beside it and are not read.
                    GrayImage::new(4, 2)
                        .save(gt.join(format!("{id}_gtFine_instanceIds.png")))
                        .unwrap();
                }
            }
            std::fs::write(img.join("README.txt"), "not an image").unwrap();
        }
        d
    }

    fn config(root: &Path, val: &str, extra: &str) -> DatasetConfig {
        let text = format!(
            "kind: cityscapes27\nroot: {}\ntrain_splits: [train_extra]\nval_splits: [{val}]\n{extra}",
            root.display()
        );
        from_yaml(&text, Path::new("/")).unwrap()
    }

    #[test]
    fn reads_both_layouts() {
        for labels in ["gtFine", "annotations/gtFine"] {
            let d = fixture(labels);
            let cfg = config(d.path(), "train", "");
            let val = cfg.open(Split::Val).unwrap();
            assert_eq!(val.len(), 3);
            assert_eq!(val.id(0), "aachen_000000_000000");
            assert_eq!(val.id(2), "bremen_000000_000000");
            assert!(val.has_masks());
            let m = val.mask(2).unwrap().unwrap();
            assert_eq!(m.data, [255, 0, 26, 255, 16, 19, 255, 255]);
            assert_eq!(val.image(0).unwrap().dimensions(), (4, 2));
            let train = cfg.open(Split::Train).unwrap();
            assert_eq!(train.len(), 2);
            assert!(!train.has_masks());
            assert!(train.mask(0).unwrap().is_none());
        }
    }

    #[test]
    fn release_protocol_is_the_default() {
        let c = from_yaml("kind: cityscapes27\nroot: /cs\n", Path::new("/")).unwrap();
        let DatasetConfig::Cityscapes27(c) = c else {
            panic!()
        };
        assert_eq!(c.train_splits, ["test", "train_extra"]);
        assert_eq!(c.val_splits, ["val", "train"]);
        let e = from_yaml(
            "kind: cityscapes27\nroot: /cs\nval_splits: []\ntrain_splits: [../x]\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("val_splits:")), "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.starts_with("train_splits") && m.contains("`../x`")),
            "{e:?}"
        );
    }

    #[test]
    fn bad_inputs_name_their_files() {
        let d = fixture("gtFine");
        let gt = d.path().join("gtFine/train/aachen");
        std::fs::remove_file(gt.join("aachen_000000_000001_gtFine_labelIds.png")).unwrap();
        let e = config(d.path(), "train", "")
            .open(Split::Val)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("aachen_000000_000001_leftImg8bit.png"),
            "{e}"
        );
        let ds = config(d.path(), "train", "skip_bad: true\n")
            .open(Split::Val)
            .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.skipped().len(), 1);
        // A size mismatch.
        GrayImage::new(4, 3)
            .save(gt.join("aachen_000000_000000_gtFine_labelIds.png"))
            .unwrap();
        let e = config(d.path(), "train", "skip_bad: true\n")
            .open(Split::Val)
            .unwrap();
        assert_eq!(e.len(), 1);
        assert!(e.skipped()[1].reason.contains("4x3"));
        // A split folder that is not there.
        let e = config(d.path(), "val", "").open(Split::Val).err().unwrap();
        assert!(e.to_string().contains("leftImg8bit/val"), "{e}");
        // Nothing in it.
        std::fs::create_dir_all(d.path().join("leftImg8bit/val")).unwrap();
        let e = config(d.path(), "val", "").open(Split::Val).err().unwrap();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("leftImg8bit/val"), "{e}");
    }
}
