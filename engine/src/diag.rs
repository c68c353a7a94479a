//! Errors in a pipeline file, each with its place in the file and a hint.

use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::Span;

/// A place in a YAML file (1-based line and column; 0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

impl Loc {
    pub fn of(span: &Span) -> Self {
        span.start()
            .map(|m| Loc {
                line: m.line(),
                column: m.column(),
            })
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(loc: Loc, message: impl Into<String>) -> Self {
        Self {
            loc,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.loc.line, d.loc.column));
        self.items.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        writeln!(
            f,
            "{} has {n} error{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.items {
            write!(
                f,
                "  {}:{}:{}: {}",
                self.file.display(),
                d.loc.line,
                d.loc.column,
                d.message
            )?;
            if let Some(h) = &d.hint {
                write!(f, "\n      hint: {h}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate by edit distance, for "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        // A word that extends a candidate (`batchsize` for `batch`) is as close as a typo.
        .map(|c| {
            let d = levenshtein(word, c);
            let prefix = c.len() >= 3 && (word.starts_with(c) || c.starts_with(word));
            (if prefix { d.min(1) } else { d }, c)
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A hint listing what is allowed, led by the nearest match when there is one.
pub fn suggest(word: &str, candidates: &[&str], what: &str) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`? {what}: {}", candidates.join(", ")),
        None => format!("{what}: {}", candidates.join(", ")),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserialises a YAML mapping into `T` with every problem located: each unknown field
/// (with the nearest known one; serde would stop at the first), then serde's own error at
/// its value. `what` names the owner in messages: "param ... for kind `x`", "field ... of
/// `dataset`". The known fields, and those of nested mappings, are `T::default()`'s: absent
/// fields take its values when `T` says `#[serde(default)]`. The value comes back whenever
/// the known fields deserialise, so that the caller can go on to report its own checks of
/// it beside the unknown fields.
pub fn from_mapping<T>(
    map: &marked_yaml::types::MarkedMappingNode,
    field_word: &str,
    what: &str,
) -> (Option<T>, Vec<Diagnostic>)
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let default = match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    };
    // Every field the type declares: also those its serialised default leaves out
    // (`skip_serializing_if`, which keeps a new param's default out of cache keys).
    let mut known: Vec<&str> = default.keys().map(String::as_str).collect();
    for f in serde_aux::serde_introspection::serde_introspect::<T>() {
        if !known.contains(f) {
            known.push(f);
        }
    }
    // A field whose default is a non-empty object is a nested struct: its keys are checked
    // too. (An empty one may be a free-form map, so it is left alone.)
    let nested: Vec<(&str, Vec<&str>)> = default
        .iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Object(o) if !o.is_empty() => {
                Some((k.as_str(), o.keys().map(String::as_str).collect()))
            }
            _ => None,
        })
        .collect();
    let nested: Vec<(&str, &[&str])> = nested.iter().map(|(k, f)| (*k, f.as_slice())).collect();
    from_mapping_with(map, &known, &nested, field_word, what)
}

/// [`from_mapping`] with the known fields given: `known` for the mapping itself, and for
/// each `(key, fields)` of `nested`, the fields of the mapping under `key`. For types with
/// required fields and no `Default` (e.g. a data set's settings).
pub fn from_mapping_with<T>(
    map: &marked_yaml::types::MarkedMappingNode,
    known: &[&str],
    nested: &[(&str, &[&str])],
    field_word: &str,
    what: &str,
) -> (Option<T>, Vec<Diagnostic>)
where
    T: serde::de::DeserializeOwned,
{
    let mut diags = Vec::new();
    let mut clean = map.clone();
    drop_unknown(&mut clean, known, field_word, what, &mut diags);
    for (key, fields) in nested {
        if let Some(marked_yaml::Node::Mapping(inner)) = clean.get_mut(*key) {
            let owner = format!("`{key}` of {what}");
            drop_unknown(inner, fields, field_word, &owner, &mut diags);
        }
    }
    let clean = marked_yaml::Node::Mapping(clean);
    match marked_yaml::from_node::<T>(&clean) {
        Ok(v) => (Some(v), diags),
        // marked_yaml hands `#[serde(flatten)]` fields their scalars as strings; the same
        // mapping with YAML's scalar types resolved reads them (errors stay marked_yaml's,
        // which carry places).
        Err(e) => {
            if let Ok(v) = serde_json::from_value::<T>(node_to_json(&clean)) {
                return (Some(v), diags);
            }
            let loc = e
                .start_mark()
                .map(|m| Loc {
                    line: m.line(),
                    column: m.column(),
                })
                .unwrap_or(Loc::of(map.span()));
            diags.push(Diagnostic::new(
                loc,
                format!("bad {field_word}s for {what}: {}", e.into_inner()),
            ));
            (None, diags)
        }
    }
}

/// Reports and removes the keys of `map` that are not in `known`.
fn drop_unknown(
    map: &mut marked_yaml::types::MarkedMappingNode,
    known: &[&str],
    field_word: &str,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let unknown: Vec<_> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        let hint = if known.is_empty() {
            format!("{what} takes no {field_word}s")
        } else {
            suggest(key.as_str(), known, &format!("{field_word}s"))
        };
        diags.push(
            Diagnostic::new(
                Loc::of(key.span()),
                format!("unknown {field_word} `{}` for {what}", key.as_str()),
            )
            .hint(hint),
        );
        map.remove(key.as_str());
    }
}

/// The place of `a.b.c` in `map`, or of the nearest mapping holding it: where a check of a
/// deserialised value (which has no places) points.
pub fn locate(map: &marked_yaml::types::MarkedMappingNode, path: &str) -> Loc {
    let mut span = map.span();
    let mut here = Some(map);
    for part in path.split('.') {
        let Some(node) = here.and_then(|m| m.get_node(part)) else {
            break;
        };
        span = node.span();
        here = node.as_mapping();
    }
    Loc::of(span)
}

/// A YAML node as JSON, scalars typed as YAML's core schema would (bool, null, integer,
/// float, else string).
fn node_to_json(node: &marked_yaml::Node) -> serde_json::Value {
    use marked_yaml::Node;
    match node {
        Node::Scalar(s) => {
            let t = s.as_str();
            match t {
                "true" => true.into(),
                "false" => false.into(),
                "null" | "~" => serde_json::Value::Null,
                _ => t
                    .parse::<i64>()
                    .map(Into::into)
                    .or_else(|_| t.parse::<f64>().map(Into::into))
                    .unwrap_or_else(|_| t.into()),
            }
        }
        Node::Sequence(s) => s.iter().map(node_to_json).collect(),
        Node::Mapping(m) => m
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// [`from_mapping`] for a node that must be a mapping.
pub fn from_node<T>(node: &marked_yaml::Node, what: &str) -> Result<T, Vec<Diagnostic>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    match node.as_mapping() {
        Some(m) => match from_mapping(m, "field", &format!("`{what}`")) {
            (Some(v), d) if d.is_empty() => Ok(v),
            (_, d) => Err(d),
        },
        None => Err(vec![Diagnostic::new(
            Loc::of(node.span()),
            format!("`{what}` must be a mapping"),
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_words_only() {
        assert_eq!(closest("kmean", ["kmeans", "label"]), Some("kmeans"));
        assert_eq!(closest("zzzzzz", ["kmeans", "label"]), None);
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Inner {
        n: i64,
        x: f64,
        on: bool,
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Outer {
        #[serde(flatten)]
        inner: Inner,
        name: String,
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Skips {
        a: i64,
        #[serde(skip_serializing_if = "is_zero")]
        t: i64,
    }
    fn is_zero(v: &i64) -> bool {
        *v == 0
    }

    /// A field that the serialised default leaves out is still a known param.
    #[test]
    fn fields_left_out_of_the_serialised_default_are_known() {
        let node = marked_yaml::parse_yaml(0, "{a: 1, t: 2}").unwrap();
        let (v, diags) = from_mapping::<Skips>(node.as_mapping().unwrap(), "param", "kind `t`");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(v, Some(Skips { a: 1, t: 2 }));
    }

    /// Regression: flattened fields got their YAML scalars as strings ("invalid type:
    /// string \"64\", expected i64").
    #[test]
    fn flattened_fields_read_typed_scalars() {
        let node =
            marked_yaml::parse_yaml(0, "{n: 64, x: 1e-3, on: true, name: a, nope: 1}").unwrap();
        let (v, diags) = from_mapping::<Outer>(node.as_mapping().unwrap(), "param", "kind `t`");
        let want = Outer {
            inner: Inner {
                n: 64,
                x: 1e-3,
                on: true,
            },
            name: "a".into(),
        };
        assert_eq!(v, Some(want));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("unknown param `nope`"));
        // A bad value is still an error, at its place.
        let node = marked_yaml::parse_yaml(0, "{n: many}").unwrap();
        let (v, diags) = from_mapping::<Outer>(node.as_mapping().unwrap(), "param", "kind `t`");
        assert!(v.is_none());
        assert!(
            diags[0].message.contains("bad params for kind `t`"),
            "{diags:?}"
        );
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Nested {
        inner: Inner,
        tags: std::collections::BTreeMap<String, u32>,
    }

    #[test]
    fn nested_mappings_are_checked_and_free_maps_are_not() {
        let text = "inner:\n  n: 2\n  m: 3\ntags: {any: 1}\n";
        let node = marked_yaml::parse_yaml(0, text).unwrap();
        let (v, diags) = from_mapping::<Nested>(node.as_mapping().unwrap(), "param", "kind `t`");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0]
            .message
            .contains("unknown param `m` for `inner` of kind `t`"));
        assert_eq!((diags[0].loc.line, diags[0].loc.column), (3, 3));
        assert!(diags[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `n`"));
        let v = v.unwrap();
        assert_eq!(v.inner.n, 2);
        assert_eq!(v.tags["any"], 1);
    }

    #[test]
    fn locate_finds_the_deepest_place_there_is() {
        let node = marked_yaml::parse_yaml(0, "a: 1\nb:\n  c: 2\n").unwrap();
        let map = node.as_mapping().unwrap();
        assert_eq!(locate(map, "b.c"), Loc { line: 3, column: 6 });
        // A field absent from the file points at its parent.
        assert_eq!(locate(map, "b.d").line, 3);
        assert_eq!(locate(map, "z").line, 1);
    }
}
