//! From a parsed spec to a validated, unrolled, keyed DAG.
//!
//! Every problem is collected with its YAML place before anything runs. Loop stages are
//! copied once per epoch (`extract@1`, `extract@2`, ...) so the plan is a plain DAG whose
//! nodes carry their epoch. Each node's key is a blake3 over a canonical JSON of what
//! determines its outputs: kind, code version, params, seed, epoch, the keys of its inputs,
//! the application's provenance fields (its version, library versions) and the top-level
//! sections the kind reads (global ones, such as the device class, for every kind).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::diag::{suggest, Diagnostic, Diagnostics};
use crate::error::Error;
use crate::section::{self, Section, Sections};
use crate::shard::Shard;
use crate::spec::{self, EpochSel, InputSpec, Spec, StageSpec};
use crate::stage::{Configured, Mode, Port, Registry};

/// One node of the unrolled graph.
#[derive(Clone)]
pub struct PlanNode {
    pub name: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub epoch: Option<u32>,
    pub configured: Arc<dyn Configured>,
    pub inputs: Vec<PlanInput>,
    pub outputs: Vec<Port>,
    /// The sections this node reads: those its kind lists, and the global ones.
    pub sections: Sections,
    pub key: String,
    /// Stream-connected group (an index into `nodes`): a group's stages start together.
    pub group: usize,
    /// Output name -> key (stream outputs too: downstream keys are built from them).
    pub output_keys: BTreeMap<String, String>,
    pub provenance: serde_json::Value,
    /// In a sharded run, what part of which node this one computes.
    pub part: Option<PartOf>,
    /// In a sharded run, how many parts this combine node joins (0: not a combine node).
    pub parts: u32,
    /// In a sharded run of a node that takes several rounds ([`crate::Stage::rounds`]):
    /// (this node's round, the rounds), for its parts and joins alike.
    pub round: Option<(u32, u32)>,
}

impl PlanNode {
    /// A join of a round before the last: like a part, only needed for what reads it.
    pub fn is_between_rounds(&self) -> bool {
        self.parts > 0 && self.round.is_some_and(|(r, n)| r + 1 < n)
    }
}

/// A part node's place: its part, and the key and stream group of the node it is part of.
#[derive(Clone, Debug)]
pub struct PartOf {
    pub shard: Shard,
    /// The round of a node that takes several (0 otherwise).
    pub round: u32,
    pub key: String,
    pub group: usize,
}

/// What a [`crate::stage::PlanCheck`] found: a problem at node `node` (an index into
/// [`Plan::nodes`]), placed at its param `field` when given, else at the stage's name.
/// The same problem found at several epochs of a loop stage is reported once.
pub struct PlanProblem {
    pub node: usize,
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Clone)]
pub struct PlanInput {
    pub port: Port,
    /// (producer node index, producer output name); `None` for an absent optional input.
    pub source: Option<(usize, String)>,
}

impl PlanNode {
    pub fn has_artifact_outputs(&self) -> bool {
        self.outputs.iter().any(|p| p.mode == Mode::Artifact)
    }
}

