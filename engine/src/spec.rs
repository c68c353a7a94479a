//! The pipeline file as written: YAML walked by hand so that every problem is reported at
//! once with its line and column (serde would stop at the first one).

use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use crate::diag::{suggest, Diagnostic, Diagnostics, Loc};

pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;

#[derive(Debug, Clone)]
pub struct Spec {
    pub file: PathBuf,
    pub name: String,
    pub seed: u64,
    /// `seeds:`: run the pipeline once per seed (see [`crate::seeds`]); empty for one run
    /// with `seed`.
    pub seeds: Vec<u64>,
    /// A folder, resolved against the pipeline file's folder when relative, or an object
    /// store URL as written (`s3://bucket/prefix`, `gs://`, `az://`; see [`crate::remote`]).
    pub store: PathBuf,
    pub channel_capacity: usize,
    /// The application's top-level sections as written (see [`crate::SectionDef`]).
    pub sections: std::collections::BTreeMap<String, Node>,
    pub stages: Vec<StageSpec>,
    pub epoch_loop: Option<LoopSpec>,
}

#[derive(Debug, Clone)]
pub struct LoopSpec {
    pub epochs: u32,
    pub loc: Loc,
    pub stages: Vec<StageSpec>,
}

#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub name_loc: Loc,
    pub kind: String,
    pub kind_loc: Loc,
    pub params: Option<Node>,
    pub inputs: Vec<InputSpec>,
    pub in_loop: bool,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub port: String,
    pub port_loc: Loc,
    pub source: Ref,
    pub epoch: EpochSel,
    /// For `epoch: prev`: what the first epoch reads instead (none: the input is absent).
    pub first: Option<Ref>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub stage: String,
    pub output: String,
    pub loc: Loc,
}

/// Which epoch of a loop stage an input refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochSel {
    /// Inside the loop: this epoch; outside: the last one.
    Same,
    Prev,
    Last,
    At(u32),
}

const TOP_KEYS: &[&str] = &[
    "name",
    "seed",
    "seeds",
    "store",
    "channel_capacity",
    "stages",
    "loop",
];
const LOOP_KEYS: &[&str] = &["epochs", "stages"];
const STAGE_KEYS: &[&str] = &["name", "kind", "params", "inputs"];
const INPUT_KEYS: &[&str] = &["from", "epoch", "first"];

