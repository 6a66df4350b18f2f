//! What changes over a run: the learning rate at each (fractional) epoch and the
//! [`Phase`] of the specialist (static warm-up, then per-image coefficients).

use crate::recipe::{ScheduleKind, ScheduleSection};

/// The learning rate at `epoch` (fractional: epoch 2.5 is halfway through the third).
pub fn learning_rate(schedule: &ScheduleSection, peak: f64, epochs: usize, epoch: f64) -> f64 {
    let warm = schedule.warmup_epochs;
    if epoch < warm {
        return schedule.warmup_lr + (peak - schedule.warmup_lr) * epoch / warm;
    }
    let t = epoch - warm;
    match schedule.kind {
        ScheduleKind::Cosine => {
            let span = (epochs as f64 - warm).max(1e-9);
            let progress = (t / span).clamp(0.0, 1.0);
            schedule.min_lr
                + 0.5 * (peak - schedule.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        ScheduleKind::Step => peak * schedule.gamma.powf((t / schedule.step_epochs).floor()),
        ScheduleKind::Exponential => peak * schedule.gamma.powf(t),
    }
}

/// What the specialist of a BasisNet runs with during a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first `train.static_fraction` of the steps: every image uses the mean of the bases
    /// (one kernel for the batch, the cost of a static network); the lightweight model
    /// trains on its own loss and the bases all move together.
    StaticWarmup,
    /// Per-image coefficients from the lightweight model: the two-stage network.
    Joint,
}

impl Phase {
    /// The phase at `progress` epochs into a run of `epochs` whose first
    /// `static_fraction` is the warm-up.
    ///
    /// ```
    /// use basis_train::Phase;
    /// assert_eq!(Phase::at(2.9, 4, 0.75), Phase::StaticWarmup);
    /// assert_eq!(Phase::at(3.0, 4, 0.75), Phase::Joint);
    /// assert_eq!(Phase::at(0.0, 4, 0.0), Phase::Joint);
    /// ```
    pub fn at(progress: f64, epochs: usize, static_fraction: f64) -> Self {
        if progress < static_fraction * epochs as f64 {
            Phase::StaticWarmup
        } else {
            Phase::Joint
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let s = ScheduleSection {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 1.0,
            warmup_lr: 0.0,
            min_lr: 0.0,
            ..ScheduleSection::default()
        };
        assert_eq!(learning_rate(&s, 1.0, 11, 0.5), 0.5);
        assert!((learning_rate(&s, 1.0, 11, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 11, 6.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&s, 1.0, 11, 11.0).abs() < 1e-12);
        let step = ScheduleSection {
            kind: ScheduleKind::Step,
            warmup_epochs: 0.0,
            step_epochs: 2.0,
            gamma: 0.5,
            ..ScheduleSection::default()
        };
        assert_eq!(learning_rate(&step, 1.0, 10, 3.9), 0.5);
        assert_eq!(learning_rate(&step, 1.0, 10, 4.0), 0.25);
        let exp = ScheduleSection {
            kind: ScheduleKind::Exponential,
            gamma: 0.9,
            ..step
        };
        assert!((learning_rate(&exp, 1.0, 10, 2.0) - 0.81).abs() < 1e-12);
    }

    #[test]
    fn the_warmup_phase_covers_its_fraction_of_the_steps() {
        assert_eq!(Phase::at(0.0, 4, 0.75), Phase::StaticWarmup);
        assert_eq!(Phase::at(2.999, 4, 0.75), Phase::StaticWarmup);
        assert_eq!(Phase::at(3.0, 4, 0.75), Phase::Joint);
        assert_eq!(Phase::at(0.0, 10, 0.0), Phase::Joint);
    }
}
