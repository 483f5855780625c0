//! Which endpoint a checkout (or a new session) of a group goes to: the candidates are the
//! endpoints whose role fits the group, healthy ones first, and the group's balance strategy
//! picks among them.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Balance, GroupConfig, TargetSessionAttrs};
use crate::endpoint::Endpoint;
use crate::pool::slots::Slots;

/// A group's endpoints as one decision sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupEndpoints<'a> {
    /// The group's endpoints, in the group's order.
    pub(crate) endpoints: &'a [Arc<Endpoint>],
    /// The group's configuration (balance strategy, wanted role).
    pub(crate) config: &'a GroupConfig,
}

impl GroupEndpoints<'_> {
    /// Whether endpoint `e`'s known role lets the group use it.
    pub(crate) fn eligible(&self, e: usize) -> bool {
        self.endpoints[e].allows(self.config.target_session_attrs)
    }

    /// Endpoint for a new connection or checkout: eligible healthy ones by the balance strategy
    /// (only standbys while one is healthy, for `prefer-standby`); when every eligible endpoint
    /// is banned, all of them (trying beats failing blind). `tick` advances the rotation.
    pub(crate) fn choose<C>(&self, slots: &Slots<C>, now: Instant, exclude: &[usize], tick: usize) -> Option<usize> {
        let build = |ignore_bans: bool, standby_only: bool| -> Vec<Candidate> {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(i, ep)| {
                    !exclude.contains(i)
                        && self.eligible(*i)
                        && (ignore_bans || !ep.is_banned(now))
                        && (!standby_only || ep.role().is_some_and(|r| r.standby))
                })
                .map(|(i, ep)| Candidate { index: i, weight: ep.config.weight, busy: slots.at(i).in_use + slots.at(i).opening })
                .collect()
        };
        let mut candidates = Vec::new();
        if self.config.target_session_attrs == TargetSessionAttrs::PreferStandby {
            candidates = build(false, true);
        }
        if candidates.is_empty() {
            candidates = build(false, false);
        }
        if candidates.is_empty() {
            candidates = build(true, false);
        }
        choose(self.config.balance, &candidates, tick)
    }

    /// Where to open a new connection, given the endpoint `e` that [`Self::choose`] picked: `e`
    /// itself unless it is banned (picked because every endpoint is), in which case only an
    /// endpoint whose forced attempt can be claimed now (see [`Endpoint::claim_forced_attempt`]).
    pub(crate) fn open_target(&self, e: usize, now: Instant, exclude: &[usize]) -> Option<usize> {
        let may_open = |i: usize| !self.endpoints[i].is_banned(now) || self.endpoints[i].claim_forced_attempt(now);
        if may_open(e) {
            return Some(e);
        }
        (0..self.endpoints.len()).find(|&i| i != e && !exclude.contains(&i) && self.eligible(i) && may_open(i))
    }
}

/// What the balancer knows of one endpoint of a group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// Index within the group.
    pub(crate) index: usize,
    /// Configured weight (≥ 1).
    pub(crate) weight: u32,
    /// Connections of the group on it that are checked out or being opened.
    pub(crate) busy: usize,
}

/// Chooses one candidate; `tick` is a counter that advances on every call.
pub(crate) fn choose(strategy: Balance, candidates: &[Candidate], tick: usize) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight.max(1))).sum();
    match strategy {
        Balance::RoundRobin => Some(weighted_pick(candidates, tick as u64 % total)),
        Balance::Random => Some(weighted_pick(candidates, fastrand::u64(0..total))),
        Balance::LeastBusy => {
            // Lowest load per unit of weight; the rotation breaks ties so equal endpoints share.
            let n = candidates.len();
            (0..n)
                .map(|k| &candidates[(k + tick) % n])
                .min_by(|a, b| {
                    let la = a.busy as f64 / f64::from(a.weight.max(1));
                    let lb = b.busy as f64 / f64::from(b.weight.max(1));
                    la.total_cmp(&lb)
                })
                .map(|c| c.index)
        }
    }
}

fn weighted_pick(candidates: &[Candidate], mut point: u64) -> usize {
    for c in candidates {
        let w = u64::from(c.weight.max(1));
        if point < w {
            return c.index;
        }
        point -= w;
    }
    candidates[candidates.len() - 1].index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().enumerate().map(|(index, &weight)| Candidate { index, weight, busy: 0 }).collect()
    }

    #[test]
    fn round_robin_follows_weights() {
        let c = cands(&[1, 3]);
        let picks: Vec<usize> = (0..8).filter_map(|t| choose(Balance::RoundRobin, &c, t)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 6);
    }

    #[test]
    fn least_busy_prefers_idle_endpoint() {
        let mut c = cands(&[1, 1]);
        c[0].busy = 3;
        assert_eq!(choose(Balance::LeastBusy, &c, 0), Some(1));
    }
}