/// Reads a pipeline file whose top level may also hold the application's `sections`.
/// Problems go into `diags`; `None` only when the text is not YAML.
pub fn parse(text: &str, file: &Path, sections: &[&str], diags: &mut Diagnostics) -> Option<Spec> {
    let root = match marked_yaml::parse_yaml(0, text) {
        Ok(n) => n,
        Err(e) => {
            diags.push(load_error(&e));
            return None;
        }
    };
    let map = root.as_mapping()?;
    let top: Vec<&str> = TOP_KEYS.iter().chain(sections).copied().collect();
    check_keys(map, &top, "top-level field", diags);

    let name = match map.get_node("name") {
        Some(n) => scalar(n, "name", diags).unwrap_or_default(),
        None => {
            diags.push(
                Diagnostic::new(Loc::of(map.span()), "missing field `name`")
                    .hint("every pipeline has a run name, e.g. `name: my-run`"),
            );
            String::new()
        }
    };
    if !name.is_empty() && !valid_name(&name) {
        diags.push(
            Diagnostic::new(
                loc_of(map.get_node("name")),
                format!("bad run name `{name}`"),
            )
            .hint("use letters, digits, `_` and `-`"),
        );
    }
    let seed = map
        .get_node("seed")
        .and_then(|n| parse_scalar::<u64>(n, "seed", "a non-negative integer", diags))
        .unwrap_or(0);
    let seeds = map
        .get_node("seeds")
        .map(|n| seed_list(n, diags))
        .unwrap_or_default();
    let base = file.parent().unwrap_or(Path::new("."));
    let store_node = map.get_node("store");
    let store = store_node
        .and_then(|n| scalar(n, "store", diags))
        .unwrap_or_else(|| "artifacts".into());
    // A folder (relative to the file), `file://`, or an object store URL kept as written.
    let store = match crate::remote::Location::parse(&store) {
        Ok(crate::remote::Location::Local(dir)) => base.join(dir),
        Ok(crate::remote::Location::Remote { url, .. }) => PathBuf::from(url),
        Err(message) => {
            diags.push(
                Diagnostic::new(loc_of(store_node), message).hint(
                    "give a folder, `file:///abs/dir`, `s3://bucket/prefix` (AWS_* variables), `gs://bucket/prefix` (GOOGLE_*) or `az://container/prefix` (AZURE_STORAGE_*)",
                ),
            );
            PathBuf::from(store)
        }
    };
    let channel_capacity = map
        .get_node("channel_capacity")
        .and_then(|n| {
            let v = parse_scalar::<usize>(n, "channel_capacity", "a positive integer", diags)?;
            if v == 0 {
                diags.push(Diagnostic::new(
                    Loc::of(n.span()),
                    "`channel_capacity` must be at least 1",
                ));
                None
            } else {
                Some(v)
            }
        })
        .unwrap_or(DEFAULT_CHANNEL_CAPACITY);
    let sections = sections
        .iter()
        .filter_map(|name| Some((name.to_string(), map.get_node(name)?.clone())))
        .collect();
    let stages = map
        .get_node("stages")
        .map(|n| stage_list(n, false, diags))
        .unwrap_or_default();
    let epoch_loop = map.get_node("loop").and_then(|n| loop_spec(n, diags));
    if stages.is_empty() && epoch_loop.as_ref().is_none_or(|l| l.stages.is_empty()) {
        diags.push(
            Diagnostic::new(Loc::of(map.span()), "the pipeline has no stages")
                .hint("add a `stages:` list (and optionally a `loop:`)"),
        );
    }
    Some(Spec {
        file: file.to_path_buf(),
        name,
        seed,
        seeds,
        store,
        channel_capacity,
        sections,
        stages,
        epoch_loop,
    })
}

fn loop_spec(node: &Node, diags: &mut Diagnostics) -> Option<LoopSpec> {
    let Some(map) = node.as_mapping() else {
        diags.push(
            Diagnostic::new(Loc::of(node.span()), "`loop` must be a mapping")
                .hint("e.g. `loop: {epochs: 3, stages: [...]}`"),
        );
        return None;
    };
    check_keys(map, LOOP_KEYS, "field of `loop`", diags);
    let epochs = match map.get_node("epochs") {
        Some(n) => match parse_scalar::<u32>(n, "loop.epochs", "a positive integer", diags) {
            Some(0) => {
                diags.push(Diagnostic::new(
                    Loc::of(n.span()),
                    "`loop.epochs` must be at least 1",
                ));
                1
            }
            Some(e) => e,
            None => 1,
        },
        None => {
            diags.push(Diagnostic::new(
                Loc::of(map.span()),
                "missing field `epochs` in `loop`",
            ));
            1
        }
    };
    let stages = match map.get_node("stages") {
        Some(n) => stage_list(n, true, diags),
        None => {
            diags.push(Diagnostic::new(
                Loc::of(map.span()),
                "missing field `stages` in `loop`",
            ));
            Vec::new()
        }
    };
    Some(LoopSpec {
        epochs,
        loc: Loc::of(map.span()),
        stages,
    })
}

fn stage_list(node: &Node, in_loop: bool, diags: &mut Diagnostics) -> Vec<StageSpec> {
    let Some(seq) = node.as_sequence() else {
        diags.push(
            Diagnostic::new(Loc::of(node.span()), "`stages` must be a list")
                .hint("each item is `- name: ...\\n  kind: ...`"),
        );
        return Vec::new();
    };
    seq.iter()
        .filter_map(|n| stage(n, in_loop, diags))
        .collect()
}

