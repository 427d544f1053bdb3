//! Values the Debezium format writes other than as the source holds them,
//! counted per table and column.
//!
//! Debezium's converters cannot carry some values (NaN in a decimal, an
//! infinite date) and write null, the column's default or, for a NOT NULL
//! column, a fallback (0, "", the epoch) instead; the format reproduces
//! that. Doing it silently would hide both those values and genuine
//! encoding bugs, so each replacement is counted here and the first one
//! of each column is logged (without the value, which may be private).
//!
//! The counts are process-wide, like the registry of a metrics library:
//! the encoders that replace run on the capture loop and on the
//! snapshot's copy threads, and the metrics endpoint reads them all.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Why a value was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Text that is not valid UTF-8 (a `SQL_ASCII` database).
    NotUtf8,
    /// A value the column's Connect type cannot hold (NaN, an infinity, a
    /// date beyond its range), or one walhouse could not parse.
    NotRepresentable,
    /// An unchanged TOAST value in a column of a type Debezium defines no
    /// placeholder for.
    UnchangedToast,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::NotUtf8 => "text that is not valid UTF-8",
            Why::NotRepresentable => {
                "a value its Connect type cannot hold (NaN, an infinity, out of range) or that did not parse"
            }
            Why::UnchangedToast => "an unchanged TOAST value with no placeholder for its type",
        }
    }
}

/// Replacements per (`schema.table`, column).
#[derive(Debug, Default)]
pub struct Replacements {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl Replacements {
    /// Counts one replaced value; logs the first of its column.
    pub fn count(&self, table: &str, column: &str, why: Why) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&(table.to_owned(), column.to_owned())) {
            *n += 1;
            return;
        }
        counts.insert((table.to_owned(), column.to_owned()), 1);
        drop(counts);
        tracing::warn!(
            table,
            column,
            "the Debezium format cannot carry {}: written as null, the column's default or Debezium's fallback \
             value, as Debezium does; further ones of this column are only counted \
             (walhouse_capture_replaced_values_total)",
            why.as_str()
        );
    }

    /// Every (`schema.table`, column) with its count, in order.
    pub fn counts(&self) -> Vec<((String, String), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// The count of one column (0 when none was replaced).
    pub fn count_of(&self, table: &str, column: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&(table.to_owned(), column.to_owned())).copied().unwrap_or(0)
    }
}

/// The process's replacements.
pub fn replacements() -> &'static Replacements {
    static REPLACEMENTS: OnceLock<Replacements> = OnceLock::new();
    REPLACEMENTS.get_or_init(Replacements::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_table_and_column() {
        let r = Replacements::default();
        r.count("public.t", "n", Why::NotRepresentable);
        r.count("public.t", "n", Why::NotRepresentable);
        r.count("public.t", "d", Why::NotUtf8);
        assert_eq!(r.count_of("public.t", "n"), 2);
        assert_eq!(r.count_of("public.t", "d"), 1);
        assert_eq!(r.count_of("public.u", "n"), 0);
        assert_eq!(r.counts().len(), 2);
    }
}
