//! The statistics of A/B tests: the two-proportion z-test and Pearson's
//! chi-square test of independence on a k×2 table (k = 2 to 5 arms), with
//! their p-values. Pure functions; formulas in docs/measurement.md.
//!
//! The normal tail comes from `erfc` (Numerical Recipes' Chebyshev fit,
//! fractional error below 1.2·10⁻⁷ everywhere); the chi-square tail has a
//! closed form for the 1 to 4 degrees of freedom that 2 to 5 arms give, so no
//! incomplete gamma function is needed.

/// The complementary error function, `1 − erf(x)`.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// P(X ≥ x) for X chi-square distributed with `df` degrees of freedom, for
/// `df` in 1..=4 (closed forms); `None` for other `df`.
pub fn chi_square_upper_tail(x: f64, df: u32) -> Option<f64> {
    if x <= 0.0 {
        return Some(1.0);
    }
    let half = x / 2.0;
    Some(match df {
        1 => erfc(half.sqrt()),
        2 => (-half).exp(),
        3 => erfc(half.sqrt()) + (2.0 * x / std::f64::consts::PI).sqrt() * (-half).exp(),
        4 => (-half).exp() * (1.0 + half),
        _ => return None,
    })
}

/// Successes out of trials, one arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportion {
    pub successes: u64,
    pub trials: u64,
}

impl Proportion {
    pub fn rate(self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            self.successes as f64 / self.trials as f64
        }
    }
}

/// A test's statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

/// The two-proportion z-test with the pooled standard error:
/// `z = (p₁ − p₂) / √(p̂(1 − p̂)(1/n₁ + 1/n₂))`, `p̂ = (x₁ + x₂)/(n₁ + n₂)`,
/// two-sided p = `erfc(|z|/√2)`. `None` when an arm is empty or every
/// trial (or none) succeeded in both (no variance: nothing to test).
pub fn two_proportion_z(a: Proportion, b: Proportion) -> Option<TestResult> {
    if a.trials == 0 || b.trials == 0 || a.successes > a.trials || b.successes > b.trials {
        return None;
    }
    let (n1, n2) = (a.trials as f64, b.trials as f64);
    let pooled = (a.successes + b.successes) as f64 / (n1 + n2);
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2);
    if variance <= 0.0 {
        return None;
    }
    let z = (a.rate() - b.rate()) / variance.sqrt();
    Some(TestResult { statistic: z, p_value: erfc(z.abs() / std::f64::consts::SQRT_2) })
}

/// Pearson's chi-square test of independence of arm and outcome on the k×2
/// table of successes and failures: `χ² = Σ (O − E)² / E`, `E` = row total ×
/// column total / grand total, `k − 1` degrees of freedom. `None` for fewer
/// than 2 or more than 5 arms, an empty arm, or an outcome column that is
/// all zero (no variance).
pub fn chi_square(arms: &[Proportion]) -> Option<TestResult> {
    if !(2..=5).contains(&arms.len()) || arms.iter().any(|a| a.trials == 0 || a.successes > a.trials) {
        return None;
    }
    let total: f64 = arms.iter().map(|a| a.trials as f64).sum();
    let successes: f64 = arms.iter().map(|a| a.successes as f64).sum();
    let failures = total - successes;
    if successes == 0.0 || failures == 0.0 {
        return None;
    }
    let mut statistic = 0.0;
    for a in arms {
        let n = a.trials as f64;
        let (e_s, e_f) = (n * successes / total, n * failures / total);
        let (o_s, o_f) = (a.successes as f64, n - a.successes as f64);
        statistic += (o_s - e_s).powi(2) / e_s + (o_f - e_f).powi(2) / e_f;
    }
    let p_value = chi_square_upper_tail(statistic, arms.len() as u32 - 1)?;
    Some(TestResult { statistic, p_value })
}