fn stage(node: &Node, in_loop: bool, diags: &mut Diagnostics) -> Option<StageSpec> {
    let Some(map) = node.as_mapping() else {
        diags.push(Diagnostic::new(
            Loc::of(node.span()),
            "a stage must be a mapping with `name` and `kind`",
        ));
        return None;
    };
    check_keys(map, STAGE_KEYS, "stage field", diags);
    let loc = Loc::of(map.span());
    let (name, name_loc) = required(map, "name", "stage", diags);
    if !name.is_empty() && !valid_name(&name) {
        diags.push(
            Diagnostic::new(name_loc, format!("bad stage name `{name}`"))
                .hint("use letters, digits, `_` and `-` (`.` and `@` separate references)"),
        );
    }
    let (kind, kind_loc) = required(map, "kind", "stage", diags);
    let params = map.get_node("params").cloned();
    if let Some(p) = &params {
        if p.as_mapping().is_none() && !is_null(p) {
            diags.push(Diagnostic::new(
                Loc::of(p.span()),
                format!("`params` of stage `{name}` must be a mapping"),
            ));
        }
    }
    let mut inputs = Vec::new();
    if let Some(n) = map.get_node("inputs") {
        match n.as_mapping() {
            Some(m) => {
                for (port, value) in m.iter() {
                    if let Some(i) = input(port, value, diags) {
                        inputs.push(i);
                    }
                }
            }
            None if is_null(n) => {}
            None => diags.push(
                Diagnostic::new(Loc::of(n.span()), "`inputs` must be a mapping")
                    .hint("e.g. `inputs: {features: extract.features}`"),
            ),
        }
    }
    Some(StageSpec {
        name,
        name_loc,
        kind,
        kind_loc,
        params,
        inputs,
        in_loop,
        loc,
    })
}

fn input(port: &MarkedScalarNode, value: &Node, diags: &mut Diagnostics) -> Option<InputSpec> {
    let port_loc = Loc::of(port.span());
    let port = port.as_str().to_string();
    let (source, epoch, first) = match value {
        Node::Scalar(s) => {
            let (r, e) = parse_ref(s.as_str(), Loc::of(s.span()), diags)?;
            (r, e, None)
        }
        Node::Mapping(m) => {
            check_keys(m, INPUT_KEYS, "input field", diags);
            let (from, from_loc) = required(m, "from", "input", diags);
            let (source, mut epoch) = parse_ref(&from, from_loc, diags)?;
            if let Some(e) = m.get_node("epoch") {
                let loc = Loc::of(e.span());
                epoch = match scalar(e, "epoch", diags)?.as_str() {
                    "prev" | "previous" => EpochSel::Prev,
                    "last" => EpochSel::Last,
                    "same" => EpochSel::Same,
                    other => match other.parse::<u32>() {
                        Ok(n) if n >= 1 => EpochSel::At(n),
                        _ => {
                            diags.push(
                                Diagnostic::new(loc, format!("bad epoch `{other}`"))
                                    .hint("use prev, last, same or an epoch number from 1"),
                            );
                            EpochSel::Same
                        }
                    },
                };
            }
            let first = match m.get_node("first") {
                Some(f) => {
                    let s = scalar(f, "first", diags)?;
                    let (r, e) = parse_ref(&s, Loc::of(f.span()), diags)?;
                    if e != EpochSel::Same {
                        diags.push(Diagnostic::new(
                            r.loc,
                            "`first` names a plain `stage.output`, without an epoch",
                        ));
                    }
                    Some(r)
                }
                None => None,
            };
            (source, epoch, first)
        }
        Node::Sequence(s) => {
            diags.push(
                Diagnostic::new(
                    Loc::of(s.span()),
                    format!("input `{port}` must be a reference"),
                )
                .hint("write `stage.output`, or `{from: stage.output, epoch: prev}`"),
            );
            return None;
        }
    };
    Some(InputSpec {
        port,
        port_loc,
        source,
        epoch,
        first,
    })
}

/// `stage.output`, optionally followed by `@prev`, `@last` or `@N`.
fn parse_ref(text: &str, loc: Loc, diags: &mut Diagnostics) -> Option<(Ref, EpochSel)> {
    let (body, epoch) = match text.split_once('@') {
        Some((b, "prev")) => (b, EpochSel::Prev),
        Some((b, "last")) => (b, EpochSel::Last),
        Some((b, n)) => match n.parse::<u32>() {
            Ok(n) if n >= 1 => (b, EpochSel::At(n)),
            _ => {
                diags.push(
                    Diagnostic::new(loc, format!("bad epoch `@{n}` in `{text}`"))
                        .hint("use @prev, @last or @N with N from 1"),
                );
                return None;
            }
        },
        None => (text, EpochSel::Same),
    };
    match body.split_once('.') {
        Some((stage, output)) if !stage.is_empty() && !output.is_empty() => Some((
            Ref {
                stage: stage.to_string(),
                output: output.to_string(),
                loc,
            },
            epoch,
        )),
        _ => {
            diags.push(
                Diagnostic::new(loc, format!("`{text}` is not a reference"))
                    .hint("write `stage.output`, e.g. `extract.features`"),
            );
            None
        }
    }
}

