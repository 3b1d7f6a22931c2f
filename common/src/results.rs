//! Results: every demo writes `target/lab/results/partN.json`.
//!
//! A figure is only worth trusting with its context, so each file holds the
//! machine it was measured on (cores, memory, kernel, each service's version)
//! next to the named figures. A figure says what it shows and which
//! comparison it belongs to (`"sessions behind the LB"`, say), so the report
//! can put the anti-pattern and the fix side by side without knowing any
//! part's code: the report is built from these files alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::measure::LoadReport;

/// What kind of number a figure is: the question a reader asks first.
///
/// The report prints it beside every figure, and its header says what each
/// kind may truthfully claim.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Timed or counted in this run, by the servers' own counters where they
    /// exist (MariaDB status variables, Memcached `stats`, RabbitMQ queue
    /// counts, the MongoDB driver's command events). Files written before
    /// kinds existed read as measured: that is what they claimed.
    #[default]
    Measured,
    /// Arithmetic fixed by the design (keys moved by a resharding scheme,
    /// a model's ceiling): true on any machine, so not a measurement.
    Computed,
    /// Measured, but against a stated, modelled capacity (a semaphore and a
    /// sleep standing in for work): it shows the shape of a law, not what
    /// this hardware can do. Always printed beside the raw, unmodelled run.
    Modelled,
}

impl Kind {
    /// The word the report and the demos print: `measured`, `computed`, `modelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Measured => "measured",
            Kind::Computed => "computed",
            Kind::Modelled => "modelled",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a figure measured several times spread (`--repeat N`): the figure's
/// value is the median, and these say how far the runs were from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// How many runs.
    pub runs: u32,
    /// The lowest run.
    pub min: f64,
    /// The median run (also the figure's value).
    pub median: f64,
    /// The highest run.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (None when empty).
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Spread {
            runs: v.len() as u32,
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }
}

/// One named number, with its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Short name, e.g. `"redis sessions: requests without a session"`.
    pub name: String,
    /// The number (the median, when it was measured several times).
    pub value: f64,
    /// Its unit: `"%"`, `"req/s"`, `"µs"`, `"requests"`...
    pub unit: String,
    /// What it shows, in a sentence.
    pub shows: String,
    /// The comparison it belongs to; figures sharing one are charted together.
    pub comparison: String,
    /// Measured, computed or modelled.
    #[serde(default)]
    pub kind: Kind,
    /// The runs behind `value`, when the demo ran with `--repeat` above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// A curve: how one figure moves with another, one line per series (the
/// latency–throughput curve: throughput on x, p99 on y, one line per clone
/// count). Each point is one load run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Its title, e.g. `"latency against throughput"`.
    pub title: String,
    /// What it shows, in a sentence.
    pub shows: String,
    /// The kind of every point on it.
    pub kind: Kind,
    /// The x axis.
    pub x: Axis,
    /// The y axis.
    pub y: Axis,
    /// One line each.
    pub series: Vec<Series>,
}

/// One axis of a [`Curve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    /// e.g. `"throughput"`.
    pub label: String,
    /// e.g. `"req/s"`, `"µs"`.
    pub unit: String,
}

impl Axis {
    /// An axis called `label`, in `unit`.
    pub fn new(label: &str, unit: &str) -> Axis {
        Axis {
            label: label.to_owned(),
            unit: unit.to_owned(),
        }
    }
}

/// One line of a [`Curve`]: `(x, y)` points in the order they were run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// e.g. `"3 clones"`.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// What a team needs to reproduce a run: which code, built how, run how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `LAB_GIT_REV` (set by `./lab`), else `git rev-parse --short HEAD`
    /// with `-dirty` when the tree has changes, else `"unknown"`.
    pub git_rev: String,
    /// `"debug"` or `"release"`: the demo binary's own build profile.
    pub profile: String,
    /// The command line the demo was started with.
    pub args: Vec<String>,
    /// How many times each headline figure was measured (`--repeat`).
    pub repeat: u32,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            git_rev: "unknown".into(),
            profile: "unknown".into(),
            args: Vec::new(),
            repeat: 1,
        }
    }
}

