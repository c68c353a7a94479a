//! A data set of plain folders: images in one, single-channel PNG masks of
//! the same stem in another (CamVid's SegNet layout, and most custom sets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{struct_fields, KindConfig};
use super::io::{list_files, missing_mask, pascal_colour, read_text, stem, IMAGE_EXTS, MASK_EXTS};
use super::paired::{Entry, LabelMap, PairedDataset};
use super::{ClassInfo, DataError, Split};

/// One split's folders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitDirs {
    pub images: PathBuf,
    /// Without it the split has no ground truth (enough for training).
    #[serde(default)]
    pub masks: Option<PathBuf>,
}

/// Settings of a folder data set. `root` resolves against the pipeline
/// file's folder (and defaults to it); the split folders and the class file
/// resolve against `root`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    #[serde(default)]
    pub root: PathBuf,
    pub train: SplitDirs,
    #[serde(default)]
    pub val: Option<SplitDirs>,
    /// A class file: lines `index name r,g,b` (CamVid's `classes.txt`); a
    /// line for the ignore index may be present and is not a class.
    #[serde(default)]
    pub classes: Option<PathBuf>,
    /// Number of classes where there is no class file (names `class0`...).
    #[serde(default)]
    pub num_classes: Option<u16>,
    /// Mask value that marks pixels without ground truth.
    #[serde(default = "default_ignore")]
    pub ignore_index: u16,
    /// Leave out (and report) unusable files instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

fn default_ignore() -> u16 {
    255
}

fn under(root: &Path, p: &Path) -> PathBuf {
    // `join` keeps an absolute `p` as it is.
    root.join(p)
}

impl KindConfig for FolderConfig {
    fn nested() -> Vec<(&'static str, &'static [&'static str])> {
        let split = struct_fields::<SplitDirs>();
        vec![("train", split), ("val", split)]
    }

    fn resolve(&mut self, base_dir: &Path) {
        self.root = if self.root.as_os_str().is_empty() {
            base_dir.to_path_buf()
        } else {
            base_dir.join(&self.root)
        };
        let root = self.root.clone();
        for dirs in std::iter::once(&mut self.train).chain(self.val.as_mut()) {
            dirs.images = under(&root, &dirs.images);
            dirs.masks = dirs.masks.as_ref().map(|m| under(&root, m));
        }
        self.classes = self.classes.as_ref().map(|c| under(&root, c));
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match (&self.classes, self.num_classes) {
            (None, None) => out.push((
                "classes".into(),
                "give `classes` (a file of lines `index name r,g,b`) or `num_classes`".into(),
            )),
            (_, Some(0)) => out.push(("num_classes".into(), "must be at least 1".into())),
            (_, Some(n)) if self.ignore_index < n => out.push((
                "ignore_index".into(),
                format!("{} is a class id (0..{n})", self.ignore_index),
            )),
            _ => {}
        }
        out
    }
}

/// Reads a class file; classes are its lines other than the ignore index,
/// whose indices must run 0..C without gaps.
pub(crate) fn read_class_file(path: &Path, ignore: u16) -> Result<Vec<ClassInfo>, DataError> {
    let text = read_text(path)?;
    let bad = |line: usize, message: String| DataError::BadLine {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut by_index: BTreeMap<usize, (usize, ClassInfo)> = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = raw.split_whitespace().collect();
        if parts.len() < 3 {
            return Err(bad(
                line,
                format!("expected `index name r,g,b`, found `{raw}`"),
            ));
        }
        let index: usize = parts[0]
            .parse()
            .map_err(|_| bad(line, format!("`{}` is not a class index", parts[0])))?;
        let colour_text = parts[parts.len() - 1];
        let rgb: Vec<u8> = colour_text
            .split(',')
            .map(|c| c.trim().parse::<u8>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad(line, format!("`{colour_text}` is not a colour `r,g,b`")))?;
        let colour: [u8; 3] = rgb
            .try_into()
            .map_err(|_| bad(line, format!("`{colour_text}` is not a colour `r,g,b`")))?;
        let name = parts[1..parts.len() - 1].join(" ");
        let info = ClassInfo {
            name,
            colour,
            is_thing: None,
        };
        if let Some((first, _)) = by_index.insert(index, (line, info)) {
            return Err(bad(
                line,
                format!("index {index} already given on line {first}"),
            ));
        }
    }
    by_index.remove(&usize::from(ignore));
    let mut classes = Vec::with_capacity(by_index.len());
    for (expect, (index, (line, info))) in by_index.into_iter().enumerate() {
        if index != expect {
            return Err(bad(
                line,
                format!(
                    "class indices must run 0, 1, 2, ... without gaps (the ignore index \
                     {ignore} aside): expected {expect}, found {index}"
                ),
            ));
        }
        classes.push(info);
    }
    if classes.is_empty() {
        return Err(bad(0, "no classes listed".into()));
    }
    Ok(classes)
}

impl FolderConfig {
    fn class_list(&self) -> Result<(Vec<ClassInfo>, String), DataError> {
        let (classes, source) = match &self.classes {
            Some(file) => {
                let c = read_class_file(file, self.ignore_index)?;
                if let Some(n) = self.num_classes {
                    if usize::from(n) != c.len() {
                        return Err(DataError::Config(format!(
                            "num_classes is {n} but {} lists {} classes",
                            file.display(),
                            c.len()
                        )));
                    }
                }
                (c, format!("classes from {}", file.display()))
            }
            None => {
                let n = self.num_classes.unwrap_or(0);
                let c = (0..usize::from(n))
                    .map(|i| ClassInfo {
                        name: format!("class{i}"),
                        colour: pascal_colour(i + 1),
                        is_thing: None,
                    })
                    .collect();
                (c, format!("num_classes: {n}"))
            }
        };
        if classes.is_empty() {
            return Err(DataError::Config(format!(
                "the folder data set at {} has no classes",
                self.root.display()
            )));
        }
        if usize::from(self.ignore_index) < classes.len() {
            return Err(DataError::Config(format!(
                "ignore_index {} is a class id (0..{}, {source})",
                self.ignore_index,
                classes.len()
            )));
        }
        Ok((classes, source))
    }

