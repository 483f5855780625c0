//! Picks the endpoint for a checkout among a group's usable endpoints.

use crate::config::Balance;

/// What the balancer knows of one endpoint of a group.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Index within the group.
    pub index: usize,
    /// Configured weight (≥ 1).
    pub weight: u32,
    /// Connections of the group on it that are checked out or being opened.
    pub busy: usize,
}

/// Chooses one candidate; `tick` is a counter that advances on every call.
pub fn choose(strategy: Balance, candidates: &[Candidate], tick: usize) -> Option<usize> {
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