impl Provenance {
    /// This process's provenance: revision, profile and arguments.
    pub fn detect(repeat: u32) -> Provenance {
        Provenance {
            git_rev: git_rev(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            args: std::env::args().collect(),
            repeat: repeat.max(1),
        }
    }

    /// One line: `"rev 1a2b3c4-dirty, release build, 3 repetitions: part1-demo --repeat 3"`.
    pub fn line(&self) -> String {
        format!(
            "rev {}, {} build, {} repetition{}: {}",
            self.git_rev,
            self.profile,
            self.repeat,
            if self.repeat == 1 { "" } else { "s" },
            self.args.join(" ")
        )
    }
}

/// The revision of the code: `LAB_GIT_REV`, else git, else `"unknown"`.
pub fn git_rev() -> String {
    if let Ok(rev) = std::env::var("LAB_GIT_REV")
        && !rev.trim().is_empty()
    {
        return rev.trim().to_owned();
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            // `--porcelain` prints one line per changed file: any output is a dirty tree.
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        _ => "unknown".into(),
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// Operating system, from /etc/os-release.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Each service's version, as `./lab up` recorded it in `.lab/versions.json`.
    pub services: BTreeMap<String, String>,
}

impl Machine {
    /// Reads the facts of this machine. Missing facts read as "unknown";
    /// detecting the machine never fails a demo.
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        let versions =
            std::env::var("LAB_VERSIONS_FILE").unwrap_or_else(|_| ".lab/versions.json".into());
        let services = std::fs::read_to_string(versions)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            cpu,
            os,
            kernel: if kernel.is_empty() {
                "unknown".into()
            } else {
                kernel
            },
            services,
        }
    }

    /// One line: "2 cores, 23.4 GiB, Debian GNU/Linux 12, kernel 6.1".
    pub fn line(&self) -> String {
        format!(
            "{} cores ({}), {} GiB, {}, kernel {}",
            self.cores, self.cpu, self.memory_gib, self.os, self.kernel
        )
    }
}

/// Everything one part's demo measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartResults {
    /// 1 to 4.
    pub part: u8,
    /// The part's title, e.g. "Clones".
    pub title: String,
    /// The article's claim, in a sentence or two.
    pub claim: String,
    /// False for a part whose demo is not built yet.
    pub built: bool,
    /// Where it ran.
    pub machine: Machine,
    /// What it measured, computed or modelled.
    pub figures: Vec<Figure>,
    /// Curves drawn from load runs (latency against throughput).
    #[serde(default)]
    pub curves: Vec<Curve>,
    /// Git revision, build profile, arguments and repetitions of the run.
    #[serde(default)]
    pub provenance: Provenance,
    /// Anything a reader must know to trust the figures (simplifications,
    /// modelled capacities, the server that stood in for another).
    pub notes: Vec<String>,
    /// When it was written (Unix seconds).
    pub written_at: u64,
}

/// Why results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// File system trouble, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A results file that is not valid JSON of the right shape.
    #[error("{path} is not a results file: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

impl PartResults {
    /// Results of a built part, on this machine, with no figures yet.
    pub fn new(part: u8, title: &str, claim: &str) -> Self {
        PartResults {
            part,
            title: title.to_owned(),
            claim: claim.to_owned(),
            built: true,
            machine: Machine::detect(),
            figures: Vec::new(),
            curves: Vec::new(),
            provenance: Provenance::detect(1),
            notes: Vec::new(),
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Results of a part whose demo does not exist yet: the report lists it
    /// as such rather than inventing numbers.
    pub fn not_built(part: u8, title: &str, claim: &str) -> Self {
        PartResults {
            built: false,
            ..Self::new(part, title, claim)
        }
    }

    /// Records that each headline figure is measured `n` times (`--repeat`).
    pub fn set_repeat(&mut self, n: u32) {
        self.provenance.repeat = n.max(1);
    }

    fn push(
        &mut self,
        kind: Kind,
        comparison: &str,
        name: &str,
        values: &[f64],
        unit: &str,
        shows: &str,
    ) {
        let spread = Spread::of(values);
        let value = spread.as_ref().map_or(f64::NAN, |s| s.median);
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            shows: shows.to_owned(),
            comparison: comparison.to_owned(),
            kind,
            spread: spread.filter(|s| s.runs > 1),
        });
    }

    /// Adds a figure timed or counted in this run.
    pub fn measured(&mut self, comparison: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.push(Kind::Measured, comparison, name, &[value], unit, shows);
    }

    /// Adds a figure fixed by arithmetic on the design (not a measurement).
    pub fn computed(&mut self, comparison: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.push(Kind::Computed, comparison, name, &[value], unit, shows);
    }

    /// Adds a figure measured against a stated, modelled capacity.
    pub fn modelled(&mut self, comparison: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.push(Kind::Modelled, comparison, name, &[value], unit, shows);
    }

