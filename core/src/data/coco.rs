//! COCO-Stuff-27: the COCO-Stuff 164k images with the 182 fine labels merged
//! into 27 coarse ones (12 "thing" + 15 "stuff" groups), as IIC and PiCIE
//! evaluate it.
//!
//! Layout under `root`: `images/{train2017,val2017}/ID.jpg` and
//! `annotations/{train2017,val2017}/ID.png` (fine labels 0..=181, 255 for
//! unlabelled). An image list (one id per line, IIC's curated lists such as
//! `curated/train2017/Coco164kFull_Stuff_Coarse_7.txt`) picks the images;
//! without one every image of the split folder is used.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::KindConfig;
use super::io::{list_files, missing_mask, pascal_colour, read_text, stem, IMAGE_EXTS};
use super::paired::{Entry, LabelMap, PairedDataset};
use super::{ClassInfo, DataError, Skipped, Split};

/// Settings of COCO-Stuff-27. `root` resolves against the pipeline file's
/// folder; the lists against `root`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoConfig {
    pub root: PathBuf,
    /// Image ids of the train split (the release: IIC's curated
    /// `Coco164kFull_Stuff_Coarse_7.txt`, 49,629 images).
    #[serde(default)]
    pub train_list: Option<PathBuf>,
    /// Image ids of the val split (the same list name, 2,175 images).
    #[serde(default)]
    pub val_list: Option<PathBuf>,
    /// Leave out (and report) unusable files instead of failing.
    #[serde(default)]
    pub skip_bad: bool,
}

/// Fine label (0..=181) -> coarse class (0..=26): the `fine_to_coarse`
/// table of IIC's `fine_to_coarse_dict.pickle`, which PiCIE's release loads
/// (and which STEGO's `data.py` spells out). It is COCO-Stuff's own
/// supercategory hierarchy; the coarse ids are the supercategories in the
/// order of [`COARSE_NAMES`].
pub const COCO_FINE_TO_COARSE: [u8; 182] = [
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6,
    6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4,
    4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25,
    13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17,
    25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15,
    24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24,
];

/// The 27 coarse classes: 0..=11 things, 12..=26 stuff.
const COARSE_NAMES: [&str; 27] = [
    "electronic-things",
    "appliance-things",
    "food-things",
    "furniture-things",
    "indoor-things",
    "kitchen-things",
    "accessory-things",
    "animal-things",
    "outdoor-things",
    "person-things",
    "sports-things",
    "vehicle-things",
    "ceiling-stuff",
    "floor-stuff",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial-stuff",
    "textile-stuff",
    "wall-stuff",
    "window-stuff",
    "building-stuff",
    "ground-stuff",
    "plant-stuff",
    "sky-stuff",
    "solid-stuff",
    "structural-stuff",
    "water-stuff",
];

/// Coarse ids below this are things.
const FIRST_STUFF: usize = 12;
const IGNORE: u16 = 255;

/// The 27 classes; colours from the PASCAL palette (COCO-Stuff-27 has no
/// conventional colours of its own).
pub(crate) fn coco27_classes() -> Vec<ClassInfo> {
    COARSE_NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| ClassInfo {
            name: n.to_string(),
            colour: pascal_colour(i + 1),
            is_thing: Some(i < FIRST_STUFF),
        })
        .collect()
}

fn label_map() -> LabelMap {
    let mut lut = vec![None; 256];
    for (fine, &coarse) in COCO_FINE_TO_COARSE.iter().enumerate() {
        lut[fine] = Some(u16::from(coarse));
    }
    lut[usize::from(IGNORE)] = Some(IGNORE);
    LabelMap {
        lut,
        detail: "which is not a COCO-Stuff label (0..=181, or 255 for unlabelled)".into(),
    }
}

/// Reads an image list: one id (digits only) per line, blank lines allowed.
fn read_list(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read_text(path)?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        // Digits only: an id becomes a file name, so nothing like `../x`.
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DataError::BadLine {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!("`{id}` is not an image id (digits, e.g. 000000000139)"),
            });
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

