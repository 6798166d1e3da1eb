//! A circuit breaker's state machine: closed until `threshold` consecutive failures, then open for `cool_down`
//! (calls fail fast), then half-open: one probe at a time goes through; its success closes the circuit, its
//! failure opens it again. A probe that never reports (its holder crashed) is given up after another cool-down,
//! so a lost probe cannot hold the circuit open for ever. Pure: the caller supplies the time and keeps the state (in memory for the LLM, in the
//! state store for CRMs).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    pub threshold: u32,
    pub cool_down_secs: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub open_until: Option<DateTime<Utc>>,
    /// A half-open probe is out until then: others wait until it reports (or this passes).
    pub probe_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as the probe.
    Probe,
    /// Open (or a probe is out): fail fast.
    Reject,
}

impl Breaker {
    pub fn admit(&mut self, now: DateTime<Utc>, policy: &BreakerPolicy) -> Admit {
        match self.open_until {
            None => Admit::Pass,
            Some(until) if now < until => Admit::Reject,
            Some(_) if self.probe_until.is_some_and(|p| now < p) => Admit::Reject,
            Some(_) => {
                self.probe_until = Some(now + Duration::seconds(policy.cool_down_secs));
                Admit::Probe
            }
        }
    }

    /// `closed`, `open` or `half_open` (open, its cool-down over), for logs and inspection.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        match self.open_until {
            None => "closed",
            Some(until) if now < until => "open",
            Some(_) => "half_open",
        }
    }

    /// Record an outcome; returns the transition it caused, if any ("opened", "closed"), for logs and metrics.
    pub fn record(&mut self, success: bool, now: DateTime<Utc>, policy: &BreakerPolicy) -> Option<&'static str> {
        let was_open = self.open_until.is_some();
        self.probe_until = None;
        if success {
            self.consecutive_failures = 0;
            self.open_until = None;
            return was_open.then_some("closed");
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if was_open || self.consecutive_failures >= policy.threshold {
            self.open_until = Some(now + Duration::seconds(policy.cool_down_secs));
            return Some("opened");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cool_down_and_closes_on_success() {
        let policy = BreakerPolicy { threshold: 3, cool_down_secs: 60 };
        let t0 = DateTime::UNIX_EPOCH;
        let mut b = Breaker::default();
        for _ in 0..2 {
            assert_eq!(b.admit(t0, &policy), Admit::Pass);
            assert_eq!(b.record(false, t0, &policy), None);
        }
        assert_eq!(b.record(false, t0, &policy), Some("opened"));
        assert_eq!(b.admit(t0 + Duration::seconds(59), &policy), Admit::Reject);
        assert_eq!(b.admit(t0 + Duration::seconds(61), &policy), Admit::Probe);
        assert_eq!(b.admit(t0 + Duration::seconds(61), &policy), Admit::Reject, "one probe at a time");
        assert_eq!(b.record(false, t0 + Duration::seconds(62), &policy), Some("opened"), "a failed probe reopens");
        assert_eq!(b.admit(t0 + Duration::seconds(100), &policy), Admit::Reject);
        assert_eq!(b.admit(t0 + Duration::seconds(123), &policy), Admit::Probe);
        assert_eq!(b.record(true, t0 + Duration::seconds(123), &policy), Some("closed"));
        assert_eq!(b.admit(t0 + Duration::seconds(124), &policy), Admit::Pass);
    }

    #[test]
    fn a_lost_probe_is_given_up_after_a_cool_down() {
        let policy = BreakerPolicy { threshold: 1, cool_down_secs: 60 };
        let t0 = DateTime::UNIX_EPOCH;
        let mut b = Breaker::default();
        b.record(false, t0, &policy);
        assert_eq!(b.state(t0), "open");
        assert_eq!(b.admit(t0 + Duration::seconds(60), &policy), Admit::Probe);
        assert_eq!(b.state(t0 + Duration::seconds(60)), "half_open");
        assert_eq!(b.admit(t0 + Duration::seconds(119), &policy), Admit::Reject);
        assert_eq!(b.admit(t0 + Duration::seconds(120), &policy), Admit::Probe, "the first probe never reported");
    }
}
