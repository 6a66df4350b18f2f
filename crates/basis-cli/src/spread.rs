//! Mean, spread and 95% confidence interval of a few values (one per seed): what a
//! claim measured on a handful of runs can say, and what it cannot.

/// Two-sided 95% quantiles of Student's t for 1 to 30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Mean and sample standard deviation of values measured once per seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// How many values (seeds).
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation (`n - 1` in the denominator; 0 for one value).
    pub sd: f64,
}

/// What a difference's 95% confidence interval says of "greater than zero".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is above zero.
    Holds,
    /// The whole interval is below zero.
    Fails,
    /// The interval contains zero, or there is one value only.
    Unresolved,
}

impl Spread {
    /// The spread of `values` (`None` when there are none or one is not finite).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { n, mean, sd })
    }

    /// Half-width of the 95% confidence interval of the mean (Student's t), `None` for
    /// one value.
    pub fn ci95(&self) -> Option<f64> {
        let df = self.n.checked_sub(1).filter(|&d| d > 0)?;
        let t = T95[df.min(T95.len()) - 1];
        Some(t * self.sd / (self.n as f64).sqrt())
    }

    /// Whether the mean is above zero at 95% confidence.
    pub fn verdict(&self) -> Verdict {
        match self.ci95() {
            Some(h) if self.mean - h > 0.0 => Verdict::Holds,
            Some(h) if self.mean + h < 0.0 => Verdict::Fails,
            _ => Verdict::Unresolved,
        }
    }

    /// `mean ± sd` of the values times `scale`, with `decimals` digits.
    pub fn show(&self, scale: f64, decimals: usize) -> String {
        if self.n == 1 {
            format!("{:.decimals$}", scale * self.mean)
        } else {
            format!(
                "{:.decimals$} ± {:.decimals$}",
                scale * self.mean,
                scale * self.sd
            )
        }
    }

    /// The 95% interval of the mean times `scale`, signed: `[-0.12, +0.80]`.
    pub fn show_ci(&self, scale: f64, decimals: usize) -> String {
        match self.ci95() {
            Some(h) => format!(
                "95% CI [{:+.decimals$}, {:+.decimals$}]",
                scale * (self.mean - h),
                scale * (self.mean + h)
            ),
            None => "one seed: no interval".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sample_sd_and_t_interval_are_the_textbook_ones() {
        let s = Spread::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean, s.sd), (3, 2.0, 1.0));
        // t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3).
        assert!((s.ci95().unwrap() - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        // 2 - 2.48 < 0: three values from 1 to 3 do not show a positive mean.
        assert_eq!(s.verdict(), Verdict::Unresolved);
        assert_eq!(
            Spread::of(&[2.0, 2.5, 3.0]).unwrap().verdict(),
            Verdict::Holds
        );
        assert_eq!(
            Spread::of(&[-1.0, 1.0, 0.5]).unwrap().verdict(),
            Verdict::Unresolved
        );
        assert_eq!(
            Spread::of(&[-3.0, -2.0, -2.5]).unwrap().verdict(),
            Verdict::Fails
        );
        let one = Spread::of(&[0.9]).unwrap();
        assert_eq!(
            (one.sd, one.ci95(), one.verdict()),
            (0.0, None, Verdict::Unresolved)
        );
        assert_eq!(one.show(100.0, 2), "90.00");
        assert_eq!(s.show(1.0, 1), "2.0 ± 1.0");
        assert_eq!(
            Spread::of(&[0.001, 0.003]).unwrap().show_ci(100.0, 2),
            "95% CI [-1.07, +1.47]"
        );
        assert!(Spread::of(&[]).is_none() && Spread::of(&[f64::NAN]).is_none());
    }
}