impl KindConfig for CocoConfig {
    fn resolve(&mut self, base_dir: &Path) {
        self.root = base_dir.join(&self.root);
        let root = self.root.clone();
        for l in [&mut self.train_list, &mut self.val_list] {
            *l = l.as_ref().map(|p| root.join(p));
        }
    }

    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl CocoConfig {
    pub(crate) fn open(&self, split: Split) -> Result<PairedDataset, DataError> {
        let (sub, list) = match split {
            Split::Train => ("train2017", &self.train_list),
            Split::Val => ("val2017", &self.val_list),
        };
        let img_dir = self.root.join("images").join(sub);
        let ann_dir = self.root.join("annotations").join(sub);
        if !img_dir.is_dir() {
            return Err(DataError::MissingDir {
                what: "image",
                path: img_dir,
            });
        }
        // Without the annotation folder the split has no ground truth
        // (training needs none); with it, every image needs its mask.
        let has_ann = ann_dir.is_dir();
        let mut skipped = Vec::new();
        let mut candidates: Vec<(String, PathBuf)> = Vec::new();
        match list {
            Some(list) => {
                for id in read_list(list)? {
                    let image = img_dir.join(format!("{id}.jpg"));
                    if !image.is_file() {
                        let err = DataError::MissingImage {
                            path: image.clone(),
                            list: list.clone(),
                        };
                        if !self.skip_bad {
                            return Err(err);
                        }
                        skipped.push(Skipped {
                            file: image,
                            reason: err.to_string(),
                        });
                        continue;
                    }
                    candidates.push((id, image));
                }
            }
            None => {
                for image in list_files(&img_dir, "image", &IMAGE_EXTS)? {
                    candidates.push((stem(&image), image));
                }
            }
        }
        let mut entries = Vec::with_capacity(candidates.len());
        for (id, image) in candidates {
            let mask = if has_ann {
                let m = ann_dir.join(format!("{id}.png"));
                if !m.is_file() {
                    missing_mask(image, m, self.skip_bad, &mut skipped)?;
                    continue;
                }
                Some(m)
            } else {
                None
            };
            entries.push(Entry { id, image, mask });
        }
        PairedDataset::build(
            entries,
            coco27_classes(),
            IGNORE,
            label_map(),
            self.skip_bad,
            skipped,
            &img_dir,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_yaml, DatasetConfig};
    use super::*;
    use image::{GrayImage, Luma, RgbImage};

    /// Every fine label by its COCO-Stuff index (category id - 1) and name,
    /// with its coarse class by name, written from COCO's and COCO-Stuff's
    /// published supercategories.
    const TABLE: [(usize, &str, &str); 182] = [
        (0, "person", "person-things"),
        (1, "bicycle", "vehicle-things"),
        (2, "car", "vehicle-things"),
        (3, "motorcycle", "vehicle-things"),
        (4, "airplane", "vehicle-things"),
        (5, "bus", "vehicle-things"),
        (6, "train", "vehicle-things"),
        (7, "truck", "vehicle-things"),
        (8, "boat", "vehicle-things"),
        (9, "traffic light", "outdoor-things"),
        (10, "fire hydrant", "outdoor-things"),
        (11, "street sign", "outdoor-things"),
        (12, "stop sign", "outdoor-things"),
        (13, "parking meter", "outdoor-things"),
        (14, "bench", "outdoor-things"),
        (15, "bird", "animal-things"),
        (16, "cat", "animal-things"),
        (17, "dog", "animal-things"),
        (18, "horse", "animal-things"),
        (19, "sheep", "animal-things"),
        (20, "cow", "animal-things"),
        (21, "elephant", "animal-things"),
        (22, "bear", "animal-things"),
        (23, "zebra", "animal-things"),
        (24, "giraffe", "animal-things"),
        (25, "hat", "accessory-things"),
        (26, "backpack", "accessory-things"),
        (27, "umbrella", "accessory-things"),
        (28, "shoe", "accessory-things"),
        (29, "eye glasses", "accessory-things"),
        (30, "handbag", "accessory-things"),
        (31, "tie", "accessory-things"),
        (32, "suitcase", "accessory-things"),
        (33, "frisbee", "sports-things"),
        (34, "skis", "sports-things"),
        (35, "snowboard", "sports-things"),
        (36, "sports ball", "sports-things"),
        (37, "kite", "sports-things"),
        (38, "baseball bat", "sports-things"),
        (39, "baseball glove", "sports-things"),
        (40, "skateboard", "sports-things"),
        (41, "surfboard", "sports-things"),
        (42, "tennis racket", "sports-things"),
        (43, "bottle", "kitchen-things"),
        (44, "plate", "kitchen-things"),
        (45, "wine glass", "kitchen-things"),
        (46, "cup", "kitchen-things"),
        (47, "fork", "kitchen-things"),
        (48, "knife", "kitchen-things"),
        (49, "spoon", "kitchen-things"),
        (50, "bowl", "kitchen-things"),
        (51, "banana", "food-things"),
        (52, "apple", "food-things"),
        (53, "sandwich", "food-things"),
        (54, "orange", "food-things"),
        (55, "broccoli", "food-things"),
        (56, "carrot", "food-things"),
        (57, "hot dog", "food-things"),
        (58, "pizza", "food-things"),
        (59, "donut", "food-things"),
        (60, "cake", "food-things"),
        (61, "chair", "furniture-things"),
        (62, "couch", "furniture-things"),
        (63, "potted plant", "furniture-things"),
        (64, "bed", "furniture-things"),
        (65, "mirror", "furniture-things"),
        (66, "dining table", "furniture-things"),
        (67, "window", "furniture-things"),
        (68, "desk", "furniture-things"),
        (69, "toilet", "furniture-things"),
        (70, "door", "furniture-things"),
        (71, "tv", "electronic-things"),
        (72, "laptop", "electronic-things"),
        (73, "mouse", "electronic-things"),
        (74, "remote", "electronic-things"),
        (75, "keyboard", "electronic-things"),
        (76, "cell phone", "electronic-things"),
        (77, "microwave", "appliance-things"),
        (78, "oven", "appliance-things"),
        (79, "toaster", "appliance-things"),
        (80, "sink", "appliance-things"),
        (81, "refrigerator", "appliance-things"),
        (82, "blender", "appliance-things"),
        (83, "book", "indoor-things"),
        (84, "clock", "indoor-things"),
        (85, "vase", "indoor-things"),
        (86, "scissors", "indoor-things"),
        (87, "teddy bear", "indoor-things"),
        (88, "hair drier", "indoor-things"),
        (89, "toothbrush", "indoor-things"),
        (90, "hair brush", "indoor-things"),
        (91, "banner", "textile-stuff"),
        (92, "blanket", "textile-stuff"),
        (93, "branch", "plant-stuff"),
        (94, "bridge", "building-stuff"),
        (95, "building-other", "building-stuff"),
        (96, "bush", "plant-stuff"),
        (97, "cabinet", "furniture-stuff"),
        (98, "cage", "structural-stuff"),
        (99, "cardboard", "rawmaterial-stuff"),
        (100, "carpet", "floor-stuff"),
        (101, "ceiling-other", "ceiling-stuff"),
        (102, "ceiling-tile", "ceiling-stuff"),
        (103, "cloth", "textile-stuff"),
        (104, "clothes", "textile-stuff"),
        (105, "clouds", "sky-stuff"),
        (106, "counter", "furniture-stuff"),
        (107, "cupboard", "furniture-stuff"),
        (108, "curtain", "textile-stuff"),
        (109, "desk-stuff", "furniture-stuff"),
        (110, "dirt", "ground-stuff"),
        (111, "door-stuff", "furniture-stuff"),
        (112, "fence", "structural-stuff"),
        (113, "floor-marble", "floor-stuff"),
        (114, "floor-other", "floor-stuff"),
        (115, "floor-stone", "floor-stuff"),
        (116, "floor-tile", "floor-stuff"),
        (117, "floor-wood", "floor-stuff"),
        (118, "flower", "plant-stuff"),
        (119, "fog", "water-stuff"),
        (120, "food-other", "food-stuff"),
        (121, "fruit", "food-stuff"),
        (122, "furniture-other", "furniture-stuff"),
        (123, "grass", "plant-stuff"),
        (124, "gravel", "ground-stuff"),
        (125, "ground-other", "ground-stuff"),
        (126, "hill", "solid-stuff"),
        (127, "house", "building-stuff"),
        (128, "leaves", "plant-stuff"),
        (129, "light", "furniture-stuff"),
        (130, "mat", "textile-stuff"),
        (131, "metal", "rawmaterial-stuff"),
        (132, "mirror-stuff", "furniture-stuff"),
        (133, "moss", "plant-stuff"),
        (134, "mountain", "solid-stuff"),
        (135, "mud", "ground-stuff"),
        (136, "napkin", "textile-stuff"),
        (137, "net", "structural-stuff"),
        (138, "paper", "rawmaterial-stuff"),
        (139, "pavement", "ground-stuff"),
        (140, "pillow", "textile-stuff"),
        (141, "plant-other", "plant-stuff"),
        (142, "plastic", "rawmaterial-stuff"),
        (143, "platform", "ground-stuff"),
        (144, "playingfield", "ground-stuff"),
        (145, "railing", "structural-stuff"),
        (146, "railroad", "ground-stuff"),
        (147, "river", "water-stuff"),
        (148, "road", "ground-stuff"),
        (149, "rock", "solid-stuff"),
        (150, "roof", "building-stuff"),
        (151, "rug", "textile-stuff"),
        (152, "salad", "food-stuff"),
        (153, "sand", "ground-stuff"),
        (154, "sea", "water-stuff"),
        (155, "shelf", "furniture-stuff"),
        (156, "sky-other", "sky-stuff"),
        (157, "skyscraper", "building-stuff"),
        (158, "snow", "ground-stuff"),
        (159, "solid-other", "solid-stuff"),
        (160, "stairs", "furniture-stuff"),
        (161, "stone", "solid-stuff"),
        (162, "straw", "plant-stuff"),
        (163, "structural-other", "structural-stuff"),
        (164, "table", "furniture-stuff"),
        (165, "tent", "building-stuff"),
        (166, "textile-other", "textile-stuff"),
        (167, "towel", "textile-stuff"),
        (168, "tree", "plant-stuff"),
        (169, "vegetable", "food-stuff"),
        (170, "wall-brick", "wall-stuff"),
        (171, "wall-concrete", "wall-stuff"),
        (172, "wall-other", "wall-stuff"),
        (173, "wall-panel", "wall-stuff"),
        (174, "wall-stone", "wall-stuff"),
        (175, "wall-tile", "wall-stuff"),
        (176, "wall-wood", "wall-stuff"),
        (177, "water-other", "water-stuff"),
        (178, "waterdrops", "water-stuff"),
        (179, "window-blind", "window-stuff"),
        (180, "window-other", "window-stuff"),
        (181, "wood", "solid-stuff"),
    ];

    #[test]
    fn fine_to_coarse_entry_by_entry() {
        let classes = coco27_classes();
        for (fine, name, coarse) in TABLE {
            let got = &classes[usize::from(COCO_FINE_TO_COARSE[fine])].name;
            assert_eq!(got, coarse, "fine {fine} ({name})");
        }
        // Spot checks against the released dictionary's numbers.
        for (fine, coarse) in [(0, 9), (90, 4), (91, 17), (105, 23), (156, 23), (181, 24)] {
            assert_eq!(COCO_FINE_TO_COARSE[fine], coarse, "fine {fine}");
        }
    }

    #[test]
    fn twelve_things_fifteen_stuff() {
        let c = coco27_classes();
        assert_eq!(c.len(), 27);
        assert_eq!(c.iter().filter(|c| c.is_thing == Some(true)).count(), 12);
        assert!(c[..12].iter().all(|c| c.is_thing == Some(true)));
        // Things come from fine 0..=90, stuff from 91..=181; every coarse
        // class is used.
        for (fine, &coarse) in COCO_FINE_TO_COARSE.iter().enumerate() {
            assert_eq!(fine < 91, usize::from(coarse) < FIRST_STUFF, "fine {fine}");
        }
        let mut used = [false; 27];
        COCO_FINE_TO_COARSE
            .iter()
            .for_each(|&c| used[usize::from(c)] = true);
        assert!(used.iter().all(|&u| u));
    }

    /// `images/…/ID.jpg`, `annotations/…/ID.png` (6x4) and a list file.
    fn fixture(ids: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for sub in ["train2017", "val2017"] {
            let (img, ann) = (
                d.path().join("images").join(sub),
                d.path().join("annotations").join(sub),
            );
            std::fs::create_dir_all(&img).unwrap();
            std::fs::create_dir_all(&ann).unwrap();
            for id in ids {
                RgbImage::from_pixel(6, 4, image::Rgb([200, 100, 50]))
                    .save(img.join(format!("{id}.jpg")))
                    .unwrap();
                let fine = [0u8, 91, 181, 255, 100, 1];
                GrayImage::from_fn(6, 4, |x, _| Luma([fine[x as usize]]))
                    .save(ann.join(format!("{id}.png")))
                    .unwrap();
            }
        }
        std::fs::create_dir_all(d.path().join("curated/train2017")).unwrap();
        std::fs::write(
            d.path().join("curated/train2017/list.txt"),
            format!("{}\n\n", ids[..ids.len() - 1].join("\n")),
        )
        .unwrap();
        d
    }

    fn config(root: &Path, extra: &str) -> DatasetConfig {
        let text = format!(
            "kind: coco_stuff27\nroot: {}\ntrain_list: curated/train2017/list.txt\n{extra}",
            root.display()
        );
        from_yaml(&text, Path::new("/")).unwrap()
    }

    #[test]
    fn reads_listed_images_with_coarse_masks() {
        let d = fixture(&["000000000009", "000000000025", "000000000030"]);
        let cfg = config(d.path(), "");
        let ds = cfg.open(Split::Train).unwrap();
        assert_eq!(ds.len(), 2, "the list names two of three");
        assert_eq!(ds.id(1), "000000000025");
        assert_eq!(ds.classes().len(), 27);
        assert_eq!(ds.ignore_index(), 255);
        assert!(ds.has_masks());
        let img = ds.image(0).unwrap();
        assert_eq!(img.dimensions(), (6, 4));
        let m = ds.mask(0).unwrap().unwrap();
        assert_eq!(&m.data[..6], &[9, 17, 24, 255, 13, 11]);
        // No val list: every image of val2017.
        assert_eq!(cfg.open(Split::Val).unwrap().len(), 3);
    }

    #[test]
    fn split_without_annotations_has_no_masks() {
        let d = fixture(&["000000000009", "000000000025"]);
        std::fs::remove_dir_all(d.path().join("annotations/train2017")).unwrap();
        let ds = config(d.path(), "").open(Split::Train).unwrap();
        assert!(!ds.has_masks());
        assert!(ds.mask(0).unwrap().is_none());
    }

    #[test]
    fn bad_inputs_name_their_files() {
        let d = fixture(&["000000000009", "000000000025", "000000000030"]);
        let list = d.path().join("curated/train2017/list.txt");
        // A listed image that is not there.
        std::fs::write(&list, "000000000009\n000000000077\n").unwrap();
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        let s = e.to_string();
        assert!(
            s.contains("000000000077.jpg") && s.contains("list.txt"),
            "{s}"
        );
        let ds = config(d.path(), "skip_bad: true\n")
            .open(Split::Train)
            .unwrap();
        assert_eq!(ds.len(), 1);
        assert!(ds.skipped()[0]
            .file
            .ends_with("images/train2017/000000000077.jpg"));
        // A line that is not an id.
        std::fs::write(&list, "000000000009\n../../etc/passwd\n").unwrap();
        let e = config(d.path(), "").open(Split::Train).err().unwrap();
        assert!(e.to_string().contains("list.txt:2:"), "{e}");
        // A missing annotation.
        std::fs::remove_file(d.path().join("annotations/val2017/000000000025.png")).unwrap();
        let e = config(d.path(), "").open(Split::Val).err().unwrap();
        assert!(
            e.to_string()
                .contains("annotations/val2017/000000000025.png"),
            "{e}"
        );
        // A fine label that COCO-Stuff does not have.
        GrayImage::from_pixel(6, 4, Luma([200]))
            .save(d.path().join("annotations/val2017/000000000030.png"))
            .unwrap();
        let ds = config(d.path(), "skip_bad: true\n")
            .open(Split::Val)
            .unwrap();
        assert_eq!(ds.len(), 1);
        let reasons: Vec<&str> = ds.skipped().iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[1].contains("value 200") && reasons[1].contains("000000000030.png"));
        // An empty image folder, and no image folder.
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("images/val2017")).unwrap();
        let e = config(empty.path(), "").open(Split::Val).err().unwrap();
        assert!(matches!(e, DataError::Empty { .. }) && e.to_string().contains("val2017"));
        let e = config(empty.path(), "").open(Split::Train).err().unwrap();
        assert!(e.to_string().contains("images/train2017"), "{e}");
    }
}
