//! Resource quantities (`"500m"`, `"1.5"`, `"128Mi"`, `"1e3"`, `"2G"`), parsed exactly into
//! thousandths of a unit, which is what every consumer needs: CPU in millicores, memory in
//! milli-bytes rounded up to bytes.
//!
//! Bad input gets an error naming it; values beyond ~9.2e15 units saturate at the bound
//! instead of overflowing (no cluster has more).

/// A quantity in thousandths of its unit (millicores for CPU; bytes are `milli / 1000`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    pub milli: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

impl Quantity {
    pub const ZERO: Quantity = Quantity { milli: 0 };

    pub fn from_milli(milli: i64) -> Quantity {
        Quantity { milli }
    }

    pub fn from_units(units: i64) -> Quantity {
        Quantity { milli: units.saturating_mul(1000) }
    }

    /// Whole units, rounded up (Kubernetes rounds resource values up: `0.5` bytes is 1 byte).
    pub fn units_ceil(self) -> i64 {
        self.milli.div_euclid(1000) + i64::from(self.milli.rem_euclid(1000) != 0)
    }

    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let err = || QuantityError(s.to_string());
        let t = s.trim();
        if t.is_empty() || t.len() > 64 {
            return Err(err());
        }
        let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(t.len());
        let (num, suffix) = t.split_at(num_end);
        let (neg, digits) = match num.as_bytes().first() {
            Some(b'-') => (true, &num[1..]),
            Some(b'+') => (false, &num[1..]),
            _ => (false, num),
        };
        if digits.is_empty() || digits.contains(['+', '-']) || digits.matches('.').count() > 1 || digits == "." {
            return Err(err());
        }
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        // value = mantissa * 10^exp10 * 2^exp2 (in units)
        let mut mantissa: i128 = 0;
        for c in int_part.chars().chain(frac_part.chars()) {
            mantissa = mantissa.saturating_mul(10).saturating_add(i128::from(c as u8 - b'0'));
        }
        let mut exp10: i32 = -(frac_part.len() as i32);
        let mut exp2: u32 = 0;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            s if s.starts_with(['e', 'E']) => {
                let e: i32 = s[1..].parse().map_err(|_| err())?;
                if !(-30..=30).contains(&e) {
                    return Err(err());
                }
                exp10 += e;
            }
            _ => return Err(err()),
        }
        // To milli-units, rounding up any fraction of a milli-unit (as Kubernetes does).
        exp10 += 3;
        let mut v = mantissa.saturating_mul(1i128 << exp2);
        if exp10 >= 0 {
            for _ in 0..exp10 {
                v = v.saturating_mul(10);
            }
        } else {
            let d = 10i128.checked_pow((-exp10) as u32).unwrap_or(i128::MAX);
            v = v / d + i128::from(v % d != 0);
        }
        let v = v.min(i64::MAX as i128 / 2) as i64;
        Ok(Quantity { milli: if neg { -v } else { v } })
    }

    /// CPU as Kubernetes prints it: whole cores when exact, else millicores (`"250m"`).
    pub fn cpu_string(self) -> String {
        if self.milli % 1000 == 0 { format!("{}", self.milli / 1000) } else { format!("{}m", self.milli) }
    }

    /// Memory in the largest binary unit that is exact (`"128Mi"`), else bytes.
    pub fn memory_string(self) -> String {
        let b = self.units_ceil();
        for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if b != 0 && b % (1i64 << shift) == 0 {
                return format!("{}{suffix}", b >> shift);
            }
        }
        b.to_string()
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        let cases: &[(&str, i64)] = &[
            ("1", 1000),
            ("500m", 500),
            ("0.5", 500),
            ("1.5", 1500),
            ("100n", 1),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("1Gi", (1i64 << 30) * 1000),
            ("2k", 2_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("+3", 3000),
            ("-2m", -2),
            (".5", 500),
            ("5.", 5000),
        ];
        for (s, milli) in cases {
            assert_eq!(Quantity::parse(s), Ok(Quantity { milli: *milli }), "{s}");
        }
    }

    #[test]
    fn refuses_malformed_input() {
        for s in ["", "m", "1.2.3", "1x", "--1", "1Mii", "1e", "1e99", ".", "1 Gi", &"9".repeat(80)] {
            assert!(Quantity::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn huge_values_saturate() {
        assert!(Quantity::parse("999999999999999999999999Ei").unwrap().milli > 1 << 60);
    }

    #[test]
    fn prints_as_kubernetes_does() {
        assert_eq!(Quantity::parse("250m").unwrap().cpu_string(), "250m");
        assert_eq!(Quantity::parse("2").unwrap().cpu_string(), "2");
        assert_eq!(Quantity::parse("128Mi").unwrap().memory_string(), "128Mi");
        assert_eq!(Quantity::parse("1000").unwrap().memory_string(), "1000");
        assert_eq!(Quantity::parse("0.5").unwrap().units_ceil(), 1);
    }
}
