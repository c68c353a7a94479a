//! The one [`Dataset`] behind the file readers: a list of (image, mask)
//! files and a table from raw mask values to class ids.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::io::{dimensions, read_raw_mask, read_rgb};
use super::preprocess::{default_threads, par_map};
use super::{ClassInfo, DataError, Dataset, Mask, Skipped};

/// One item: an image and, where the split has ground truth, its mask.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub id: String,
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
}

/// Raw mask value -> class id or the ignore index; `None` marks values the
/// data set never uses (an error when met).
#[derive(Clone, Debug)]
pub(crate) struct LabelMap {
    pub lut: Vec<Option<u16>>,
    /// Why an unmapped value is wrong, for the error message.
    pub detail: String,
}

impl LabelMap {
    /// Maps a mask's raw values, or names the first value that has no class.
    pub fn apply(&self, path: &Path, raw: Vec<u16>) -> Result<Vec<u16>, DataError> {
        let mut out = raw;
        for v in out.iter_mut() {
            match self.lut.get(usize::from(*v)).copied().flatten() {
                Some(c) => *v = c,
                None => {
                    return Err(DataError::Label {
                        path: path.to_path_buf(),
                        value: u32::from(*v),
                        detail: self.detail.clone(),
                    })
                }
            }
        }
        Ok(out)
    }
}

pub(crate) struct PairedDataset {
    entries: Vec<Entry>,
    classes: Vec<ClassInfo>,
    ignore: u16,
    map: LabelMap,
    skipped: Vec<Skipped>,
}

/// The file an error is about, for the skip report.
fn file_of(e: &DataError) -> Option<&Path> {
    match e {
        DataError::Io { path, .. }
        | DataError::Decode { path, .. }
        | DataError::Label { path, .. }
        | DataError::MaskFormat { path, .. }
        | DataError::MissingImage { path, .. }
        | DataError::BadLine { path, .. } => Some(path),
        DataError::MissingMask { image, .. } | DataError::SizeMismatch { image, .. } => Some(image),
        _ => None,
    }
}

impl PairedDataset {
    /// Checks every entry and builds the data set. Without `skip_bad` the
    /// headers are read (sizes must match) and the first bad file is the
    /// error; with it every file is decoded once and the bad ones are left
    /// out and reported. `skipped` carries what the listing already left
    /// out; `folder` names the split in the error for an empty data set.
    pub fn build(
        entries: Vec<Entry>,
        classes: Vec<ClassInfo>,
        ignore: u16,
        map: LabelMap,
        skip_bad: bool,
        mut skipped: Vec<Skipped>,
        folder: &Path,
    ) -> Result<Self, DataError> {
        if entries.is_empty() && skipped.is_empty() {
            return Err(DataError::Empty {
                path: folder.to_path_buf(),
            });
        }
        let checks = par_map(&entries, default_threads(), |e| check(e, &map, skip_bad));
        let mut kept = Vec::with_capacity(entries.len());
        for (entry, res) in entries.into_iter().zip(checks) {
            match res {
                Ok(()) => kept.push(entry),
                Err(e) if skip_bad => skipped.push(Skipped {
                    file: file_of(&e).unwrap_or(&entry.image).to_path_buf(),
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        if kept.is_empty() {
            return Err(DataError::AllSkipped {
                path: folder.to_path_buf(),
                first: skipped
                    .first()
                    .map(|s| s.reason.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(Self {
            entries: kept,
            classes,
            ignore,
            map,
            skipped,
        })
    }

    fn entry(&self, i: usize) -> Result<&Entry, DataError> {
        self.entries.get(i).ok_or(DataError::Index {
            index: i,
            len: self.entries.len(),
        })
    }

    fn read_mask(&self, path: &Path) -> Result<Mask, DataError> {
        let (width, height, raw) = read_raw_mask(path)?;
        let data = self.map.apply(path, raw)?;
        Ok(Mask {
            width,
            height,
            data,
        })
    }
}

fn check(e: &Entry, map: &LabelMap, full: bool) -> Result<(), DataError> {
    let image_size = if full {
        read_rgb(&e.image)?.dimensions()
    } else {
        dimensions(&e.image)?
    };
    let Some(mask) = &e.mask else {
        return Ok(());
    };
    let mask_size = if full {
        let (w, h, raw) = read_raw_mask(mask)?;
        map.apply(mask, raw)?;
        (w, h)
    } else {
        dimensions(mask)?
    };
    if image_size != mask_size {
        return Err(DataError::SizeMismatch {
            image: e.image.clone(),
            image_size,
            mask: mask.clone(),
            mask_size,
        });
    }
    Ok(())
}

impl Dataset for PairedDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn id(&self, i: usize) -> String {
        self.entries
            .get(i)
            .map(|e| e.id.clone())
            .unwrap_or_default()
    }

    fn image(&self, i: usize) -> Result<RgbImage, DataError> {
        read_rgb(&self.entry(i)?.image)
    }

    fn mask(&self, i: usize) -> Result<Option<Mask>, DataError> {
        match &self.entry(i)?.mask {
            Some(p) => self.read_mask(p).map(Some),
            None => Ok(None),
        }
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn ignore_index(&self) -> u16 {
        self.ignore
    }

    fn has_masks(&self) -> bool {
        !self.entries.is_empty() && self.entries.iter().all(|e| e.mask.is_some())
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}
