//! Stopping a process the way `./lab stop` and process managers ask:
//! SIGTERM (or Ctrl-C). Every binary of the lab waits on [`terminated`]
//! and then finishes what it holds (requests in flight, the job in hand,
//! a bake) before it exits.

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
