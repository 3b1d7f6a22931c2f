//! wrk as the load generator where the demo's own client would be the
//! bottleneck.
//!
//! nginx sending a baked page from memory answers faster than the demo's
//! own client (reqwest on tokio, [`common::measure`]) can ask on a 2-core
//! machine: measured with that client, the baked page came out at about
//! 13,000 requests a second with the client, not nginx, using most of the
//! CPU; wrk got 19,200 from one nginx worker on the same machine. wrk
//! (Debian's `wrk`, which `./lab` installs) is a C event loop that spends
//! less CPU per request, so what it measures is closer to the server's
//! ceiling. Every path of a comparison is measured with it: the same
//! tool, the same connections, the same sequence of paths.
//!
//! The paths go to wrk in a file its Lua script reads once per thread;
//! thread `k` of `t` starts `k / t` of the way into the sequence and walks
//! on from there, so the threads do not ask for the same page at the
//! same moment (the demo's own closed loop walks the sequence once, all
//! its clients sharing one counter). wrk's own figures are kept as it
//! prints them: requests, seconds, its latency distribution (p50, p90,
//! p99), the slowest, and its error counts (answers of 400 or more,
//! socket errors, timeouts).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use common::measure::{LatencySummary, LoadReport};

/// One wrk run: threads, connections, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    /// wrk's threads (`-t`): one event loop each.
    pub threads: usize,
    /// Open connections in all (`-c`): the closed loop's concurrency.
    pub connections: usize,
    /// How long (`-d`, whole seconds, at least 1).
    pub duration: Duration,
}

