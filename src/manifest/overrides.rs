//! Command-line overrides of manifest fields (the seed's `--check-interval`, `--threshold`,
//! `--llm-enabled`), applied to a parsed [`WorkerSet`] before it is validated.

use super::HumanDuration;
use super::types::WorkerSet;

/// Values given on the command line that replace manifest fields. `None`/`false` leaves the
/// manifest's value alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--check-interval`: replaces `spec.interval`.
    pub interval: Option<HumanDuration>,
    /// `--threshold`: replaces `spec.health.stuck_after`; `discovery_grace` is raised to match
    /// when it would otherwise be shorter.
    pub stuck_after: Option<HumanDuration>,
    /// `--llm-enabled`: sets `spec.llm.enabled` to true.
    pub llm_enabled: bool,
}

impl Overrides {
    /// True when no override is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The flag that set `field` (a dotted path such as `spec.interval`), if an override did.
    pub fn flag_for(&self, field: &str) -> Option<&'static str> {
        match field {
            "spec.interval" if self.interval.is_some() => Some("--check-interval"),
            "spec.health.stuck_after" | "spec.health.discovery_grace"
                if self.stuck_after.is_some() =>
            {
                Some("--threshold")
            }
            _ => None,
        }
    }
}

/// Applies `overrides` to `ws` and describes each change for people, one line each, e.g.
/// `"interval 60s → 5s (--check-interval)"`. An override equal to the manifest's value is still
/// described (the user asked for it); the result is empty when `overrides` is empty.
pub fn apply_overrides(ws: &mut WorkerSet, overrides: &Overrides) -> Vec<String> {
    let mut said = Vec::new();
    let spec = &mut ws.spec;
    if let Some(interval) = overrides.interval {
        said.push(format!(
            "interval {} → {interval} (--check-interval)",
            spec.interval
        ));
        spec.interval = interval;
    }
    if let Some(stuck_after) = overrides.stuck_after {
        let health = &mut spec.health;
        said.push(format!(
            "stuck_after {} → {stuck_after} (--threshold)",
            health.stuck_after
        ));
        health.stuck_after = stuck_after;
        if health.discovery_grace < stuck_after {
            said.push(format!(
                "discovery_grace {} → {stuck_after} (raised to match --threshold: it may not be \
                 shorter than stuck_after)",
                health.discovery_grace
            ));
            health.discovery_grace = stuck_after;
        }
    }
    if overrides.llm_enabled {
        said.push(format!(
            "llm.enabled {} → true (--llm-enabled)",
            spec.llm.enabled
        ));
        spec.llm.enabled = true;
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workerset() -> WorkerSet {
        crate::manifest::parse(
            "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {name: t}\nspec:\n  \
             template: {command: [w]}\n  progress: {file: p, checkpoint: /c}\n  logs: {file: l}\n",
        )
        .unwrap()
    }

    #[test]
    fn no_overrides_change_nothing() {
        let mut ws = workerset();
        let before = ws.clone();
        assert!(apply_overrides(&mut ws, &Overrides::default()).is_empty());
        assert_eq!(ws, before);
        assert!(Overrides::default().is_empty());
    }

    #[test]
    fn check_interval_replaces_the_interval() {
        let mut ws = workerset();
        let said = apply_overrides(
            &mut ws,
            &Overrides {
                interval: Some(HumanDuration::from_secs(5)),
                ..Overrides::default()
            },
        );
        assert_eq!(ws.spec.interval, HumanDuration::from_secs(5));
        assert_eq!(said, ["interval 1m → 5s (--check-interval)"]);
    }

    #[test]
    fn threshold_below_discovery_grace_leaves_grace_alone() {
        let mut ws = workerset();
        let said = apply_overrides(
            &mut ws,
            &Overrides {
                stuck_after: Some(HumanDuration::from_secs(120)),
                ..Overrides::default()
            },
        );
        assert_eq!(ws.spec.health.stuck_after, HumanDuration::from_secs(120));
        assert_eq!(
            ws.spec.health.discovery_grace,
            HumanDuration::from_secs(1200)
        );
        assert_eq!(said, ["stuck_after 5m → 2m (--threshold)"]);
    }

    #[test]
    fn threshold_above_discovery_grace_raises_it_and_says_so() {
        let mut ws = workerset();
        let said = apply_overrides(
            &mut ws,
            &Overrides {
                stuck_after: Some(HumanDuration::from_secs(3600)),
                ..Overrides::default()
            },
        );
        assert_eq!(
            ws.spec.health.discovery_grace,
            HumanDuration::from_secs(3600)
        );
        assert_eq!(said.len(), 2);
        assert!(
            said[1].starts_with("discovery_grace 20m → 1h00m (raised"),
            "{said:?}"
        );
    }

    #[test]
    fn llm_enabled_turns_the_llm_on() {
        let mut ws = workerset();
        let said = apply_overrides(
            &mut ws,
            &Overrides {
                llm_enabled: true,
                ..Overrides::default()
            },
        );
        assert!(ws.spec.llm.enabled);
        assert_eq!(said, ["llm.enabled false → true (--llm-enabled)"]);
    }
}
