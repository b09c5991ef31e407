//! Waiting for the operator's stop signal.

use std::future::Future;
use std::io;

/// Registers for SIGTERM and SIGINT now, and returns a future that resolves on the first of them
/// (Ctrl-C elsewhere than Unix). Call it before announcing readiness, so no early signal is lost.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