    pub(crate) fn open(&self, split: Split) -> Result<PairedDataset, DataError> {
        let dirs = match split {
            Split::Train => &self.train,
            Split::Val => self.val.as_ref().ok_or_else(|| {
                DataError::Config(format!(
                    "the folder data set at {} has no `val` split",
                    self.root.display()
                ))
            })?,
        };
        let (classes, source) = self.class_list()?;
        let c = classes.len();
        let ignore = self.ignore_index;
        let mut lut = vec![None; c.max(usize::from(ignore) + 1)];
        for (v, slot) in lut.iter_mut().enumerate().take(c) {
            *slot = Some(v as u16);
        }
        lut[usize::from(ignore)] = Some(ignore);
        let map = LabelMap {
            lut,
            detail: format!(
                "which is neither a class id (0..{c}) nor the ignore index {ignore} ({source})"
            ),
        };

        let images = list_files(&dirs.images, "image", &IMAGE_EXTS)?;
        let masks: Option<BTreeMap<String, PathBuf>> = match &dirs.masks {
            Some(d) => Some(
                list_files(d, "mask", &MASK_EXTS)?
                    .into_iter()
                    .map(|p| (stem(&p), p))
                    .collect(),
            ),
            None => None,
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(images.len());
        let mut skipped = Vec::new();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for image in images {
            let id = stem(&image);
            if let Some(a) = seen.insert(id.clone(), image.clone()) {
                // Two images for one mask: which one is meant is unknowable.
                return Err(DataError::DuplicateStem {
                    stem: id,
                    a,
                    b: image,
                });
            }
            let mask = match (&masks, &dirs.masks) {
                (Some(m), Some(dir)) => match m.get(&id) {
                    Some(p) => Some(p.clone()),
                    None => {
                        let expected = dir.join(format!("{id}.png"));
                        missing_mask(image, expected, self.skip_bad, &mut skipped)?;
                        continue;
                    }
                },
                _ => None,
            };
            entries.push(Entry { id, image, mask });
        }
        PairedDataset::build(
            entries,
            classes,
            ignore,
            map,
            self.skip_bad,
            skipped,
            &dirs.images,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_yaml, DatasetConfig};
    use super::*;
    use image::{GrayImage, Luma, RgbImage};

    const CLASSES: &str = "0 Sky 128,128,128\n1 Road 128,64,128\n2 Car 64,0,128\n9 Void 0,0,0\n";

    /// A root with `train`/`trainannot`, `val`/`valannot`, a class file
    /// (3 classes, ignore 9) and `n` 8x6 image/mask pairs per split.
    fn fixture(n: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (img, ann) in [("train", "trainannot"), ("val", "valannot")] {
            std::fs::create_dir(d.path().join(img)).unwrap();
            std::fs::create_dir(d.path().join(ann)).unwrap();
            for i in 0..n {
                let im = RgbImage::from_fn(8, 6, |x, y| {
                    image::Rgb([x as u8 * 30, y as u8 * 40, i as u8])
                });
                im.save(d.path().join(img).join(format!("f{i:02}.png")))
                    .unwrap();
                let m = GrayImage::from_fn(8, 6, |x, y| {
                    Luma([if y == 0 {
                        9
                    } else {
                        ((x + i as u32) % 3) as u8
                    }])
                });
                m.save(d.path().join(ann).join(format!("f{i:02}.png")))
                    .unwrap();
            }
        }
        std::fs::write(d.path().join("classes.txt"), CLASSES).unwrap();
        d
    }

    fn config(root: &Path, extra: &str) -> DatasetConfig {
        let text = format!(
            "kind: folder\nroot: {}\nclasses: classes.txt\nignore_index: 9\n\
             train: {{images: train, masks: trainannot}}\nval: {{images: val, masks: valannot}}\n{extra}",
            root.display()
        );
        from_yaml(&text, Path::new("/")).unwrap()
    }

    #[test]
    fn reads_pairs_classes_and_masks() {
        let d = fixture(3);
        let ds = config(d.path(), "").open(Split::Train).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.id(0), "f00");
        assert_eq!(ds.id(2), "f02");
        assert!(ds.has_masks());
        assert_eq!(ds.ignore_index(), 9);
        let names: Vec<&str> = ds.classes().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Sky", "Road", "Car"]);
        assert_eq!(ds.classes()[1].colour, [128, 64, 128]);
        let img = ds.image(1).unwrap();
        assert_eq!(img.dimensions(), (8, 6));
        assert_eq!(img.get_pixel(2, 3).0, [60, 120, 1]);
        let m = ds.mask(1).unwrap().unwrap();
        assert_eq!((m.width, m.height), (8, 6));
        assert_eq!(m.get(0, 0), Some(9));
        assert_eq!(m.get(1, 2), Some(2));
        assert!(ds.skipped().is_empty());
        assert!(matches!(
            ds.image(3),
            Err(DataError::Index { index: 3, len: 3 })
        ));
        assert_eq!(ds.id(7), "");
        let val = config(d.path(), "").open(Split::Val).unwrap();
        assert_eq!(val.len(), 3);
    }

    #[test]
    fn split_without_masks_and_without_val() {
        let d = fixture(2);
        let text = format!(
            "kind: folder\nroot: {}\nnum_classes: 3\ntrain: {{images: train}}\n",
            d.path().display()
        );
        let cfg = from_yaml(&text, Path::new("/")).unwrap();
        let ds = cfg.open(Split::Train).unwrap();
        assert!(!ds.has_masks());
        assert!(ds.mask(0).unwrap().is_none());
        assert_eq!(ds.classes()[2].name, "class2");
        assert_eq!(ds.ignore_index(), 255);
        let e = cfg.open(Split::Val).err().unwrap();
        assert!(e.to_string().contains("no `val` split"), "{e}");
    }

    #[test]
    fn missing_mask_names_the_image() {
        let d = fixture(3);
        std::fs::remove_file(d.path().join("trainannot/f01.png")).unwrap();
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        assert!(matches!(e, DataError::MissingMask { .. }), "{e}");
        assert!(e.to_string().contains("train/f01.png"), "{e}");
        assert!(e.to_string().contains("trainannot/f01.png"), "{e}");
    }

    #[test]
    fn corrupt_png_names_the_file() {
        let d = fixture(3);
        // A PNG cut after its header: the size reads, the pixels do not.
        let p = d.path().join("trainannot/f02.png");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let ds = config(d.path(), "").open(Split::Train).unwrap();
        let e = ds.mask(2).unwrap_err();
        assert!(e.to_string().contains("trainannot/f02.png"), "{e}");
        // Garbage from the first byte fails already at opening.
        std::fs::write(d.path().join("train/f00.png"), b"not a png at all").unwrap();
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        assert!(e.to_string().contains("train/f00.png"), "{e}");
    }

    #[test]
    fn size_mismatch_names_both_files() {
        let d = fixture(2);
        GrayImage::new(7, 6)
            .save(d.path().join("valannot/f01.png"))
            .unwrap();
        let e = config(d.path(), "").open(Split::Val).err().unwrap();
        let s = e.to_string();
        assert!(matches!(e, DataError::SizeMismatch { .. }), "{s}");
        assert!(
            s.contains("val/f01.png") && s.contains("valannot/f01.png"),
            "{s}"
        );
        assert!(s.contains("8x6") && s.contains("7x6"), "{s}");
    }

    #[test]
    fn out_of_range_label_names_file_and_value() {
        let d = fixture(2);
        let mut m = GrayImage::new(8, 6);
        m.put_pixel(3, 3, Luma([7]));
        m.save(d.path().join("trainannot/f01.png")).unwrap();
        let ds = config(d.path(), "").open(Split::Train).unwrap();
        let e = ds.mask(1).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, DataError::Label { value: 7, .. }), "{s}");
        assert!(
            s.contains("trainannot/f01.png") && s.contains("value 7"),
            "{s}"
        );
        // The class file is named: it is what the labels fail to match.
        assert!(s.contains("classes.txt"), "{s}");
    }

