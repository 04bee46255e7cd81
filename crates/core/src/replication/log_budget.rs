//! A budget for log lines about datagrams: anyone who can reach a receiving
//! port decides how many datagrams arrive, never how many lines are logged.

/// Lines allowed per window, and what was held back.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window_ms: u64,
    window_start: u64,
    used: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines were held back in the window before.
    Log { suppressed: u64 },
    /// Hold it back (counted).
    Suppress,
}

impl LogBudget {
    pub fn new(per_window: u32, window_ms: u64) -> LogBudget {
        LogBudget {
            per_window,
            window_ms,
            window_start: 0,
            used: 0,
            suppressed: 0,
        }
    }

    /// Decides about one line at `now_ms` (any monotonic clock).
    pub fn check(&mut self, now_ms: u64) -> Verdict {
        if now_ms.saturating_sub(self.window_start) >= self.window_ms {
            self.window_start = now_ms;
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_bounded_number_of_lines() {
        let mut budget = LogBudget::new(20, 1000);
        let mut logged = 0;
        let mut reported = 0;
        // 4.8 million datagrams over 10 seconds.
        for i in 0..4_800_000u64 {
            if let Verdict::Log { suppressed } = budget.check(i * 10_000 / 4_800_000) {
                logged += 1;
                reported += suppressed;
            }
        }
        assert!(logged <= 20 * 11, "{logged} lines");
        assert_eq!(reported + logged + budget.suppressed, 4_800_000);
    }

    #[test]
    fn quiet_traffic_is_logged_whole() {
        let mut budget = LogBudget::new(3, 1000);
        for t in [0, 10, 20, 1500, 1501, 1502, 2600] {
            assert!(matches!(budget.check(t), Verdict::Log { suppressed: 0 }), "{t}");
        }
        assert_eq!(budget.check(2601), Verdict::Log { suppressed: 0 });
        assert_eq!(budget.check(2602), Verdict::Log { suppressed: 0 });
        assert_eq!(budget.check(2603), Verdict::Suppress);
        assert_eq!(budget.check(3700), Verdict::Log { suppressed: 1 });
    }
}
