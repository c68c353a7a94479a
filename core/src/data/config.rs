//! Reading a data set's settings: the dispatch over `kind`, and what each kind's settings
//! struct adds to plain deserialisation (nested mappings, path resolution, value checks).
//!
//! How the mapping is read is the caller's: the pipeline reads it with every problem
//! located (`picie-stages`' `sections.rs`), [`from_yaml`] with serde alone (tests, tools).

use std::path::Path;

use marked_yaml::Node;
use serde::de::DeserializeOwned;

use super::{DatasetConfig, KINDS};

/// What each kind's settings struct adds to plain deserialisation.
pub trait KindConfig: DeserializeOwned {
    /// Keys holding nested mappings, with those mappings' field names (checked too).
    fn nested() -> Vec<(&'static str, &'static [&'static str])> {
        Vec::new()
    }
    /// Makes relative paths absolute.
    fn resolve(&mut self, base_dir: &Path);
    /// Problems with the values: (field path like `train.images`, message).
    fn validate(&self) -> Vec<(String, String)>;
}

/// Reads one kind's settings (everything of the mapping but `kind`).
pub trait KindReader {
    type Error;
    fn read<T: KindConfig>(self) -> Result<T, Self::Error>;
}

impl DatasetConfig {
    /// Reads the settings of data set kind `kind` with `reader`; `None` for an unknown kind
    /// (the kinds are [`KINDS`]). The one place that maps a kind's name to its settings.
    pub fn read_kind<R: KindReader>(kind: &str, reader: R) -> Option<Result<Self, R::Error>> {
        Some(match kind {
            "synthetic" => reader.read().map(DatasetConfig::Synthetic),
            "folder" => reader.read().map(DatasetConfig::Folder),
            "coco_stuff27" => reader.read().map(DatasetConfig::CocoStuff27),
            "cityscapes27" => reader.read().map(DatasetConfig::Cityscapes27),
            _ => return None,
        })
    }
}

/// Parses settings from YAML text with serde alone (tests and tools): the first problem,
/// or every value check that fails (as `field: message`), relative paths resolved against
/// `base_dir`. The pipeline reads `dataset:` with every problem placed instead.
pub fn from_yaml(text: &str, base_dir: &Path) -> Result<DatasetConfig, Vec<String>> {
    let node = marked_yaml::parse_yaml(0, text).map_err(|e| vec![format!("invalid YAML: {e}")])?;
    let map = node
        .as_mapping()
        .ok_or_else(|| vec!["a data set must be a mapping with a `kind`".to_string()])?;
    let kind = map
        .get_scalar("kind")
        .map(|s| s.as_str().to_string())
        .ok_or_else(|| vec!["the data set has no `kind`".to_string()])?;
    let mut rest = map.clone();
    rest.remove("kind");
    let reader = Plain(Node::Mapping(rest), base_dir);
    DatasetConfig::read_kind(&kind, reader).unwrap_or_else(|| {
        Err(vec![format!(
            "unknown data set kind `{kind}` (one of {})",
            KINDS.join(", ")
        )])
    })
}

struct Plain<'a>(Node, &'a Path);

impl KindReader for Plain<'_> {
    type Error = Vec<String>;
    fn read<T: KindConfig>(self) -> Result<T, Vec<String>> {
        let mut cfg: T = marked_yaml::from_node(&self.0).map_err(|e| vec![e.to_string()])?;
        cfg.resolve(self.1);
        let problems: Vec<String> = cfg
            .validate()
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems)
        }
    }
}

/// The field names serde expects for `T`: asks `T`'s `Deserialize` impl to read from a
/// deserializer that only records what it is asked for. (Empty for types that are not
/// plain structs, e.g. with `#[serde(flatten)]`.)
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Grab<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Grab<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Grab(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::super::{FolderConfig, SplitDirs};
    use super::*;

    #[test]
    fn field_names_come_from_serde() {
        let f = struct_fields::<SplitDirs>();
        assert_eq!(f, &["images", "masks"]);
        assert!(struct_fields::<FolderConfig>().contains(&"ignore_index"));
    }

    #[test]
    fn plain_reading_checks_kind_fields_and_values() {
        let e = from_yaml("root: x\n", Path::new("/")).unwrap_err();
        assert!(e[0].contains("no `kind`"), "{e:?}");
        let e = from_yaml("kind: pascal\n", Path::new("/")).unwrap_err();
        assert!(e[0].contains("unknown data set kind `pascal`"), "{e:?}");
        let e = from_yaml("kind: synthetic\nbogus: 1\n", Path::new("/")).unwrap_err();
        assert!(e[0].contains("bogus"), "{e:?}");
        let e = from_yaml("kind: synthetic\nclasses: 12\nwidth: 4\n", Path::new("/")).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("classes:")), "{e:?}");
    }

    #[test]
    fn relative_paths_resolve_against_base_dir() {
        let c = from_yaml(
            "kind: folder\nroot: data/camvid\nnum_classes: 3\ntrain: {images: train}\n",
            Path::new("/pipelines"),
        )
        .unwrap();
        let DatasetConfig::Folder(f) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(f.root, Path::new("/pipelines/data/camvid"));
        assert_eq!(f.train.images, Path::new("/pipelines/data/camvid/train"));
        let c = from_yaml(
            "kind: folder\nroot: /abs\nnum_classes: 3\ntrain: {images: /else/where}\n",
            Path::new("/pipelines"),
        )
        .unwrap();
        assert_eq!(c.canonical()["root"], "/abs");
        assert_eq!(c.canonical()["train"]["images"], "/else/where");
    }
}