fn required(
    map: &MarkedMappingNode,
    key: &str,
    what: &str,
    diags: &mut Diagnostics,
) -> (String, Loc) {
    match map.get_node(key) {
        Some(n) => (scalar(n, key, diags).unwrap_or_default(), Loc::of(n.span())),
        None => {
            diags.push(Diagnostic::new(
                Loc::of(map.span()),
                format!("missing field `{key}` in {what}"),
            ));
            (String::new(), Loc::of(map.span()))
        }
    }
}

fn check_keys(map: &MarkedMappingNode, allowed: &[&str], what: &str, diags: &mut Diagnostics) {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            diags.push(
                Diagnostic::new(
                    Loc::of(key.span()),
                    format!("unknown {what} `{}`", key.as_str()),
                )
                .hint(suggest(key.as_str(), allowed, "allowed")),
            );
        }
    }
}

fn scalar(node: &Node, field: &str, diags: &mut Diagnostics) -> Option<String> {
    match node.as_scalar() {
        Some(s) => Some(s.as_str().to_string()),
        None => {
            diags.push(Diagnostic::new(
                Loc::of(node.span()),
                format!("`{field}` must be a single value"),
            ));
            None
        }
    }
}

fn parse_scalar<T: std::str::FromStr>(
    node: &Node,
    field: &str,
    expected: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    let s = scalar(node, field, diags)?;
    match s.trim().parse::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            diags.push(Diagnostic::new(
                Loc::of(node.span()),
                format!("`{field}` must be {expected}, not `{s}`"),
            ));
            None
        }
    }
}

/// `seeds: [0, 1, 2]`: distinct non-negative integers, at least one.
fn seed_list(node: &Node, diags: &mut Diagnostics) -> Vec<u64> {
    let Some(items) = node.as_sequence() else {
        diags.push(
            Diagnostic::new(Loc::of(node.span()), "`seeds` must be a list")
                .hint("e.g. `seeds: [0, 1, 2]`"),
        );
        return Vec::new();
    };
    if items.is_empty() {
        diags.push(
            Diagnostic::new(Loc::of(node.span()), "`seeds` is empty")
                .hint("list at least one seed, or remove `seeds` for one run with `seed`"),
        );
    }
    let mut seeds = Vec::new();
    for item in items.iter() {
        if let Some(v) = parse_scalar::<u64>(item, "a seed", "a non-negative integer", diags) {
            if seeds.contains(&v) {
                diags.push(Diagnostic::new(
                    Loc::of(item.span()),
                    format!("seed {v} is listed twice"),
                ));
            } else {
                seeds.push(v);
            }
        }
    }
    seeds
}

fn is_null(node: &Node) -> bool {
    node.as_scalar()
        .is_some_and(|s| matches!(s.as_str(), "" | "~" | "null"))
}

fn loc_of(node: Option<&Node>) -> Loc {
    node.map(|n| Loc::of(n.span())).unwrap_or_default()
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn load_error(e: &marked_yaml::LoadError) -> Diagnostic {
    use marked_yaml::LoadError as E;
    let m = match e {
        E::TopLevelMustBeMapping(m)
        | E::TopLevelMustBeSequence(m)
        | E::UnexpectedAnchor(m)
        | E::MappingKeyMustBeScalar(m)
        | E::UnexpectedTag(m) => Some(*m),
        E::ScanError(m, _) => Some(*m),
        E::DuplicateKey(k) => k.key.span().start().copied(),
    };
    let loc = m
        .map(|m| Loc {
            line: m.line(),
            column: m.column(),
        })
        .unwrap_or_default();
    Diagnostic::new(loc, format!("not valid YAML: {e}"))
}
