//! How long EC2 takes to copy a snapshot: the model a plan estimates with and the in-memory EC2
//! copies at.

use std::time::Duration;

/// How long a copy takes: a fixed start-up plus a time per GiB. EC2 publishes no copy speed
/// (it varies with the region pair, the snapshot's history and load); the default is a
/// middle-of-the-road figure, and a plan always states the model it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTimeModel {
    pub fixed: Duration,
    pub per_gib: Duration,
}

impl CopyTimeModel {
    /// 2 minutes plus 20 s per GiB (180 GiB an hour).
    pub const DEFAULT: Self = Self { fixed: Duration::from_secs(120), per_gib: Duration::from_secs(20) };

    /// The model with the default start-up and `gib_per_hour`.
    pub fn at_gib_per_hour(gib_per_hour: f64) -> Self {
        Self { fixed: Self::DEFAULT.fixed, per_gib: Duration::from_secs_f64(3600.0 / gib_per_hour) }
    }

    pub fn duration(&self, size_gib: u64) -> Duration {
        self.fixed.saturating_add(self.per_gib.saturating_mul(u32::try_from(size_gib).unwrap_or(u32::MAX)))
    }

    /// What is left of a copy at `percent`.
    pub fn remaining(&self, size_gib: u64, percent: u8) -> Duration {
        self.duration(size_gib).mul_f64(f64::from(100 - percent.min(100)) / 100.0)
    }

    /// In words, for the plan's output.
    pub fn describe(&self) -> String {
        let gib_per_hour = if self.per_gib.is_zero() { f64::INFINITY } else { 3600.0 / self.per_gib.as_secs_f64() };
        format!("{} s start-up + {gib_per_hour:.0} GiB per hour for each copy", self.fixed.as_secs())
    }
}
