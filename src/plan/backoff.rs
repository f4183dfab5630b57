//! Crash-loop backoff: the first restart is immediate, then `backoff_initial` doubling up to
//! `backoff_max` (Kubernetes' CrashLoopBackOff with an immediate first retry).

use std::time::Duration;

use crate::manifest::RestartPolicy;

/// Delay before restarting after `failures` consecutive failures (1 = the first failure).
pub fn delay(failures: u32, policy: &RestartPolicy) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let doublings = (failures - 2).min(30);
    policy
        .backoff_initial
        .get()
        .checked_mul(1u32 << doublings)
        .unwrap_or(Duration::MAX)
        .min(policy.backoff_max.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_then_capped() {
        let p = RestartPolicy::default();
        let secs: Vec<u64> = (1..=9).map(|n| delay(n, &p).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(delay(u32::MAX, &p), Duration::from_secs(300));
    }
}