impl Wrk {
    /// Runs wrk against `base` (`http://host:port`), asking for `paths`
    /// in turn with the header `accept`; the run is named `name`.
    pub async fn run(
        &self,
        name: &str,
        base: &str,
        paths: &[String],
        accept: &str,
    ) -> anyhow::Result<LoadReport> {
        anyhow::ensure!(!paths.is_empty(), "wrk needs at least one path");
        let dir = std::env::temp_dir().join(common::testing::unique_name("d4wrk"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = self.run_in(&dir, name, base, paths, accept).await;
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    async fn run_in(
        &self,
        dir: &Path,
        name: &str,
        base: &str,
        paths: &[String],
        accept: &str,
    ) -> anyhow::Result<LoadReport> {
        let list = dir.join("paths.txt");
        std::fs::write(&list, paths.join("\n") + "\n")?;
        let script = dir.join("paths.lua");
        std::fs::write(&script, lua(&list, accept, self.threads.max(1))?)?;
        let secs = self.duration.as_secs().max(1);
        let output = tokio::process::Command::new("wrk")
            .arg(format!("-t{}", self.threads.max(1)))
            .arg(format!("-c{}", self.connections.max(self.threads).max(1)))
            .arg(format!("-d{secs}s"))
            .args(["--latency", "--timeout", "10s", "-s"])
            .arg(&script)
            .arg(base)
            .kill_on_drop(true)
            .output()
            .await
            .context("wrk is not installed: run ./lab up (it installs Debian's wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "wrk failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        parse(name, &stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))
    }
}

/// The script: number the threads (`setup` runs in wrk's main state),
/// read the paths and format their requests once per thread (in `init`,
/// where wrk has set the host, before its clock starts), start thread
/// `k` at `k / threads` of the way in, then send the next request on
/// every request.
fn lua(list: &Path, accept: &str, threads: usize) -> anyhow::Result<String> {
    let list = list
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    anyhow::ensure!(
        !list.contains(['"', '\\', '\n']) && !accept.contains(['"', '\\', '\n']),
        "a path or header wrk's script cannot quote"
    );
    Ok(format!(
        r#"local counter = 0
setup = function(thread)
  thread:set("id", counter)
  counter = counter + 1
end
local requests, n, i = {{}}, 0, 0
init = function(args)
  local headers = {{ ["Accept"] = "{accept}" }}
  for line in io.lines("{list}") do
    n = n + 1
    requests[n] = wrk.format("GET", line, headers)
  end
  i = (id or 0) * math.floor(n / {threads})
end
request = function()
  i = i % n + 1
  return requests[i]
end
"#
    ))
}

/// wrk's `--latency` report as a [`LoadReport`].
fn parse(name: &str, out: &str) -> anyhow::Result<LoadReport> {
    let pct = |p: &str| -> anyhow::Result<u64> {
        let line = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .with_context(|| format!("no {p} line"))?;
        time_us(line[p.len()..].trim())
    };
    let (p50, p90, p99) = (pct("50%")?, pct("90%")?, pct("99%")?);
    // "    Latency   812.00us  300.00us   5.00ms   80.00%": avg, stdev, max.
    let stats: Vec<&str> = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Latency ") && !l.starts_with("Latency Distribution"))
        .context("no Latency line")?
        .split_whitespace()
        .collect();
    anyhow::ensure!(stats.len() >= 4, "a short Latency line");
    let (mean, max) = (time_us(stats[1])?, time_us(stats[3])?);
    // "  200000 requests in 10.00s, 250.00MB read"
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.contains(" requests in "))
        .context("no requests line")?;
    let mut words = line.split_whitespace();
    let requests: u64 = words.next().context("no count")?.parse()?;
    let elapsed = words.nth(2).context("no duration")?.trim_end_matches(',');
    let elapsed_secs = time_us(elapsed)? as f64 / 1e6;
    let count_after = |label: &str| -> anyhow::Result<u64> {
        match out.lines().map(str::trim).find(|l| l.starts_with(label)) {
            Some(l) => Ok(l[label.len()..].trim().parse()?),
            None => Ok(0),
        }
    };
    // wrk counts a status of 400 or more here (a 3xx is a success to it).
    let non_2xx = count_after("Non-2xx or 3xx responses:")?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0". A timeout is
    // a request wrk also counted as done, without its latency; a connect
    // error is no request at all; a read or write error is one that failed.
    let socket = |kind: &str| -> u64 {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("Socket errors:"))
            .and_then(|l| {
                l.split(',').find_map(|kv| {
                    let (k, v) = kv.trim().split_once(' ')?;
                    (k == kind).then(|| v.trim().parse::<u64>().ok()).flatten()
                })
            })
            .unwrap_or(0)
    };
    let (connect, read, write, timeout) = (
        socket("connect"),
        socket("read"),
        socket("write"),
        socket("timeout"),
    );
    let errors = non_2xx + connect + read + write + timeout;
    let ok = requests.saturating_sub(non_2xx + timeout);
    let mut first_errors = Vec::new();
    if non_2xx > 0 {
        first_errors.push(format!("{non_2xx} answers of 400 or more (wrk)"));
    }
    if connect + read + write + timeout > 0 {
        first_errors.push(format!(
            "socket errors (wrk): connect {connect}, read {read}, write {write}, timeout {timeout}"
        ));
    }
    Ok(LoadReport {
        name: name.to_owned(),
        requests: requests + read + write,
        errors,
        elapsed_secs,
        throughput: ok as f64 / elapsed_secs.max(1e-9),
        latency: LatencySummary {
            count: ok,
            mean_us: mean as f64,
            p50_us: p50,
            p90_us: p90,
            p99_us: p99,
            max_us: max,
        },
        first_errors,
    })
}

/// `812.00us`, `1.10ms`, `2.00s`, `1.50m` in microseconds.
fn time_us(s: &str) -> anyhow::Result<u64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {s:?}"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("not a number: {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => anyhow::bail!("an unknown unit in {s:?}"),
    };
    Ok((n * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1's output for a run with a few errors.
    const OUT: &str = "Running 3s test @ http://127.0.0.1:8080
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  300.00us   5.00ms   80.00%
    Req/Sec    20.00k     1.00k   22.00k    70.00%
  Latency Distribution
     50%  780.00us
     75%  900.00us
     90%    1.10ms
     99%    2.00ms
  60000 requests in 3.00s, 75.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  20000.00
Transfer/sec:     25.00MB
";

    #[test]
    fn wrks_report_becomes_a_load_report() {
        let r = parse("baked", OUT).unwrap();
        // 60,000 done (1 of them timed out) and 2 failed reads; 5 answers
        // of 400 or more.
        assert_eq!((r.requests, r.errors), (60_002, 8));
        assert_eq!(r.elapsed_secs, 3.0);
        assert_eq!(r.latency.count, 59_994);
        assert!((r.throughput - 59_994.0 / 3.0).abs() < 1e-6);
        let l = r.latency;
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.max_us),
            (780, 1_100, 2_000, 5_000)
        );
        assert_eq!(l.mean_us, 812.0);
        assert_eq!(r.first_errors.len(), 2);
    }

    #[test]
    fn a_clean_run_counts_no_errors() {
        let clean: String = OUT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse("x", &clean).unwrap();
        assert_eq!((r.requests, r.errors), (60_000, 0));
        assert!(r.first_errors.is_empty());
    }

    #[test]
    fn a_truncated_report_is_an_error_not_zeroes() {
        assert!(parse("x", "Running 3s test @ http://127.0.0.1:8080\n").is_err());
    }

    #[test]
    fn units_are_read() {
        assert_eq!(time_us("812.00us").unwrap(), 812);
        assert_eq!(time_us("1.10ms").unwrap(), 1_100);
        assert_eq!(time_us("3.00s").unwrap(), 3_000_000);
        assert_eq!(time_us("1.50m").unwrap(), 90_000_000);
        assert!(time_us("12").is_err());
        assert!(time_us("1.0parsecs").is_err());
    }
}