/// The outcome of an A/B test at significance `alpha`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The arm with the highest rate (the lowest index on a tie).
    pub best: usize,
    /// The best arm against the runner-up.
    pub z_test: Option<TestResult>,
    /// Every arm at once (k×2).
    pub chi_square: Option<TestResult>,
    /// `Some(best)` when the difference is significant: the chi-square test
    /// over every arm and the z-test of the best against the runner-up both
    /// give p < alpha (for 2 arms they are the same test: χ² = z²).
    pub winner: Option<usize>,
}

/// Decides an A/B test: see [`Decision::winner`].
pub fn decide(arms: &[Proportion], alpha: f64) -> Decision {
    let mut order: Vec<usize> = (0..arms.len()).collect();
    // Highest rate first; ties keep the lower index first (stable sort).
    order.sort_by(|&i, &j| arms[j].rate().partial_cmp(&arms[i].rate()).unwrap_or(std::cmp::Ordering::Equal));
    let best = order.first().copied().unwrap_or(0);
    let z_test = order.get(1).and_then(|&second| two_proportion_z(arms[best], arms[second]));
    let chi = chi_square(arms);
    let significant = match (z_test, chi) {
        (Some(z), Some(c)) => z.statistic > 0.0 && z.p_value < alpha && c.p_value < alpha,
        _ => false,
    };
    Decision { best, z_test, chi_square: chi, winner: significant.then_some(best) }
}

#[cfg(test)]
mod tests {
    //! Expected values computed by hand (and checked with Python's
    //! `math.erfc` and scipy's `chi2.sf`/`norm.sf`), to 6 significant digits.

    use super::*;

    fn p(successes: u64, trials: u64) -> Proportion {
        Proportion { successes, trials }
    }