pub struct Plan {
    pub spec: Spec,
    /// Every section the file gave (or that has a default), by name.
    pub sections: Sections,
    /// Names of the global sections, in registration order.
    pub global_sections: Vec<&'static str>,
    /// The application's version, recorded in manifests.
    pub version: String,
    pub(crate) after_stage: Option<fn()>,
    /// Nodes in a topological order.
    pub nodes: Vec<PlanNode>,
    /// The part this worker computes first, when the run is sharded ([`Plan::into_sharded`]).
    pub shard: Option<Shard>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.spec.name)
            .field("sections", &self.sections)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Plan {
    /// Reads, validates and unrolls a pipeline file.
    pub fn load(path: &Path, registry: &Registry) -> Result<Plan, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadPipeline {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path, registry)
    }

    /// The pipeline file's top level (name, seeds, store, ...) without planning it: for
    /// tools that only need to find its runs, even where its data or weights are absent.
    pub fn read_spec(path: &Path, registry: &Registry) -> Result<Spec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadPipeline {
            path: path.to_path_buf(),
            source,
        })?;
        let mut diags = Diagnostics::new(path);
        let names: Vec<&str> = registry.sections().iter().map(|d| d.name).collect();
        match spec::parse(&text, path, &names, &mut diags) {
            Some(s) if diags.is_empty() => Ok(s),
            _ => {
                diags.sort();
                Err(Error::Invalid(diags))
            }
        }
    }

    pub fn from_str(text: &str, path: &Path, registry: &Registry) -> Result<Plan, Error> {
        let mut diags = Diagnostics::new(path);
        let names: Vec<&str> = registry.sections().iter().map(|d| d.name).collect();
        let spec = spec::parse(text, path, &names, &mut diags);
        let plan = spec.and_then(|s| build(s, registry, &mut diags));
        match plan {
            Some(p) if diags.is_empty() => Ok(p),
            _ => {
                diags.sort();
                Err(Error::Invalid(diags))
            }
        }
    }

    /// The same pipeline with another seed, as run `NAME-seedN` of a sweep (see
    /// [`crate::seeds`]): every key is recomputed, so nodes that do not depend on the seed
    /// keep theirs.
    pub fn with_seed(&self, seed: u64, registry: &Registry) -> Result<Plan, Error> {
        let mut spec = self.spec.clone();
        spec.seed = seed;
        spec.name = crate::seeds::member_name(&self.spec.name, seed);
        let mut diags = Diagnostics::new(&spec.file);
        match build(spec, registry, &mut diags) {
            Some(p) if diags.is_empty() => Ok(p),
            _ => {
                diags.sort();
                Err(Error::Invalid(diags))
            }
        }
    }

    /// A section by name, as the application's type.
    pub fn section<T: Section>(&self, name: &str) -> Option<&T> {
        section::get(&self.sections, name)
    }

    /// The global sections described in one line (e.g. the device), for run records.
    pub fn describe_global(&self) -> String {
        self.global_sections
            .iter()
            .filter_map(|n| self.sections.get(n).map(|s| s.describe()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Nodes a `--force`/`--from`/`--until` word names: a node (`extract@2`) or every epoch
    /// of a stage (`extract`).
    pub fn select(&self, word: &str) -> Result<Vec<usize>, Error> {
        let hits: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.name == word || n.stage == word)
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            Err(Error::NoSuchStage(word.to_string()))
        } else {
            Ok(hits)
        }
    }

    /// Indices of nodes that read from `i`.
    pub fn consumers(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&c| {
                self.nodes[c]
                    .inputs
                    .iter()
                    .any(|inp| inp.source.as_ref().is_some_and(|s| s.0 == i))
            })
            .collect()
    }

    /// Graphviz text of the plan, nodes coloured by status when given.
    pub fn to_dot(&self, status: Option<&[&str]>) -> String {
        let mut s = String::from("digraph picie {\n  rankdir=LR;\n  node [shape=box, style=filled, fontname=\"monospace\"];\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let st = status.map(|s| s[i]).unwrap_or("");
            let colour = match st {
                "cached" => "palegreen",
                "run" => "lightgoldenrod",
                _ => "white",
            };
            s.push_str(&format!(
                "  n{i} [label=\"{}\\n{}{}\", fillcolor={colour}];\n",
                n.name,
                n.kind,
                if st.is_empty() {
                    String::new()
                } else {
                    format!(" ({st})")
                }
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in &n.inputs {
                if let Some((p, out)) = &inp.source {
                    let style = if inp.port.mode == Mode::Stream {
                        "dashed"
                    } else {
                        "solid"
                    };
                    s.push_str(&format!(
                        "  n{p} -> n{i} [label=\"{out}→{}\", style={style}];\n",
                        inp.port.name
                    ));
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

struct Draft<'a> {
    spec: &'a StageSpec,
    epoch: Option<u32>,
    configured: Option<Arc<dyn Configured>>,
}

fn build(spec: Spec, registry: &Registry, diags: &mut Diagnostics) -> Option<Plan> {
    let base_dir = spec.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut sections = Sections::new();
    for def in registry.sections() {
        match (def.parse)(spec.sections.get(def.name), &base_dir) {
            Ok(Some(v)) => {
                sections.insert(def.name, v);
            }
            Ok(None) => {}
            Err(ds) => ds.into_iter().for_each(|d| diags.push(d)),
        }
    }
    let epochs = spec.epoch_loop.as_ref().map_or(0, |l| l.epochs);
    let all: Vec<&StageSpec> = spec
        .stages
        .iter()
        .chain(spec.epoch_loop.iter().flat_map(|l| l.stages.iter()))
        .collect();

    // Names, kinds and params, once per stage as written.
    let mut by_name: HashMap<&str, &StageSpec> = HashMap::new();
    let mut configured: HashMap<&str, Arc<dyn Configured>> = HashMap::new();
    for s in &all {
        if s.name.is_empty() {
            continue;
        }
        if let Some(prev) = by_name.get(s.name.as_str()) {
            diags.push(
                Diagnostic::new(s.name_loc, format!("duplicate stage name `{}`", s.name)).hint(
                    format!(
                    "first defined at line {}; stage names are unique across `stages` and `loop`",
                    prev.name_loc.line
                ),
                ),
            );
            continue;
        }
        by_name.insert(&s.name, s);
        if s.kind.is_empty() {
            continue;
        }
        match registry.get(&s.kind) {
            None => diags.push(
                Diagnostic::new(s.kind_loc, format!("unknown stage kind `{}`", s.kind))
                    .hint(suggest(&s.kind, &registry.names(), "known kinds")),
            ),
            Some(kind) => {
                let missing: Vec<&str> = kind
                    .sections()
                    .iter()
                    .copied()
                    .filter(|n| !spec.sections.contains_key(*n) && !sections.contains_key(n))
                    .collect();
                for name in &missing {
                    let def = registry.sections().iter().find(|d| d.name == *name);
                    diags.push(
                        Diagnostic::new(
                            s.kind_loc,
                            format!(
                                "stage `{}` ({}) reads {}, but the pipeline has no `{name}:`",
                                s.name,
                                s.kind,
                                def.map_or(*name, |d| d.what),
                            ),
                        )
                        .hint(def.map_or("", |d| d.hint)),
                    );
                }
                if missing.is_empty() {
                    match kind.configure(s.params.as_ref(), s.loc, &base_dir) {
                        Ok(c) => {
                            configured.insert(&s.name, c);
                        }
                        Err(ds) => ds.into_iter().for_each(|d| diags.push(d)),
                    }
                }
            }
        }
    }

    // Unroll.
    let mut drafts: Vec<Draft> = Vec::new();
    let mut index: HashMap<(String, Option<u32>), usize> = HashMap::new();
    for s in &all {
        let range: Vec<Option<u32>> = if s.in_loop {
            (1..=epochs).map(Some).collect()
        } else {
            vec![None]
        };
        for epoch in range {
            if by_name
                .get(s.name.as_str())
                .is_some_and(|d| std::ptr::eq(*d, *s))
            {
                index.insert((s.name.clone(), epoch), drafts.len());
                drafts.push(Draft {
                    spec: s,
                    epoch,
                    configured: configured.get(s.name.as_str()).cloned(),
                });
            }
        }
    }

    // Wire inputs.
    let mut inputs: Vec<Vec<PlanInput>> = Vec::with_capacity(drafts.len());
    for d in &drafts {
        let Some(conf) = &d.configured else {
            inputs.push(Vec::new());
            continue;
        };
        let declared = conf.inputs();
        let mut wired = Vec::new();
        for inp in &d.spec.inputs {
            let Some(port) = declared.iter().find(|p| p.name == inp.port) else {
                let names: Vec<&str> = declared.iter().map(|p| p.name).collect();
                diags.push(
                    Diagnostic::new(
                        inp.port_loc,
                        format!(
                            "stage `{}` ({}) has no input `{}`",
                            d.spec.name, d.spec.kind, inp.port
                        ),
                    )
                    .hint(if names.is_empty() {
                        format!("kind `{}` takes no inputs", d.spec.kind)
                    } else {
                        suggest(&inp.port, &names, "its inputs")
                    }),
                );
                continue;
            };
            if let Some(source) =
                resolve(inp, d, port, epochs, &by_name, &configured, &index, diags)
            {
                wired.push(PlanInput {
                    port: port.clone(),
                    source,
                });
            }
        }
        let given = |name: &str| d.spec.inputs.iter().any(|i| i.port == name);
        for port in &declared {
            // Alternatives are reported once, at the first of the two names.
            if let Some(other) = port.instead_of.filter(|o| port.name < *o) {
                let both = given(port.name) && given(other);
                if both || !(given(port.name) || given(other)) {
                    let loc = d
                        .spec
                        .inputs
                        .iter()
                        .find(|i| i.port == other)
                        .map_or(d.spec.name_loc, |i| i.port_loc);
                    diags.push(Diagnostic::new(
                        loc,
                        format!(
                            "stage `{}` ({}) reads {} of `{}` and `{}`; give exactly one",
                            d.spec.name,
                            d.spec.kind,
                            if both { "both" } else { "neither" },
                            port.name,
                            other
                        ),
                    ));
                }
            }
            if !given(port.name) {
                if port.optional {
                    wired.push(PlanInput {
                        port: port.clone(),
                        source: None,
                    });
                } else {
                    diags.push(
                        Diagnostic::new(
                            d.spec.name_loc,
                            format!(
                                "stage `{}` ({}) is missing input `{}` ({} of type `{}`)",
                                d.spec.name,
                                d.spec.kind,
                                port.name,
                                mode_name(port.mode),
                                port.ty
                            ),
                        )
                        .hint(candidates(port, &by_name, &configured)),
                    );
                }
            }
        }
        inputs.push(wired);
    }
    if !diags.is_empty() {
        return None;
    }

    // Order, cycles and stream deadlocks.
    let n = drafts.len();
    let order = match topo_order(&inputs, n) {
        Ok(o) => o,
        Err(cycle) => {
            let names: Vec<String> = cycle.iter().map(|&i| node_name(&drafts[i])).collect();
            diags.push(
                Diagnostic::new(
                    drafts[cycle[0]].spec.name_loc,
                    format!("the stages form a cycle: {} -> {}", names.join(" -> "), names[0]),
                )
                .hint("a loop stage reads an earlier epoch with `epoch: prev`; other edges must point forward"),
            );
            return None;
        }
    };
    let groups = check_streams(&drafts, &inputs, diags);
    if !diags.is_empty() {
        return None;
    }

    // Keys, in topological order; nodes renumbered into that order.
    let mut new_index = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        new_index[i] = pos;
    }
    let canonical: BTreeMap<&str, serde_json::Value> =
        sections.iter().map(|(n, v)| (*n, v.canonical())).collect();
    let global: Vec<&'static str> = registry
        .sections()
        .iter()
        .filter(|d| d.global)
        .map(|d| d.name)
        .collect();
    let mut nodes: Vec<PlanNode> = Vec::with_capacity(n);
    let mut inputs: Vec<Option<Vec<PlanInput>>> = inputs.into_iter().map(Some).collect();
    for &i in &order {
        let d = &drafts[i];
        let conf = d
            .configured
            .clone()
            .expect("configured when no diagnostics");
        let kind = registry.get(&d.spec.kind).expect("known kind");
        let mut wired = inputs[i].take().expect("each node once");
        for w in &mut wired {
            if let Some((p, _)) = &mut w.source {
                *p = new_index[*p];
            }
        }
        let mut input_keys = BTreeMap::new();
        for w in &wired {
            let key = w
                .source
                .as_ref()
                .map(|(p, out)| nodes[*p].output_keys[out].clone());
            // The unwired one of two alternatives says nothing: leaving it out keeps the keys
            // a kind had before it gained the alternative.
            if key.is_some() || w.port.instead_of.is_none() {
                input_keys.insert(w.port.name.to_string(), key);
            }
        }
        let reads = |n: &str| global.contains(&n) || kind.sections().contains(&n);
        let mut provenance = json!({
            "kind": d.spec.kind,
            "version": kind.version(),
            "params": conf.canonical(),
            // Null for kinds that draw nothing from it: a sweep's runs share those nodes.
            "seed": if conf.seeded() { json!(spec.seed) } else { serde_json::Value::Null },
            "epoch": d.epoch.and_then(|e| conf.key_epoch(e)),
            "inputs": input_keys,
        });
        for (k, v) in registry.provenance_fields() {
            provenance[k] = v.clone();
        }
        // Every registered section has its field (null where the node does not read it),
        // so a kind that starts reading one changes its key and no other.
        for def in registry.sections() {
            provenance[def.name] = if reads(def.name) {
                canonical
                    .get(def.name)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            } else {
                serde_json::Value::Null
            };
        }
        // Only stages that name files get the field, so other keys stay as they were.
        let files = conf.files();
        if files.as_object().is_some_and(|f| !f.is_empty()) {
            provenance["files"] = files;
        }
        let key = hash_hex(&serde_json::to_vec(&provenance).expect("json"));
        let outputs = conf.outputs();
        let output_keys = outputs
            .iter()
            .map(|p| {
                (
                    p.name.to_string(),
                    hash_hex(format!("{key}/{}", p.name).as_bytes()),
                )
            })
            .collect();
        nodes.push(PlanNode {
            name: node_name(d),
            stage: d.spec.name.clone(),
            kind: d.spec.kind.clone(),
            version: kind.version(),
            epoch: d.epoch,
            configured: conf.clone(),
            inputs: wired,
            outputs,
            sections: sections
                .iter()
                .filter(|(n, _)| reads(n))
                .map(|(n, v)| (*n, v.clone()))
                .collect(),
            key,
            group: new_index[groups[i]],
            output_keys,
            provenance,
            part: None,
            parts: 0,
            round: None,
        });
    }
    let plan = Plan {
        spec,
        sections,
        global_sections: global,
        version: registry.version().to_string(),
        after_stage: registry.after_stage_hook(),
        nodes,
        shard: None,
    };
    let mut seen = std::collections::BTreeSet::new();
    for check in registry.plan_checks() {
        for p in check(&plan) {
            let Some(node) = plan.nodes.get(p.node) else {
                continue;
            };
            let Some(st) = plan
                .spec
                .stages
                .iter()
                .chain(plan.spec.epoch_loop.iter().flat_map(|l| l.stages.iter()))
                .find(|s| s.name == node.stage)
            else {
                continue;
            };
            let loc = p
                .field
                .as_deref()
                .and_then(|f| st.params.as_ref()?.as_mapping()?.get_node(f))
                .map_or(st.name_loc, |n| crate::diag::Loc::of(n.span()));
            if seen.insert((loc.line, loc.column, p.message.clone())) {
                let d = Diagnostic::new(loc, p.message);
                diags.push(match p.hint {
                    Some(h) => d.hint(h),
                    None => d,
                });
            }
        }
    }
    Some(plan)
}

#[allow(clippy::too_many_arguments)]
fn resolve(
    inp: &InputSpec,
    d: &Draft,
    port: &Port,
    epochs: u32,
    by_name: &HashMap<&str, &StageSpec>,
    configured: &HashMap<&str, Arc<dyn Configured>>,
    index: &HashMap<(String, Option<u32>), usize>,
    diags: &mut Diagnostics,
) -> Option<Option<(usize, String)>> {
    let src = &inp.source;
    let Some(producer) = by_name.get(src.stage.as_str()) else {
        let names: Vec<&str> = by_name.keys().copied().collect();
        diags.push(
            Diagnostic::new(
                src.loc,
                format!(
                    "input `{}` refers to unknown stage `{}`",
                    inp.port, src.stage
                ),
            )
            .hint(suggest(&src.stage, &sorted(names), "stages")),
        );
        return None;
    };
    let conf = configured.get(src.stage.as_str())?;
    let outs = conf.outputs();
    let Some(out) = outs.iter().find(|o| o.name == src.output) else {
        let names: Vec<&str> = outs.iter().map(|o| o.name).collect();
        diags.push(
            Diagnostic::new(
                src.loc,
                format!(
                    "stage `{}` ({}) has no output `{}`",
                    src.stage, producer.kind, src.output
                ),
            )
            .hint(suggest(&src.output, &names, "its outputs")),
        );
        return None;
    };
    if out.ty != port.ty || out.mode != port.mode {
        diags.push(
            Diagnostic::new(
                src.loc,
                format!(
                    "type mismatch: input `{}` of `{}` takes {} `{}`, but `{}.{}` is {} `{}`",
                    inp.port,
                    d.spec.name,
                    mode_name(port.mode),
                    port.ty,
                    src.stage,
                    src.output,
                    mode_name(out.mode),
                    out.ty
                ),
            )
            .hint(candidates(port, by_name, configured)),
        );
        return None;
    }
    // Which epoch of the producer.
    let epoch = if producer.in_loop {
        let e = match (inp.epoch, d.epoch) {
            (EpochSel::Same, Some(e)) => Some(e),
            (EpochSel::Same | EpochSel::Last, None) | (EpochSel::Last, Some(_)) => Some(epochs),
            (EpochSel::Prev, Some(e)) => {
                if e == 1 {
                    None
                } else {
                    Some(e - 1)
                }
            }
            (EpochSel::Prev, None) => {
                diags.push(
                    Diagnostic::new(src.loc, "`prev` only makes sense inside the loop").hint(
                        "outside the loop, `stage.output` means the last epoch; `@N` picks one",
                    ),
                );
                return None;
            }
            (EpochSel::At(k), _) => {
                if k > epochs {
                    diags.push(Diagnostic::new(
                        src.loc,
                        format!("epoch {k} does not exist: the loop has {epochs}"),
                    ));
                    return None;
                }
                Some(k)
            }
        };
        match e {
            Some(e) => Some(e),
            None => {
                // The first epoch's `prev`: the `first` fallback, or nothing.
                return match &inp.first {
                    Some(f) => {
                        let fake = InputSpec {
                            port: inp.port.clone(),
                            port_loc: inp.port_loc,
                            source: f.clone(),
                            epoch: EpochSel::Same,
                            first: None,
                        };
                        let outer = Draft {
                            spec: d.spec,
                            epoch: None,
                            configured: d.configured.clone(),
                        };
                        resolve(
                            &fake, &outer, port, epochs, by_name, configured, index, diags,
                        )
                    }
                    None if port.optional => Some(None),
                    None => {
                        diags.push(
                            Diagnostic::new(
                                src.loc,
                                format!(
                                    "in epoch 1, input `{}` of `{}` has no previous epoch to read",
                                    inp.port, d.spec.name
                                ),
                            )
                            .hint("add `first: stage.output` to say what epoch 1 reads"),
                        );
                        None
                    }
                };
            }
        }
    } else {
        if inp.epoch != EpochSel::Same {
            diags.push(
                Diagnostic::new(
                    src.loc,
                    format!("stage `{}` is not in the loop; it has no epochs", src.stage),
                )
                .hint("drop the epoch selector"),
            );
            return None;
        }
        None
    };
    let i = *index.get(&(src.stage.clone(), epoch))?;
    Some(Some((i, src.output.clone())))
}

fn candidates(
    port: &Port,
    by_name: &HashMap<&str, &StageSpec>,
    configured: &HashMap<&str, Arc<dyn Configured>>,
) -> String {
    let mut c: Vec<String> = configured
        .iter()
        .flat_map(|(name, conf)| {
            conf.outputs()
                .into_iter()
                .filter(|o| o.ty == port.ty && o.mode == port.mode)
                .map(move |o| format!("{name}.{}", o.name))
        })
        .filter(|s| by_name.contains_key(s.split('.').next().unwrap_or("")))
        .collect();
    c.sort();
    if c.is_empty() {
        format!(
            "no stage here produces {} `{}`",
            mode_name(port.mode),
            port.ty
        )
    } else {
        format!("outputs of that type: {}", c.join(", "))
    }
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort();
    v
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Stream => "stream",
        Mode::Artifact => "artifact",
    }
}

fn node_name(d: &Draft) -> String {
    match d.epoch {
        Some(e) => format!("{}@{e}", d.spec.name),
        None => d.spec.name.clone(),
    }
}

/// Kahn's algorithm; on a cycle, returns the nodes of one cycle.
fn topo_order(inputs: &[Vec<PlanInput>], n: usize) -> Result<Vec<usize>, Vec<usize>> {
    let mut indeg = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, ins) in inputs.iter().enumerate() {
        for (p, _) in ins.iter().filter_map(|i| i.source.as_ref()) {
            indeg[c] += 1;
            out[*p].push(c);
        }
    }
    let mut q: VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = q.pop_front() {
        order.push(i);
        for &c in &out[i] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                q.push_back(c);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk backwards along unfinished inputs until a node repeats.
    let mut cur = (0..n).find(|&i| indeg[i] > 0).expect("a node is left");
    let mut seen: Vec<usize> = Vec::new();
    loop {
        if let Some(pos) = seen.iter().position(|&s| s == cur) {
            let mut cyc = seen[pos..].to_vec();
            cyc.reverse();
            return Err(cyc);
        }
        seen.push(cur);
        cur = inputs[cur]
            .iter()
            .filter_map(|i| i.source.as_ref())
            .map(|s| s.0)
            .find(|&p| indeg[p] > 0)
            .expect("a node in a cycle has an unfinished input");
    }
}

/// Stages joined by streams must run at the same time (a producer cannot finish before its
/// consumers have read everything), so each stream-connected group is one unit: the plan
/// is rejected when an artifact edge runs inside a group, or when artifact edges between
/// groups form a cycle (a group would wait for itself). Returns each node's group.
fn check_streams(
    drafts: &[Draft],
    inputs: &[Vec<PlanInput>],
    diags: &mut Diagnostics,
) -> Vec<usize> {
    let n = drafts.len();
    let group = stream_groups(inputs, n);
    // Artifact edges between groups.
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, ins) in inputs.iter().enumerate() {
        for i in ins.iter().filter(|i| i.port.mode == Mode::Artifact) {
            if let Some((p, out)) = &i.source {
                if group[*p] == group[c] {
                    diags.push(
                        Diagnostic::new(
                            drafts[c].spec.name_loc,
                            format!(
                                "`{}` reads artifact `{}.{out}` but also shares a stream with `{}`; stages joined by streams run at the same time, so it would wait forever",
                                drafts[c].spec.name, drafts[*p].spec.name, drafts[*p].spec.name
                            ),
                        )
                        .hint("read that data as an artifact instead of a stream, or split the stage"),
                    );
                } else {
                    next[group[*p]].push(group[c]);
                }
            }
        }
    }
    for (c, ins) in inputs.iter().enumerate() {
        for i in ins.iter().filter(|i| i.port.mode == Mode::Stream) {
            let Some((p, out_name)) = &i.source else {
                continue;
            };
            // Can the group reach itself again through artifact edges?
            let g = group[c];
            let mut seen = vec![false; n];
            let mut stack = next[g].clone();
            let mut cyclic = false;
            while let Some(h) = stack.pop() {
                if h == g {
                    cyclic = true;
                    break;
                }
                if !std::mem::replace(&mut seen[h], true) {
                    stack.extend(next[h].iter().copied());
                }
            }
            if cyclic {
                diags.push(
                    Diagnostic::new(
                        drafts[c].spec.name_loc,
                        format!(
                            "stream `{}.{}` into `{}` would deadlock: `{}` also waits for an artifact that needs `{}` to finish",
                            drafts[*p].spec.name, out_name, drafts[c].spec.name, drafts[c].spec.name, drafts[*p].spec.name
                        ),
                    )
                    .hint("read that data as an artifact instead of a stream, or split the stage"),
                );
            }
        }
    }
    group
}

/// Connected components over stream edges (union-find); each id is its smallest member.
pub(crate) fn stream_groups(inputs: &[Vec<PlanInput>], n: usize) -> Vec<usize> {
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..n).collect();
    for (c, ins) in inputs.iter().enumerate() {
        for i in ins.iter().filter(|i| i.port.mode == Mode::Stream) {
            if let Some((p, _)) = &i.source {
                let (a, b) = (find(&mut parent, *p), find(&mut parent, c));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    (0..n).map(|i| find(&mut parent, i)).collect()
}

pub(crate) fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
