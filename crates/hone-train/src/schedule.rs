//! The learning-rate schedule: linear warmup, then linear decay to zero, stepped once
//! per batch ([`LinearSchedule`]), as transformers' `Trainer` does by default.

use crate::config::TrainConfig;

/// transformers' `get_linear_schedule_with_warmup`: the multiplier of the `s`-th step
/// (0-based) rises linearly from 0 over the warmup steps, then falls linearly to 0 at
/// the last step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinearSchedule {
    peak: f64,
    warmup: u64,
    total: u64,
}

impl LinearSchedule {
    pub(crate) fn new(config: &TrainConfig, total: u64) -> Self {
        Self {
            peak: config.learning_rate,
            warmup: (config.warmup_ratio * total as f64).ceil() as u64,
            total,
        }
    }

    pub(crate) fn at(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let left = self.total.saturating_sub(step) as f64;
            (left / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup_ratio: 0.2,
            ..TrainConfig::default()
        };
        let s = LinearSchedule::new(&config, 10);
        let lrs: Vec<f64> = (0..10).map(|i| s.at(i)).collect();
        let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let no_warmup = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                ..config
            },
            4,
        );
        assert_eq!(no_warmup.warmup, 1); // ceil(0.2 * 4)
        let flat = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                warmup_ratio: 0.0,
                ..TrainConfig::default()
            },
            4,
        );
        assert_eq!(flat.at(0), 1.0);
        assert_eq!(flat.at(3), 0.25);
    }
}
