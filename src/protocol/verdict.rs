//! What a party other than the executor found when it checked a result: the quality it
//! computed itself, a refutation, or that the operation has no cheap check. The ledger pays
//! a verifiable operation by its verdict, never by the quality the executor claims.

/// The outcome of checking one result against the task that asked for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The result holds; its quality as the checker computed it (0.0 ..= 1.0).
    Verified { quality: f64 },
    /// The result is wrong for this task; why, for people.
    Refuted { why: String },
    /// The operation declares no cheap check (external programs, models).
    Unverifiable,
}

impl Verdict {
    /// A verdict whose quality is clamped into 0.0 ..= 1.0 (a NaN refutes: a checker bug
    /// must not pay).
    pub fn verified(quality: f64) -> Self {
        if quality.is_nan() {
            return Verdict::Refuted {
                why: "the checker computed no quality".to_owned(),
            };
        }
        Verdict::Verified {
            quality: quality.clamp(0.0, 1.0),
        }
    }

    pub fn refuted(why: impl Into<String>) -> Self {
        Verdict::Refuted { why: why.into() }
    }
}
