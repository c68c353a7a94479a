//! Reading a `dataset:` mapping of the pipeline file into a [`DatasetConfig`].
//!
//! serde stops at the first problem; a person fixing a pipeline file wants
//! them all. So unknown keys are found (and dropped) before deserialising,
//! against the field names serde itself knows, and checks of the values run
//! after it; each problem keeps the line and column it came from.

use std::fmt;
use std::path::Path;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};
use serde::de::DeserializeOwned;

use super::{
    CityscapesConfig, CocoConfig, DatasetConfig, FolderConfig, SyntheticDatasetConfig, KINDS,
};

/// One problem in a `dataset:` mapping (1-based line and column; 0 when
/// the place is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigIssue {
    fn at(span: &Span, message: impl Into<String>) -> Self {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// What each kind's settings struct adds to plain deserialisation.
pub(crate) trait KindConfig: DeserializeOwned {
    /// Keys holding nested mappings whose own keys are checked too, with
    /// those mappings' field names.
    fn nested() -> Vec<(&'static str, &'static [&'static str])> {
        Vec::new()
    }
    /// Makes relative paths absolute.
    fn resolve(&mut self, base_dir: &Path);
    /// Problems with the values: (field path like `train.images`, message).
    fn validate(&self) -> Vec<(String, String)>;
}

pub(crate) fn parse(node: &Node, base_dir: &Path) -> Result<DatasetConfig, Vec<ConfigIssue>> {
    let Some(map) = node.as_mapping() else {
        return Err(vec![ConfigIssue::at(
            node.span(),
            "a data set must be a mapping with a `kind`",
        )]);
    };
    let kinds = KINDS.join(", ");
    let Some(kind_node) = map.get_node("kind") else {
        return Err(vec![ConfigIssue::at(
            map.span(),
            format!("the data set has no `kind` (one of {kinds})"),
        )]);
    };
    let Some(kind) = kind_node.as_scalar().map(|s| s.as_str()) else {
        return Err(vec![ConfigIssue::at(
            kind_node.span(),
            format!("`kind` must be one of {kinds}"),
        )]);
    };
    match kind {
        "synthetic" => {
            parse_kind::<SyntheticDatasetConfig>(kind, map, base_dir).map(DatasetConfig::Synthetic)
        }
        "folder" => parse_kind::<FolderConfig>(kind, map, base_dir).map(DatasetConfig::Folder),
        "coco_stuff27" => {
            parse_kind::<CocoConfig>(kind, map, base_dir).map(DatasetConfig::CocoStuff27)
        }
        "cityscapes27" => {
            parse_kind::<CityscapesConfig>(kind, map, base_dir).map(DatasetConfig::Cityscapes27)
        }
        other => Err(vec![ConfigIssue::at(
            kind_node.span(),
            format!("unknown data set kind `{other}` (one of {kinds})"),
        )]),
    }
}

fn parse_kind<T: KindConfig>(
    kind: &str,
    map: &MarkedMappingNode,
    base_dir: &Path,
) -> Result<T, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    let mut clean = map.clone();
    clean.remove("kind");
    let known = struct_fields::<T>();
    drop_unknown(&mut clean, known, &format!("kind `{kind}`"), &mut issues);
    for (key, fields) in T::nested() {
        if let Some(Node::Mapping(inner)) = clean.get_mut(key) {
            drop_unknown(inner, fields, &format!("`{key}`"), &mut issues);
        }
    }
    let mut cfg = match marked_yaml::from_node::<T>(&Node::Mapping(clean)) {
        Ok(c) => c,
        Err(e) => {
            let (line, column) = e
                .start_mark()
                .map(|m| (m.line(), m.column()))
                .or_else(|| map.span().start().map(|m| (m.line(), m.column())))
                .unwrap_or((0, 0));
            issues.push(ConfigIssue {
                line,
                column,
                message: format!("bad settings for kind `{kind}`: {}", e.into_inner()),
            });
            return Err(issues);
        }
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    cfg.resolve(base_dir);
    for (field, message) in cfg.validate() {
        issues.push(ConfigIssue::at(
            locate(map, &field),
            format!("bad value for `{field}`: {message}"),
        ));
    }
    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(issues)
    }
}

/// Reports and removes the keys of `map` that are not in `known`.
fn drop_unknown(
    map: &mut MarkedMappingNode,
    known: &[&str],
    owner: &str,
    issues: &mut Vec<ConfigIssue>,
) {
    let unknown: Vec<_> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        issues.push(ConfigIssue::at(
            key.span(),
            format!(
                "unknown field `{}` for {owner} (expected one of: {})",
                key.as_str(),
                known.join(", ")
            ),
        ));
        map.remove(key.as_str());
    }
}

/// The span of `a.b.c` in `map`, or of the nearest mapping holding it.
fn locate<'a>(map: &'a MarkedMappingNode, path: &str) -> &'a Span {
    let mut span = map.span();
    let mut here = Some(map);
    for part in path.split('.') {
        let Some(node) = here.and_then(|m| m.get_node(part)) else {
            break;
        };
        span = node.span();
        here = node.as_mapping();
    }
    span
}

/// The field names serde expects for `T`: asks `T`'s `Deserialize` impl to
/// read from a deserializer that only records what it is asked for.
pub(crate) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
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
    use super::super::{from_yaml, SplitDirs};
    use super::*;

    fn issues(text: &str) -> Vec<ConfigIssue> {
        from_yaml(text, Path::new("/base")).unwrap_err()
    }

    #[test]
    fn field_names_come_from_serde() {
        let f = struct_fields::<SplitDirs>();
        assert_eq!(f, &["images", "masks"]);
        assert!(struct_fields::<FolderConfig>().contains(&"ignore_index"));
    }

    #[test]
    fn every_unknown_field_is_listed_with_its_place() {
        let text =
            "kind: folder\nroot: data\nbogus: 1\ntrain:\n  images: a\n  mask: b\nalso_bad: x\n";
        let got = issues(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].message.contains("`bogus`"), "{got:?}");
        assert_eq!((got[0].line, got[0].column), (3, 1));
        assert!(got[1].message.contains("`also_bad`"), "{got:?}");
        assert_eq!(got[1].line, 7);
        assert!(got[2].message.contains("`mask`") && got[2].message.contains("`train`"));
        assert_eq!((got[2].line, got[2].column), (6, 3));
    }

    #[test]
    fn kind_is_required_and_checked() {
        let got = issues("root: x\n");
        assert!(got[0].message.contains("no `kind`"), "{got:?}");
        let got = issues("kind: pascal\n");
        assert!(got[0].message.contains("unknown data set kind `pascal`"));
        assert_eq!((got[0].line, got[0].column), (1, 7));
        let got = issues("- a\n");
        assert!(got[0].message.contains("mapping"));
    }

    #[test]
    fn type_errors_have_a_place() {
        let got = issues("kind: synthetic\nwidth: wide\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].line, 2, "{got:?}");
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
            .any(|i| i.line == 2 && i.message.contains("classes")));
        assert!(got
            .iter()
            .any(|i| i.line == 3 && i.message.contains("width")));
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
