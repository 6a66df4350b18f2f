//! Numbers on the command line: parsed and checked before any work, so `nan`, `inf` or a
//! negative value is one sentence from the argument parser.

/// A finite number `>= 0` (thresholds, accuracy drops, budgets).
///
/// ```text
/// "0.5" -> 0.5      "nan", "inf", "-1", "x" -> refused with the reason
/// ```
pub fn non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number, found {text:?}"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("expected a finite number >= 0, found {text}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_non_negative_numbers_pass() {
        assert_eq!(non_negative("0.25"), Ok(0.25));
        assert_eq!(non_negative("0"), Ok(0.0));
        for bad in ["nan", "inf", "-1", "-0.5", "x", ""] {
            assert!(non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(
            non_negative("NaN").unwrap_err(),
            "expected a finite number >= 0, found NaN"
        );
    }
}
