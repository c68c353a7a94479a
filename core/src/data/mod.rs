//! Data sets: what a pipeline reads images and ground truth from.
//!
//! A data set is chosen in the pipeline file by a mapping with a `kind`
//! (`synthetic`, `folder`, `coco_stuff27`, `cityscapes27`) and that kind's
//! settings; [`DatasetConfig::read_kind`] reads one kind's settings (the
//! pipeline reads them with every problem placed; [`from_yaml`] with serde alone),
//! and [`DatasetConfig::open`] lists one split's files and checks the layout.
//!
//! Every reader hands out masks already mapped to the class ids
//! `0..classes().len()` or the data set's [`Dataset::ignore_index`], so the
//! rest of the pipeline never sees a data set's raw label encoding.

mod cityscapes;
mod coco;
mod config;
mod folder;
mod io;
mod paired;
pub mod preprocess;
mod synthetic;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cityscapes::{CityscapesConfig, CITYSCAPES27_LABEL_IDS};
pub use coco::{CocoConfig, COCO_FINE_TO_COARSE};
pub use config::{from_yaml, struct_fields, KindConfig, KindReader};
pub use folder::{FolderConfig, SplitDirs};
pub use io::pascal_colour;
pub use preprocess::{load_batch, par_map, PreprocessError};
pub use synthetic::SyntheticDatasetConfig;

/// Which half of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One ground-truth class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub name: String,
    /// Display colour.
    pub colour: [u8; 3],
    /// Countable object ("thing") or amorphous region ("stuff"), where the
    /// data set says.
    pub is_thing: Option<bool>,
}

/// A ground-truth mask, row-major: class ids `0..C` or the ignore index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u16>,
}

impl Mask {
    /// The value at (x, y); `None` outside the mask.
    pub fn get(&self, x: u32, y: u32) -> Option<u16> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.data
            .get(y as usize * self.width as usize + x as usize)
            .copied()
    }
}

/// A file left out of a data set because it could not be used (`skip_bad`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    pub reason: String,
}

/// A data set split, opened and listed.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A stable name of item `i` (a file stem or image id).
    fn id(&self, i: usize) -> String;
    fn image(&self, i: usize) -> Result<image::RgbImage, DataError>;
    /// `Ok(None)` where the item has no ground truth.
    fn mask(&self, i: usize) -> Result<Option<Mask>, DataError>;
    fn classes(&self) -> &[ClassInfo];
    fn ignore_index(&self) -> u16;
    /// Whether every item has a mask.
    fn has_masks(&self) -> bool;
    /// Files left out at opening (only with `skip_bad`).
    fn skipped(&self) -> &[Skipped] {
        &[]
    }
}

/// Why a data set could not be opened or read. Each names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{what} folder {} does not exist", path.display())]
    MissingDir { what: &'static str, path: PathBuf },
    #[error("no images found in {}", path.display())]
    Empty { path: PathBuf },
    #[error("every file in {} was skipped as bad; the first: {first}", path.display())]
    AllSkipped { path: PathBuf, first: String },
    #[error("image {} has no mask (looked for {})", image.display(), expected.display())]
    MissingMask { image: PathBuf, expected: PathBuf },
    #[error("image {} is missing (listed in {})", path.display(), list.display())]
    MissingImage { path: PathBuf, list: PathBuf },
    #[error("{} and {} both have the stem `{stem}`", a.display(), b.display())]
    DuplicateStem {
        stem: String,
        a: PathBuf,
        b: PathBuf,
    },
    #[error(
        "image {} is {}x{} but its mask {} is {}x{}",
        image.display(), image_size.0, image_size.1, mask.display(), mask_size.0, mask_size.1
    )]
    SizeMismatch {
        image: PathBuf,
        image_size: (u32, u32),
        mask: PathBuf,
        mask_size: (u32, u32),
    },
    #[error("mask {} holds the value {value}, {detail}", path.display())]
    Label {
        path: PathBuf,
        value: u32,
        detail: String,
    },
    #[error("mask {} must be a single-channel image, found {found}", path.display())]
    MaskFormat { path: PathBuf, found: String },
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("item {index} is out of range: the data set has {len} items")]
    Index { index: usize, len: usize },
    #[error("preprocessing {id}: {source}")]
    Preprocess { id: String, source: PreprocessError },
}

/// A data set's settings, as given in the pipeline file (paths resolved).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum DatasetConfig {
    #[serde(rename = "synthetic")]
    Synthetic(SyntheticDatasetConfig),
    #[serde(rename = "folder")]
    Folder(FolderConfig),
    #[serde(rename = "coco_stuff27")]
    CocoStuff27(CocoConfig),
    #[serde(rename = "cityscapes27")]
    Cityscapes27(CityscapesConfig),
}

/// The values of `kind`.
pub const KINDS: [&str; 4] = ["synthetic", "folder", "coco_stuff27", "cityscapes27"];

impl DatasetConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            DatasetConfig::Synthetic(_) => KINDS[0],
            DatasetConfig::Folder(_) => KINDS[1],
            DatasetConfig::CocoStuff27(_) => KINDS[2],
            DatasetConfig::Cityscapes27(_) => KINDS[3],
        }
    }

    /// Lists one split's files and checks the layout (and, with `skip_bad`,
    /// every file's contents).
    pub fn open(&self, split: Split) -> Result<Box<dyn Dataset>, DataError> {
        match self {
            DatasetConfig::Synthetic(c) => Ok(Box::new(c.open(split)?)),
            DatasetConfig::Folder(c) => Ok(Box::new(c.open(split)?)),
            DatasetConfig::CocoStuff27(c) => Ok(Box::new(c.open(split)?)),
            DatasetConfig::Cityscapes27(c) => Ok(Box::new(c.open(split)?)),
        }
    }

    /// The settings as JSON with `kind` and absolute paths: a cache key.
    pub fn canonical(&self) -> serde_json::Value {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mask_get_bounds() {
        let m = Mask {
            width: 2,
            height: 1,
            data: vec![3, 4],
        };
        assert_eq!(m.get(1, 0), Some(4));
        assert_eq!(m.get(2, 0), None);
        assert_eq!(m.get(0, 1), None);
    }

    #[test]
    fn canonical_has_kind_and_fields() {
        let c = from_yaml("kind: synthetic\ntrain_images: 3\n", Path::new("/x")).unwrap();
        let v = c.canonical();
        assert_eq!(v["kind"], "synthetic");
        assert_eq!(v["train_images"], 3);
        assert_eq!(v["val_images"], 16);
        assert_eq!(c.kind(), "synthetic");
    }

    #[test]
    fn errors_name_files() {
        let e = DataError::MissingMask {
            image: "/d/a.png".into(),
            expected: "/d/m/a.png".into(),
        };
        assert!(e.to_string().contains("/d/a.png"));
        assert!(e.to_string().contains("/d/m/a.png"));
    }
}