    /// Adds a figure measured once per repetition: its value is the median,
    /// and with more than one run the min / median / max go with it.
    pub fn repeated(
        &mut self,
        kind: Kind,
        comparison: &str,
        name: &str,
        runs: &[f64],
        unit: &str,
        shows: &str,
    ) {
        self.push(kind, comparison, name, runs, unit, shows);
    }

    /// Adds a load run's throughput, p50 and p99 and error count, named
    /// `"<name>: throughput"` and so on, under one comparison; measured.
    pub fn load_figures(&mut self, comparison: &str, report: &LoadReport) {
        self.load_runs(Kind::Measured, comparison, std::slice::from_ref(report));
    }

    /// Like [`load_figures`](Self::load_figures) for the repetitions of one
    /// load run (`--repeat`), or for a run against a modelled capacity:
    /// each figure is the median of the runs, with their spread. The name is
    /// the first run's.
    pub fn load_runs(&mut self, kind: Kind, comparison: &str, runs: &[LoadReport]) {
        let Some(first) = runs.first() else { return };
        let n = &first.name;
        let pick = |f: fn(&LoadReport) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        self.repeated(
            kind,
            comparison,
            &format!("{n}: throughput"),
            &pick(|r| r.throughput),
            "req/s",
            "successful requests per second",
        );
        self.repeated(
            kind,
            comparison,
            &format!("{n}: p50"),
            &pick(|r| r.latency.p50_us as f64),
            "µs",
            "median latency",
        );
        self.repeated(
            kind,
            comparison,
            &format!("{n}: p99"),
            &pick(|r| r.latency.p99_us as f64),
            "µs",
            "99th percentile latency",
        );
        self.repeated(
            kind,
            comparison,
            &format!("{n}: failed requests"),
            &pick(|r| r.errors as f64),
            "requests",
            "requests that got an error",
        );
    }

    /// Adds a curve (see [`Curve`]).
    pub fn curve(&mut self, curve: Curve) {
        self.curves.push(curve);
    }

    /// The file name of part `n`: `partN.json`.
    pub fn file_name(part: u8) -> String {
        format!("part{part}.json")
    }

    /// Writes `dir/partN.json` (creating `dir`) and returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ResultsError> {
        std::fs::create_dir_all(dir).map_err(|source| ResultsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(Self::file_name(self.part));
        let json = serde_json::to_string_pretty(self).expect("results serialize");
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| ResultsError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Reads every `partN.json` in `dir`, in part order. A missing directory
    /// is no results, not an error.
    pub fn read_all(dir: &Path) -> Result<Vec<PartResults>, ResultsError> {
        let mut out = Vec::new();
        for part in 1..=4u8 {
            let path = dir.join(Self::file_name(part));
            match std::fs::read_to_string(&path) {
                Ok(s) => out.push(
                    serde_json::from_str(&s)
                        .map_err(|source| ResultsError::Json { path, source })?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ResultsError::Io { path, source }),
            }
        }
        Ok(out)
    }
}

/// The results directory: `LAB_RESULTS_DIR`, default `target/lab/results`.
pub fn results_dir() -> PathBuf {
    std::env::var_os("LAB_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::config::defaults::LAB_RESULTS_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::LatencySummary;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(crate::testing::unique_name(name));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn results_round_trip_through_their_file() {
        let dir = temp_dir("results");
        let mut r = PartResults::new(1, "Clones", "Stateless clones behind a load balancer.");
        r.measured(
            "sessions",
            "memory: lost",
            66.0,
            "%",
            "requests that found no session",
        );
        r.load_figures(
            "load",
            &LoadReport {
                name: "redis".into(),
                requests: 10,
                errors: 1,
                elapsed_secs: 1.0,
                throughput: 9.0,
                latency: LatencySummary {
                    count: 9,
                    mean_us: 1.0,
                    p50_us: 1,
                    p90_us: 1,
                    p99_us: 2,
                    max_us: 3,
                },
                first_errors: vec![],
            },
        );
        let path = r.write(&dir).unwrap();
        assert!(path.ends_with("part1.json"));
        PartResults::not_built(2, "Database", "claim")
            .write(&dir)
            .unwrap();
        let all = PartResults::read_all(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], r);
        assert_eq!(all[0].figures.len(), 5);
        assert!(!all[1].built);
        assert!(all[0].machine.cores >= 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_named_in_the_error() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join("part3.json"), "{ not json").unwrap();
        let err = PartResults::read_all(&dir).unwrap_err().to_string();
        assert!(err.contains("part3.json"), "{err}");
        assert!(
            PartResults::read_all(&dir.join("missing"))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
