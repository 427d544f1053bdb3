//! Setting aside the rows a target refuses, so one bad value costs only
//! its own record.
//!
//! A batch is written in one transaction. When the target refuses a value
//! ([`Failure::Value`]: out of range, too wide, malformed), the whole
//! transaction is rolled back; the rows it refused are then found by
//! halves, each half appended in a transaction that is rolled back
//! ([`Warehouse::probe`]), and become dead letters with the target's own
//! message. The rest is written again, with the same offsets: a bad row
//! among `n` costs about `2·log2(n)` probes.

use super::{Batch, DeadLetter, Failure, TableRows, Warehouse, WarehouseError};

/// Rounds of write → find refused rows → write again. A row refused only
/// alongside others (which no probe of a single row shows) ends it.
const MAX_ROUNDS: usize = 3;

/// Writes `batch`, setting aside every row the target refuses as a dead
/// letter in the same transaction. Returns how many rows were set aside.
/// Any failure other than a refused value is returned as it came.
pub async fn write<W: Warehouse>(w: &mut W, group: &str, batch: &mut Batch) -> Result<usize, WarehouseError> {
    let mut set_aside = 0;
    let mut round = 0;
    loop {
        let refused = match w.write(group, batch).await {
            Ok(()) => return Ok(set_aside),
            Err(e) => e,
        };
        round += 1;
        if refused.failure() != Failure::Value || round > MAX_ROUNDS {
            return Err(refused);
        }
        let mut found = 0;
        for (table, rows) in &mut batch.tables {
            let bad = refused_rows(w, table, rows).await?;
            found += bad.len();
            set_aside_rows(rows, bad, &mut batch.dead_letters)?;
        }
        if found == 0 {
            // Not a row of ours (a dead letter, a file record): nothing to set aside.
            return Err(refused);
        }
        if let Some(f) = batch.file.as_mut() {
            f.rows -= found as i64;
            f.dead_letters += found as i64;
        }
        tracing::warn!(
            rows = found,
            "the warehouse refused values: those rows are dead letters"
        );
        set_aside += found;
    }
}

/// The rows of `rows` the target refuses on their own, with its message,
/// in ascending order.
async fn refused_rows<W: Warehouse>(
    w: &mut W,
    table: &super::TableRef,
    rows: &TableRows,
) -> Result<Vec<(usize, String)>, WarehouseError> {
    let mut bad = Vec::new();
    // Ranges still to probe; a refused range is split in two.
    let mut todo = vec![(0, rows.len())];
    while let Some((from, to)) = todo.pop() {
        if from >= to {
            continue;
        }
        match w.probe(table, &rows.range(from, to)).await {
            Ok(()) => {}
            Err(e) if e.failure() == Failure::Value => {
                if to - from == 1 {
                    bad.push((from, e.to_string()));
                } else {
                    let mid = from + (to - from) / 2;
                    // Popped left half first.
                    todo.push((mid, to));
                    todo.push((from, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    bad.sort_by_key(|(i, _)| *i);
    Ok(bad)
}

/// Moves the rows at `bad` (ascending) out of `rows` into dead letters.
fn set_aside_rows(
    rows: &mut TableRows,
    bad: Vec<(usize, String)>,
    dead: &mut Vec<DeadLetter>,
) -> Result<(), WarehouseError> {
    let mut keep = vec![true; rows.len()];
    for (i, error) in bad {
        if let Some(k) = keep.get_mut(i) {
            *k = false;
        }
        dead.push(DeadLetter {
            origin: rows.origins.get(i).unwrap_or_default(),
            error: format!("the warehouse refused this row: {error}"),
        });
    }
    rows.retain(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::{Cell, Dialect, Encoded, Origin};

    #[test]
    fn set_aside_rows_keep_their_origin_and_order() {
        let origin = |o: i64| Origin {
            source: "cdc",
            offset: Some(o),
            ..Origin::default()
        };
        let columns = vec![super::super::ColumnDef::new("n", super::super::SqlType::BigInt)];
        let encoded = |values: &[i64]| {
            let mut rows = TableRows::new(Dialect::Postgres, columns.clone()).expect("rows");
            for v in values {
                rows.push(&[Cell::Long(*v)]).expect("row");
                rows.origins.push(origin(*v).borrow());
            }
            rows
        };
        let mut rows = encoded(&[0, 1, 2, 3, 4]);
        let mut dead = Vec::new();
        set_aside_rows(&mut rows, vec![(1, "one".into()), (4, "four".into())], &mut dead).expect("set aside");
        let expected = encoded(&[0, 2, 3]);
        let (Encoded::Copy(got), Encoded::Copy(want)) = (rows.data(), expected.data()) else {
            panic!("COPY rows for Postgres");
        };
        assert_eq!(got.stream(0, got.len()), want.stream(0, want.len()));
        let kept: Vec<Option<i64>> = rows.origins.offsets().collect();
        assert_eq!(kept, vec![Some(0), Some(2), Some(3)]);
        let set: Vec<(Option<i64>, bool)> = dead
            .iter()
            .map(|d| (d.origin.offset, d.error.ends_with("one") || d.error.ends_with("four")))
            .collect();
        assert_eq!(set, vec![(Some(1), true), (Some(4), true)]);
    }
}
