//! Stopping a process the way `./lab stop` and process managers ask:
//! SIGTERM (or Ctrl-C). Every binary of the lab waits on [`terminated`]
//! and then finishes what it holds (requests in flight, the job in hand,
//! a bake) before it exits; [`stop`] is the other side, for a process
//! that starts another (the demos, the tests).

/// Resolves on SIGTERM or Ctrl-C. If SIGTERM cannot be listened for, only
/// Ctrl-C stops the process (said once in the log).
pub async fn terminated() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}): only Ctrl-C stops this process");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// How [`stop`] ended.
#[derive(Debug)]
pub enum Stopped {
    /// It exited within the grace period, with this status.
    Exited(std::process::ExitStatus),
    /// It did not: killed (SIGKILL) and reaped.
    Killed,
}

impl Stopped {
    /// Whether it exited by itself with status 0.
    pub fn cleanly(&self) -> bool {
        matches!(self, Stopped::Exited(s) if s.success())
    }
}

/// The other side of [`terminated`]: stops `child` as `./lab stop` does.
/// SIGTERM (sent by `kill(1)`: tokio's `Child` can only SIGKILL), then up
/// to `grace` for it to finish what it holds and exit; past that, SIGKILL.
/// A child that has already exited is only reaped.
pub async fn stop(
    child: &mut tokio::process::Child,
    grace: std::time::Duration,
) -> std::io::Result<Stopped> {
    if let Some(pid) = child.id() {
        tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => Ok(Stopped::Exited(status?)),
        Err(_) => {
            child.kill().await?;
            Ok(Stopped::Killed)
        }
    }
}
