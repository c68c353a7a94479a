//! deploy/slurm on a real single-node Slurm cluster: `submit.sh` runs pipelines/shard-demo.yaml
//! as a 2-task job array plus a dependent driver job, and the store it leaves holds the same
//! bytes as one `picie run --shard off`. Needs root and slurm-wlm + munge (`setup.sh
//! --slurm`; CI installs them); skipped, with a message, without them. Starts the cluster
//! (scripts/local-slurm.sh) when `sinfo` does not answer, and stops it again afterwards.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::shards::assert_same_artifacts;

const SHARDS: usize = 2;
/// What the test and scripts/local-slurm.sh run: clients, daemons, and munge's.
const TOOLS: [&str; 6] = [
    "sbatch",
    "scontrol",
    "sinfo",
    "slurmctld",
    "slurmd",
    "munged",
];
/// For the whole array and driver, and for the solo run: the demo takes about a minute on
/// 2 cores, but the rest of the suite may be using them too.
const TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An executable on PATH, or in /usr/sbin (the daemons' home, often not on a user's PATH).
fn installed(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join(name).is_file())
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let absent: Vec<&str> = TOOLS.into_iter().filter(|b| !installed(b)).collect();
    if !absent.is_empty() {
        return Some(format!(
            "{} not installed (apt-get install -y slurm-wlm munge, or scripts/setup.sh --slurm)",
            absent.join(", ")
        ));
    }
    // The single-node cluster's daemons, and its jobs, run as root.
    (!is_root()).then(|| "not root (the local Slurm cluster needs root)".to_string())
}

fn sinfo_answers() -> bool {
    Command::new("timeout")
        .args(["10", "sinfo", "-h", "-o", "%a"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("up"))
        .unwrap_or(false)
}

/// The cluster for this test: one already running is used as it is; one started here is
/// stopped on drop, panics included.
struct Cluster {
    started: bool,
}

impl Cluster {
    fn up() -> Self {
        if sinfo_answers() {
            return Self { started: false };
        }
        let out = Command::new(repo().join("scripts/local-slurm.sh"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success() && sinfo_answers(),
            "scripts/local-slurm.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { started: true }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(repo().join("scripts/local-slurm.sh"))
                .arg("stop")
                .status();
        }
    }
}

/// A command with stdout and stderr together in `log`, killed after [`TIMEOUT`].
fn run_logged(cmd: &mut Command, log: &Path) -> Result<ExitStatus, String> {
    let f = File::create(log).unwrap();
    let mut child: Child = cmd
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok(status);
        }
        if t.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {} s", TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| format!("({}: {e})", p.display()))
}

/// The job id submit.sh printed after `prefix` ("submit: array job 12 (2 shards), ...").
fn job_id(out: &str, prefix: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// Every log under `logs`, for failure messages.
fn all_logs(logs: &Path) -> String {
    let mut paths: Vec<PathBuf> = fs::read_dir(logs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .map(|p| format!("--- {}\n{}", p.display(), read(p)))
        .collect()
}

#[test]
fn a_slurm_array_run_equals_one_process() {
    if let Some(why) = missing() {
        return picie_testkit::skip(format!("slurm: {why}"));
    }
    let _cluster = Cluster::up();
    let tmp = tempfile::tempdir().unwrap();
    // Slurm jobs start in the submit directory, maybe on another node: absolute paths only.
    let dir = tmp.path().canonicalize().unwrap();
    let pipeline = dir.join("shard-demo.yaml");
    fs::copy(repo().join("pipelines/shard-demo.yaml"), &pipeline).unwrap();
    let (sharded, solo, logs) = (dir.join("sharded"), dir.join("solo"), dir.join("logs"));
    let picie = env!("CARGO_BIN_EXE_picie");

    // The array and the driver. libtorch's results may depend on its thread count, so both
    // this and the solo run below use one thread (what the sbatch script gives a 1-CPU task):
    // what is compared is sharding, not threading.
    let submit_log = dir.join("submit.log");
    let status = run_logged(
        Command::new(repo().join("deploy/slurm/submit.sh"))
            .arg("--wait")
            .arg("--logs")
            .arg(&logs)
            .arg(&pipeline)
            .arg(&sharded)
            .arg(SHARDS.to_string())
            .current_dir(&dir)
            .env("PICIE", picie)
            .env("OMP_NUM_THREADS", "1")
            .env("PICIE_LOG", "picie=info,picie_engine=info"),
        &submit_log,
    );
    let out = read(&submit_log);
    let array = job_id(&out, "submit: array job ");
    let driver = job_id(&out, "submit: driver job ");
    if status.is_err() {
        // The jobs would go on running (and hold the store) after this test gives up.
        let ids: Vec<&String> = array.iter().chain(&driver).collect();
        let _ = Command::new("scancel").args(ids).status();
    }
    let status =
        status.unwrap_or_else(|e| panic!("submit.sh --wait {e}:\n{out}\n{}", all_logs(&logs)));
    assert!(
        status.success(),
        "submit.sh failed ({status}):\n{out}\n{}",
        all_logs(&logs)
    );
    let array = array.unwrap_or_else(|| panic!("no array job id in:\n{out}"));
    let driver = driver.unwrap_or_else(|| panic!("no driver job id in:\n{out}"));

    // Every task ended well (the sbatch script's last line: there is no sacct here), and
    // each computed a part itself: the two took part side by side.
    let task_logs: Vec<String> = (0..SHARDS)
        .map(|i| read(&logs.join(format!("shards-{array}_{i}.log"))))
        .collect();
    for (i, log) in task_logs.iter().enumerate() {
        assert!(
            log.contains(&format!("task {i} of {SHARDS} exited with status 0")),
            "task {i}:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("[part ") && l.contains("finished")),
            "task {i} computed no part itself:\n{log}"
        );
    }
    let joined = task_logs.concat();
    for i in 0..SHARDS {
        let part = format!("[part {i}/{SHARDS}]");
        assert!(
            joined.contains(&part),
            "no {part} in the task logs:\n{joined}"
        );
    }
    // The driver found everything cached.
    let driver_log = read(&logs.join(format!("driver-{driver}.log")));
    assert!(
        driver_log.contains(" 0 stage(s) ran"),
        "driver:\n{driver_log}"
    );

    // One process, sharding off, into a store of its own.
    let solo_log = dir.join("solo.log");
    let status = run_logged(
        Command::new(picie)
            .arg("run")
            .arg(&pipeline)
            .arg("--store")
            .arg(&solo)
            .args(["--shard", "off"])
            .current_dir(&dir)
            .env("OMP_NUM_THREADS", "1"),
        &solo_log,
    )
    .unwrap_or_else(|e| panic!("the solo run {e}:\n{}", read(&solo_log)));
    assert!(status.success(), "the solo run:\n{}", read(&solo_log));

    let compared = assert_same_artifacts(&solo, &sharded, "shard-demo");
    eprintln!("slurm: array {array} + driver {driver}; identical to one process: {compared:?}");
}
