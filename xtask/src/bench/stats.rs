//! The little statistics the report needs: median with min and max over
//! rounds, and number formatting that reads well in a markdown table.

/// Median, min and max of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no (finite) values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `0.987 (0.951–1.012)`.
    pub fn ratio(&self) -> String {
        format!("{:.3} ({:.3}–{:.3})", self.median, self.min, self.max)
    }
}

/// Per-round ratios `a[i] / b[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if *y > 0.0 { x / y } else { f64::NAN })
        .collect()
}

pub fn ratio_cell(s: Option<Spread>) -> String {
    s.map_or_else(|| "n/a".into(), |s| s.ratio())
}

/// `65,134`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A share as a percentage: `0.42 %`.
pub fn pct(share: f64) -> String {
    if share < 0.1 {
        format!("{:.2} %", share * 100.0)
    } else {
        format!("{:.1} %", share * 100.0)
    }
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// KiB as MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[0.99, 1.0, 0.98]).unwrap().ratio(),
            "0.990 (0.980–1.000)"
        );
    }

    #[test]
    fn ratios_skip_zero() {
        let r = ratios(&[1.0, 2.0], &[2.0, 0.0]);
        assert_eq!(r[0], 0.5);
        assert!(r[1].is_nan());
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(65134.27), "65,134");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(pct(0.0042), "0.42 %");
        assert_eq!(pct(0.25), "25.0 %");
        assert_eq!(ms(2.171), "2.17 ms");
        assert_eq!(mib(2048), "2.0 MiB");
    }
}
