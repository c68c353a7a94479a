//! Checks across stages, at plan time: what one stage's params mean for another's.
//! - A ViT's patch must divide every image side its network sees (set by `augment`,
//!   `evaluate` and `backbone` stages elsewhere in the file).
//! - Stored backbone tokens may only be read by a network whose backbone does not train,
//!   and only if the `backbone` stage that made them describes that same backbone.
//! - `evaluate` with `features: tokens` needs both stored-token inputs.

use picie_core::model::NetConfig;
use picie_engine::plan::{Plan, PlanProblem};

use crate::backbone::BackboneParams;
use crate::io::ports::{BATCHES, CHECKPOINT, TOKENS, TRAIN_TOKENS, VAL_TOKENS};

/// The source node of node `i`'s input `port`.
pub(crate) fn source(plan: &Plan, i: usize, port: &str) -> Option<usize> {
    plan.nodes[i]
        .inputs
        .iter()
        .find(|inp| inp.port.name == port)?
        .source
        .as_ref()
        .map(|(p, _)| *p)
}

/// The `init` node a node's `checkpoint` input descends from.
fn init_of(plan: &Plan, mut i: usize) -> Option<usize> {
    for _ in 0..=plan.nodes.len() {
        if plan.nodes[i].kind == "init" {
            return Some(i);
        }
        i = source(plan, i, CHECKPOINT.name)?;
    }
    None
}

fn params<T: serde::de::DeserializeOwned>(plan: &Plan, i: usize) -> Option<T> {
    serde_json::from_value(plan.nodes[i].provenance["params"].clone()).ok()
}

fn res_of(plan: &Plan, i: usize) -> Option<i64> {
    plan.nodes[i].provenance["params"]["res"].as_i64()
}

fn weights_sum(plan: &Plan, i: usize) -> Option<String> {
    plan.nodes[i].provenance["files"]["weights"]["blake3"]
        .as_str()
        .map(str::to_string)
}

/// A `res` that is not a multiple of `net`'s patch, placed at node `at`.
fn patch_problem(plan: &Plan, at: usize, net: &NetConfig) -> Option<PlanProblem> {
    let patch = net.vit()?.patch;
    let res = res_of(plan, at).filter(|r| r % patch != 0)?;
    let down = (res / patch).max(1) * patch;
    Some(PlanProblem {
        node: at,
        field: Some("res".into()),
        message: format!(
            "`res: {res}` is not a multiple of the ViT's patch size {patch} ({}): use {down} or {}",
            net.arch,
            down + patch
        ),
        hint: Some(
            "images are resized to `res`; a ViT needs whole patches, and picie never crops \
             silently"
                .into(),
        ),
    })
}

pub fn check(plan: &Plan) -> Vec<PlanProblem> {
    let mut out = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        if node.kind == "backbone" {
            let Some(p) = params::<BackboneParams>(plan, i) else {
                continue;
            };
            let at = if p.split.is_some() {
                Some(i)
            } else {
                source(plan, i, BATCHES.name)
            };
            out.extend(at.and_then(|a| patch_problem(plan, a, &p.net())));
            continue;
        }
        if node.kind == "evaluate" && node.provenance["params"]["features"] == "tokens" {
            let missing: Vec<&str> = [TRAIN_TOKENS.name, VAL_TOKENS.name]
                .into_iter()
                .filter(|port| source(plan, i, port).is_none())
                .collect();
            if !missing.is_empty() {
                out.push(PlanProblem {
                    node: i,
                    field: Some("features".into()),
                    message: format!(
                        "`features: tokens` clusters a frozen backbone's stored tokens, but \
                         stage `{}` has no `{}` input",
                        node.stage,
                        missing.join("` or `")
                    ),
                    hint: Some(
                        "give it `train_tokens` and `val_tokens` from `backbone` stages with \
                         a `split`"
                            .into(),
                    ),
                });
            }
        }
        let Some(init) = init_of(plan, i) else {
            continue;
        };
        let Some(net) = params::<NetConfig>(plan, init) else {
            continue;
        };
        let at = if node.kind == "evaluate" {
            Some(i)
        } else {
            source(plan, i, BATCHES.name)
        };
        out.extend(at.and_then(|a| patch_problem(plan, a, &net)));
        for port in [TOKENS.name, TRAIN_TOKENS.name, VAL_TOKENS.name] {
            let Some(b) = source(plan, i, port) else {
                continue;
            };
            if !net.frozen_backbone() {
                out.push(PlanProblem {
                    node: i,
                    field: None,
                    message: format!(
                        "stage `{}` reads stored backbone tokens (`{port}`), but its network \
                         ({}, train_blocks {}) trains its backbone: stored tokens would go stale",
                        node.stage, net.arch, net.train_blocks
                    ),
                    hint: Some(
                        "keep `train_blocks: 0` to cache a ViT's tokens, or give extract, label \
                         and train the augment batches and evaluate no tokens"
                            .into(),
                    ),
                });
                continue;
            }
            let Some(bp) = params::<BackboneParams>(plan, b) else {
                continue;
            };
            let theirs = bp.net();
            let mut differ = Vec::new();
            if theirs.arch != net.arch {
                differ.push(format!("arch {} vs {}", theirs.arch, net.arch));
            }
            if theirs.vit().map(|v| (v.pos_interp, v.feature_block))
                != net.vit().map(|v| (v.pos_interp, v.feature_block))
            {
                differ.push("pos_interp or feature_block".into());
            }
            if theirs.input_norm != net.input_norm {
                differ.push("input_norm".into());
            }
            if weights_sum(plan, b) != weights_sum(plan, init) {
                differ.push("weights".into());
            }
            if !differ.is_empty() {
                out.push(PlanProblem {
                    node: b,
                    field: None,
                    message: format!(
                        "stage `{}` makes the tokens of another backbone than `{}` builds, \
                         whose network reads them: {}",
                        plan.nodes[b].stage,
                        plan.nodes[init].stage,
                        differ.join(", ")
                    ),
                    hint: Some(
                        "give the backbone stage the same arch, pos_interp, feature_block, \
                         input_norm and weights as init"
                            .into(),
                    ),
                });
            }
        }
    }
    out
}
