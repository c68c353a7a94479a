//! The synthetic scenes of [`generator`] as a [`Dataset`]: the default offline data set,
//! generated on demand.

pub mod generator;

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::data::config::KindConfig;
use crate::data::io::pascal_colour;
use crate::data::{ClassInfo, DataError, Dataset, Mask, Split};
use generator::{class_names, generate, SyntheticConfig};

/// Val images are generated from indices starting here, so they never equal
/// train images and do not change when `train_images` does.
const VAL_OFFSET: usize = 1 << 30;

/// Settings of the synthetic data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticDatasetConfig {
    pub train_images: usize,
    pub val_images: usize,
    pub width: u32,
    pub height: u32,
    /// 2..=8.
    pub classes: u8,
    pub seed: u64,
}

impl Default for SyntheticDatasetConfig {
    fn default() -> Self {
        let g = SyntheticConfig::default();
        Self {
            train_images: 64,
            val_images: 16,
            width: g.width,
            height: g.height,
            classes: g.classes,
            seed: g.seed,
        }
    }
}

impl KindConfig for SyntheticDatasetConfig {
    fn resolve(&mut self, _: &Path) {}

    fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (field, n) in [
            ("train_images", self.train_images),
            ("val_images", self.val_images),
        ] {
            if n == 0 {
                out.push((field.to_string(), "must be at least 1".to_string()));
            } else if n > VAL_OFFSET {
                out.push((field.to_string(), format!("must be at most {VAL_OFFSET}")));
            }
        }
        // The generator's own checks read `field: message`.
        for msg in self.generator(1).validate() {
            let (field, rest) = msg.split_once(':').unwrap_or(("", msg.as_str()));
            out.push((field.to_string(), rest.trim().to_string()));
        }
        out
    }
}

impl SyntheticDatasetConfig {
    fn generator(&self, images: usize) -> SyntheticConfig {
        SyntheticConfig {
            images,
            width: self.width,
            height: self.height,
            classes: self.classes,
            seed: self.seed,
        }
    }

    pub(crate) fn open(&self, split: Split) -> Result<SyntheticDataset, DataError> {
        let (n, offset) = match split {
            Split::Train => (self.train_images, 0),
            Split::Val => (self.val_images, VAL_OFFSET),
        };
        if n == 0 {
            return Err(DataError::Config(format!(
                "the synthetic data set has no {split} images"
            )));
        }
        let classes = class_names(self.classes)
            .into_iter()
            .enumerate()
            .map(|(i, name)| ClassInfo {
                name,
                colour: pascal_colour(i + 1),
                is_thing: None,
            })
            .collect();
        Ok(SyntheticDataset {
            gen: self.generator(n),
            offset,
            split,
            classes,
        })
    }
}

pub(crate) struct SyntheticDataset {
    gen: SyntheticConfig,
    offset: usize,
    split: Split,
    classes: Vec<ClassInfo>,
}

impl SyntheticDataset {
    fn check(&self, i: usize) -> Result<usize, DataError> {
        if i < self.gen.images {
            Ok(self.offset + i)
        } else {
            Err(DataError::Index {
                index: i,
                len: self.gen.images,
            })
        }
    }
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.gen.images
    }

    fn id(&self, i: usize) -> String {
        format!("{}-{i:06}", self.split)
    }

    fn image(&self, i: usize) -> Result<RgbImage, DataError> {
        Ok(generate(&self.gen, self.check(i)?).0)
    }

    fn mask(&self, i: usize) -> Result<Option<Mask>, DataError> {
        let gt = generate(&self.gen, self.check(i)?).1;
        Ok(Some(Mask {
            width: gt.width(),
            height: gt.height(),
            data: gt.into_raw().into_iter().map(u16::from).collect(),
        }))
    }

    fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    fn ignore_index(&self) -> u16 {
        255
    }

    fn has_masks(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::from_yaml;
    use super::*;

    fn open(text: &str, split: Split) -> Box<dyn Dataset> {
        from_yaml(text, Path::new("/"))
            .unwrap()
            .open(split)
            .unwrap()
    }

    #[test]
    fn splits_sizes_and_masks() {
        let text = "kind: synthetic\ntrain_images: 4\nval_images: 2\nwidth: 40\nheight: 32\nclasses: 6\nseed: 3\n";
        let train = open(text, Split::Train);
        let val = open(text, Split::Val);
        assert_eq!((train.len(), val.len()), (4, 2));
        assert_eq!(train.id(1), "train-000001");
        assert_eq!(val.id(0), "val-000000");
        assert_eq!(train.classes().len(), 6);
        assert_eq!(train.classes()[0].name, "sky");
        let img = train.image(1).unwrap();
        assert_eq!(img.dimensions(), (40, 32));
        let m = train.mask(1).unwrap().unwrap();
        assert_eq!((m.width, m.height), (40, 32));
        assert!(m.data.iter().all(|&v| v < 6));
        // Deterministic, and val differs from train.
        assert_eq!(open(text, Split::Train).image(1).unwrap(), img);
        for i in 0..2 {
            for j in 0..4 {
                assert_ne!(val.image(i).unwrap(), train.image(j).unwrap());
            }
        }
        // Val does not depend on the size of train.
        let more = open(
            &text.replace("train_images: 4", "train_images: 9"),
            Split::Val,
        );
        assert_eq!(more.image(0).unwrap(), val.image(0).unwrap());
        assert!(matches!(train.image(4), Err(DataError::Index { .. })));
    }

    #[test]
    fn defaults() {
        let ds = open("kind: synthetic\n", Split::Train);
        assert_eq!(ds.len(), 64);
        assert_eq!(open("kind: synthetic\n", Split::Val).len(), 16);
        assert!(ds.has_masks());
        let e = from_yaml("kind: synthetic\nval_images: 0\n", Path::new("/")).unwrap_err();
        assert!(e[0].starts_with("val_images:"), "{e:?}");
    }
}