    #[track_caller]
    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} is not {expected} ± {tolerance}");
    }

    #[test]
    fn normal_and_chi_square_tails() {
        close(erfc(0.0), 1.0, 1e-7);
        close(normal_upper_tail(1.959_964), 0.025, 1e-6);
        close(normal_upper_tail(-1.0), 0.841_344_7, 1e-6);
        close(erfc(3.0), 2.209_050e-5, 1e-9);
        // 95% critical values of chi-square with 1..4 degrees of freedom.
        for (x, df) in [(3.841_459, 1), (5.991_465, 2), (7.814_728, 3), (9.487_729, 4)] {
            close(chi_square_upper_tail(x, df).unwrap(), 0.05, 1e-6);
        }
        close(chi_square_upper_tail(1.0, 3).unwrap(), 0.801_251_9, 1e-6);
        assert_eq!(chi_square_upper_tail(1.0, 5), None);
        assert_eq!(chi_square_upper_tail(0.0, 2), Some(1.0));
    }

    /// 120/1000 against 90/1000: p̂ = 0.105, SE = √(0.105 × 0.895 × 0.002) =
    /// 0.0137095, z = 0.03 / 0.0137095 = 2.188266, p = 0.028650.
    #[test]
    fn z_test_by_hand() {
        let r = two_proportion_z(p(120, 1000), p(90, 1000)).unwrap();
        close(r.statistic, 2.188_266, 1e-5);
        close(r.p_value, 0.028_650, 1e-5);
        // Symmetric, with the sign of the difference.
        let back = two_proportion_z(p(90, 1000), p(120, 1000)).unwrap();
        close(back.statistic, -2.188_266, 1e-5);
        close(back.p_value, r.p_value, 1e-12);
        // No variance, or an empty arm: nothing to test.
        assert_eq!(two_proportion_z(p(0, 100), p(0, 100)), None);
        assert_eq!(two_proportion_z(p(100, 100), p(50, 50)), None);
        assert_eq!(two_proportion_z(p(1, 0), p(0, 100)), None);
    }

    /// Arms 100/1000, 130/1000, 160/1000: 390 successes of 3000, expected
    /// 130 successes and 870 failures per arm; χ² = (30² + 0 + 30²)/130 +
    /// (30² + 0 + 30²)/870 = 13.846154 + 2.068966 = 15.915119, df 2,
    /// p = e^(−χ²/2) = 0.000350006.
    #[test]
    fn chi_square_by_hand() {
        let r = chi_square(&[p(100, 1000), p(130, 1000), p(160, 1000)]).unwrap();
        close(r.statistic, 15.915_119, 1e-5);
        close(r.p_value, 3.500_06e-4, 1e-8);
        // For two arms it is the z-test squared, with the same p-value.
        let two = chi_square(&[p(120, 1000), p(90, 1000)]).unwrap();
        close(two.statistic, 2.188_266_f64.powi(2), 1e-4);
        close(two.p_value, 0.028_650, 1e-5);
        assert_eq!(chi_square(&[p(1, 10)]), None);
        assert_eq!(chi_square(&[p(1, 10); 6]), None);
        assert_eq!(chi_square(&[p(0, 10), p(0, 10)]), None);
    }

    /// 100, 160 and 110 of 1000: χ² = 19.114171, p = e^(−χ²/2) = 7.06985e-5;
    /// the best (160) against the runner-up (110): p̂ = 0.135, SE = 0.0152824,
    /// z = 3.271750, p = 0.00106884. Both below 0.05: arm 1 wins.
    #[test]
    fn a_significant_winner() {
        let d = decide(&[p(100, 1000), p(160, 1000), p(110, 1000)], 0.05);
        assert_eq!((d.best, d.winner), (1, Some(1)));
        let (z, chi) = (d.z_test.unwrap(), d.chi_square.unwrap());
        close(z.statistic, 3.271_750, 1e-5);
        close(z.p_value, 1.068_84e-3, 1e-7);
        close(chi.statistic, 19.114_171, 1e-5);
        close(chi.p_value, 7.069_85e-5, 1e-9);
    }

    /// 100, 160 and 130 of 1000: every arm together differs (χ² = 15.915, p =
    /// 0.00035), but the best (160) against the runner-up (130) does not:
    /// p̂ = 0.145, SE = 0.0157459, z = 1.905194, p = 0.056755 ≥ 0.05. No winner
    /// at 0.05; at 0.06 arm 1 wins.
    #[test]
    fn the_runner_up_must_lose_too() {
        let arms = [p(100, 1000), p(160, 1000), p(130, 1000)];
        let d = decide(&arms, 0.05);
        assert_eq!((d.best, d.winner), (1, None));
        close(d.z_test.unwrap().statistic, 1.905_194, 1e-5);
        close(d.z_test.unwrap().p_value, 0.056_755, 1e-5);
        assert!(d.chi_square.unwrap().p_value < 0.001);
        assert_eq!(decide(&arms, 0.06).winner, Some(1));
    }

    /// 100, 104 and 98 of 1000: χ² = 0.206187, p = e^(−χ²/2) = 0.902043: no winner.
    #[test]
    fn no_significant_winner() {
        let d = decide(&[p(100, 1000), p(104, 1000), p(98, 1000)], 0.05);
        assert_eq!(d.best, 1);
        assert_eq!(d.winner, None);
        let chi = d.chi_square.unwrap();
        // Expected 100.667 successes and 899.333 failures per arm.
        close(chi.statistic, 0.206_187, 1e-5);
        close(chi.p_value, 0.902_043, 1e-5);
        // Equal rates: the tie goes to the first arm, and nothing is significant.
        let d = decide(&[p(50, 500), p(50, 500)], 0.05);
        assert_eq!((d.best, d.winner), (0, None));
        close(d.z_test.unwrap().p_value, 1.0, 1e-7);
        // Nothing happened at all: no test, no winner.
        let d = decide(&[p(0, 500), p(0, 500), p(0, 500)], 0.05);
        assert_eq!((d.winner, d.chi_square, d.z_test), (None, None, None));
    }
}
