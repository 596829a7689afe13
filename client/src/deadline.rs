//! Waiting for a sans-IO machine's next timeout: every driver loop selects on
//! its machine's `poll_timeout()`, which is a deadline or none ("only input can
//! wake me").

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