    #[test]
    fn empty_data_set_names_the_folder() {
        let d = fixture(0);
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert!(e
            .to_string()
            .contains(&d.path().join("train").display().to_string()));
        let e = config(&d.path().join("nowhere"), "")
            .open(Split::Train)
            .err()
            .unwrap();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }

    #[test]
    fn class_file_problems_name_the_file_and_line() {
        let d = fixture(1);
        let f = d.path().join("classes.txt");
        for (text, needle) in [
            ("0 Sky 1,2,3\n2 Car 1,2,3\n", ":2: class indices must run"),
            ("0 Sky 1,2\n", ":1: `1,2` is not a colour"),
            ("x Sky 1,2,3\n", ":1: `x` is not a class index"),
            (
                "0 Sky 1,2,3\n0 Sea 1,2,3\n",
                ":2: index 0 already given on line 1",
            ),
            ("0 Sky\n", ":1: expected `index name r,g,b`"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = config(d.path(), "").open(Split::Train).err().unwrap();
            let s = e.to_string();
            assert!(
                s.contains("classes.txt") && s.contains(needle),
                "{s} lacks {needle}"
            );
        }
        // Fewer classes than the labels use: the mask holding 2 fails.
        std::fs::write(&f, "0 Sky 1,2,3\n1 Road 4,5,6\n").unwrap();
        let e = config(d.path(), "")
            .open(Split::Train)
            .unwrap()
            .mask(0)
            .unwrap_err();
        assert!(e.to_string().contains("value 2"), "{e}");
        // A class file and num_classes that disagree.
        std::fs::write(&f, CLASSES).unwrap();
        let e = config(d.path(), "num_classes: 4\n")
            .open(Split::Train)
            .err()
            .unwrap();
        assert!(e.to_string().contains("lists 3 classes"), "{e}");
    }

    #[test]
    fn skip_bad_lists_what_it_left_out() {
        let d = fixture(5);
        let a = d.path().join("trainannot");
        std::fs::remove_file(a.join("f00.png")).unwrap();
        let bytes = std::fs::read(a.join("f01.png")).unwrap();
        std::fs::write(a.join("f01.png"), &bytes[..bytes.len() / 2]).unwrap();
        GrayImage::new(3, 3).save(a.join("f02.png")).unwrap();
        GrayImage::from_pixel(8, 6, Luma([5]))
            .save(a.join("f03.png"))
            .unwrap();
        let ds = config(d.path(), "skip_bad: true\n")
            .open(Split::Train)
            .unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(ds.id(0), "f04");
        let skipped: Vec<(String, &str)> = ds
            .skipped()
            .iter()
            .map(|s| {
                let f = s.file.strip_prefix(d.path()).unwrap().display().to_string();
                (f, s.reason.as_str())
            })
            .collect();
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert_eq!(skipped[0].0, "train/f00.png");
        assert!(skipped[0].1.contains("has no mask"));
        assert_eq!(skipped[1].0, "trainannot/f01.png");
        assert!(skipped[1].1.contains("cannot decode"));
        assert_eq!(skipped[2].0, "train/f02.png");
        assert!(skipped[2].1.contains("3x3"));
        assert_eq!(skipped[3].0, "trainannot/f03.png");
        assert!(skipped[3].1.contains("value 5"));
        // All bad: an error, not an empty data set.
        std::fs::remove_file(a.join("f04.png")).unwrap();
        let e = config(d.path(), "skip_bad: true\n")
            .open(Split::Train)
            .err()
            .unwrap();
        assert!(matches!(e, DataError::AllSkipped { .. }), "{e}");
    }

    #[test]
    fn duplicate_stems_are_an_error() {
        let d = fixture(1);
        RgbImage::new(8, 6)
            .save(d.path().join("train/f00.jpg"))
            .unwrap();
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        assert!(matches!(e, DataError::DuplicateStem { .. }), "{e}");
    }

    #[test]
    fn settings_are_checked() {
        let e = from_yaml("kind: folder\ntrain: {images: a}\n", Path::new("/")).unwrap_err();
        assert!(e[0].contains("num_classes"), "{e:?}");
        let e = from_yaml(
            "kind: folder\nnum_classes: 12\nignore_index: 11\ntrain: {images: a}\n",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e[0].starts_with("ignore_index:"), "{e:?}");
    }

    /// The CamVid copy in shared/, read as it is.
    #[test]
    fn camvid_as_shipped() {
        // ../shared beside the checkout, as in CI and on developers' machines.
        let root = crate::repo_root().join("../shared/data/camvid");
        let root = std::env::var_os("PICIE_CAMVID")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.to_path_buf());
        if !root.join("classes.txt").exists() {
            return picie_testkit::skip(format!("camvid data: none at {}", root.display()));
        }
        // What a pipeline file for CamVid says.
        let text = format!(
            "kind: folder\nroot: {}\nclasses: classes.txt\nignore_index: 11\n\
             train: {{images: train, masks: trainannot}}\nval: {{images: val, masks: valannot}}\n",
            root.display()
        );
        let cfg = from_yaml(&text, Path::new("/")).unwrap();
        let train = cfg.open(Split::Train).unwrap();
        let val = cfg.open(Split::Val).unwrap();
        assert_eq!((train.len(), val.len()), (367, 101));
        assert_eq!(train.classes().len(), 11);
        assert_eq!(train.classes()[0].name, "Sky");
        assert_eq!(train.classes()[10].name, "Bicyclist");
        assert_eq!(train.ignore_index(), 11);
        assert!(train.has_masks() && val.has_masks());
        for (ds, i) in [(&train, 0), (&train, 366), (&val, 0), (&val, 100)] {
            assert_eq!(ds.image(i).unwrap().dimensions(), (480, 360));
        }
        // Every val mask maps (values 0..=11 only) at 480x360.
        let mut seen = [false; 12];
        for i in 0..val.len() {
            let m = val.mask(i).unwrap().unwrap();
            assert_eq!((m.width, m.height), (480, 360));
            m.data.iter().for_each(|&v| seen[usize::from(v)] = true);
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        // A full check of every val file finds nothing to skip.
        let strict = from_yaml(&format!("{text}skip_bad: true\n"), Path::new("/")).unwrap();
        let checked = strict.open(Split::Val).unwrap();
        assert_eq!(checked.len(), 101);
        assert!(checked.skipped().is_empty());
    }
}
