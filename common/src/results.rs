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

/// One measured number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Short name, e.g. `"redis sessions: requests without a session"`.
    pub name: String,
    /// The number.
    pub value: f64,
    /// Its unit: `"%"`, `"req/s"`, `"µs"`, `"requests"`...
    pub unit: String,
    /// What it shows, in a sentence.
    pub shows: String,
    /// The comparison it belongs to; figures sharing one are charted together.
    pub comparison: String,
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
    /// What it measured.
    pub figures: Vec<Figure>,
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

    /// Adds a figure.
    pub fn figure(&mut self, comparison: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            shows: shows.to_owned(),
            comparison: comparison.to_owned(),
        });
    }

    /// Adds a load run's throughput, p50 and p99 and error count, named
    /// `"<name>: throughput"` and so on, under one comparison.
    pub fn load_figures(&mut self, comparison: &str, report: &LoadReport) {
        let n = &report.name;
        self.figure(
            comparison,
            &format!("{n}: throughput"),
            report.throughput,
            "req/s",
            "successful requests per second",
        );
        self.figure(
            comparison,
            &format!("{n}: p50"),
            report.latency.p50_us as f64,
            "µs",
            "median latency",
        );
        self.figure(
            comparison,
            &format!("{n}: p99"),
            report.latency.p99_us as f64,
            "µs",
            "99th percentile latency",
        );
        self.figure(
            comparison,
            &format!("{n}: failed requests"),
            report.errors as f64,
            "requests",
            "requests that got an error",
        );
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
        r.figure(
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
