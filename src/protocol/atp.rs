//! ATP amounts. The wire carries ATP as a decimal number (the seed's `float`); the ledger
//! counts integer micro-ATP so that conservation is exact: no rounding can mint or lose a unit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::limits::ATP_AMOUNT_MAX;

/// Micro-ATP in one ATP.
pub const MICROS_PER_ATP: u64 = 1_000_000;

/// A non-negative amount of ATP, in micro-ATP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Atp(u64);

/// Why a number is not an acceptable ATP amount.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AtpError {
    #[error("{what} is not a finite number ({value})")]
    NotFinite { what: &'static str, value: f64 },
    #[error("{what} is negative ({value})")]
    Negative { what: &'static str, value: f64 },
    #[error("{what} is larger than the maximum of {ATP_AMOUNT_MAX:e} ATP ({value:e})")]
    TooLarge { what: &'static str, value: f64 },
    #[error("{what} must be more than zero")]
    Zero { what: &'static str },
}

impl Atp {
    pub const ZERO: Atp = Atp(0);

    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Converts a wire amount, refusing NaN, infinities, negatives and absurd sizes. Rounds to
    /// the nearest micro-ATP. `what` names the field in the error.
    pub fn from_f64(value: f64, what: &'static str) -> Result<Self, AtpError> {
        if !value.is_finite() {
            return Err(AtpError::NotFinite { what, value });
        }
        if value < 0.0 {
            return Err(AtpError::Negative { what, value });
        }
        if value > ATP_AMOUNT_MAX {
            return Err(AtpError::TooLarge { what, value });
        }
        // In range: value * 1e6 <= 1e18 < u64::MAX, so the cast cannot saturate.
        Ok(Self((value * MICROS_PER_ATP as f64).round() as u64))
    }

    /// Like [`Atp::from_f64`], and also refuses zero.
    pub fn positive_from_f64(value: f64, what: &'static str) -> Result<Self, AtpError> {
        let atp = Self::from_f64(value, what)?;
        if atp == Self::ZERO {
            return Err(AtpError::Zero { what });
        }
        Ok(atp)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_ATP as f64
    }

    /// The wire amount for a claim that must not exceed `self` (ATP consumed against a lock):
    /// above about 4.5e9 ATP an `f64` cannot hold every micro-ATP, and the nearest one may
    /// read back ([`Atp::from_f64`]) one micro-ATP above. Steps down to one that does not.
    pub fn as_f64_at_most(self) -> f64 {
        let mut value = self.as_f64();
        // Out of range (never for an amount built by `from_f64`) ends the loop too.
        while Self::from_f64(value, "amount").is_ok_and(|back| back > self) {
            value = value.next_down();
        }
        value
    }

    pub fn checked_add(self, other: Atp) -> Option<Atp> {
        self.0.checked_add(other.0).map(Atp)
    }

    pub fn checked_sub(self, other: Atp) -> Option<Atp> {
        self.0.checked_sub(other.0).map(Atp)
    }

    pub fn min(self, other: Atp) -> Atp {
        Atp(self.0.min(other.0))
    }
}

impl fmt::Display for Atp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_ATP;
        let frac = self.0 % MICROS_PER_ATP;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let text = format!("{whole}.{frac:06}");
            f.write_str(text.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_amounts_are_refused_with_the_field_named() {
        assert!(matches!(
            Atp::from_f64(f64::NAN, "atp_budget"),
            Err(AtpError::NotFinite { what: "atp_budget", .. })
        ));
        assert!(matches!(
            Atp::from_f64(f64::INFINITY, "x"),
            Err(AtpError::NotFinite { .. })
        ));
        assert!(matches!(Atp::from_f64(-0.5, "x"), Err(AtpError::Negative { .. })));
        assert!(matches!(Atp::from_f64(2.0e12, "x"), Err(AtpError::TooLarge { .. })));
        assert!(matches!(Atp::positive_from_f64(0.0, "x"), Err(AtpError::Zero { .. })));
        assert!(matches!(
            Atp::positive_from_f64(1.0e-9, "x"),
            Err(AtpError::Zero { .. })
        ));
    }

    #[test]
    fn a_claimed_amount_never_reads_back_as_more_than_it_was() {
        let start = 4_500_000_000 * MICROS_PER_ATP;
        let mut plain_rounded_up = 0;
        for micros in start..start + 10_000 {
            let atp = Atp::from_micros(micros);
            if Atp::from_f64(atp.as_f64(), "x").expect("in range") > atp {
                plain_rounded_up += 1;
            }
            let back = Atp::from_f64(atp.as_f64_at_most(), "x").expect("in range");
            assert!(back <= atp, "{micros} µATP reads back as {}", back.micros());
            assert!(
                atp.micros() - back.micros() <= 2,
                "{micros} µATP lost more than rounding"
            );
        }
        assert!(
            plain_rounded_up > 0,
            "no amount here rounds up: the range shows nothing"
        );
    }

    #[test]
    fn amounts_convert_exactly_at_micro_precision() {
        let a = Atp::from_f64(0.1, "x").expect("ok");
        let b = Atp::from_f64(0.2, "x").expect("ok");
        assert_eq!(a.checked_add(b), Some(Atp::from_f64(0.3, "x").expect("ok")));
        assert_eq!(Atp::from_f64(1234.5, "x").expect("ok").to_string(), "1234.5");
        assert_eq!(Atp::from_micros(7).to_string(), "0.000007");
        assert_eq!(Atp::from_f64(10.0, "x").expect("ok").to_string(), "10");
    }
}
