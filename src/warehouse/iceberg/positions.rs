//! The Kafka positions an Iceberg commit carries in its snapshot summary,
//! so that data and position commit together (Iceberg commits one table at
//! a time, so every table carries its own), and the offsets of the marker
//! table `walhouse.offsets`, committed after a batch's tables.
//!
//! A table's positions say, per consumer group and partition, the next
//! offset before which the table holds every row that partition sent it.
//! A batch written again after a crash (or by a sink that took the
//! partition over) skips, table by table, the rows the table already
//! holds: a crash between two tables' commits then stores nothing twice
//! and loses nothing. The check is made on the table as loaded for the
//! commit, and the commit is the catalog's compare-and-set on that very
//! metadata, so two writers cannot both add the same offsets.

use std::collections::{BTreeMap, HashMap};

use crate::warehouse::{Mark, StoredOffset};

/// The summary property of `group`'s positions in a data table.
pub fn property(group: &str) -> String {
    format!("walhouse.positions.{group}")
}

/// The summary property of `group`'s offsets in the marker table.
pub fn offsets_property(group: &str) -> String {
    format!("walhouse.offsets.{group}")
}

/// The summary property naming the last file whose rows a table holds
/// (a file load written again after a crash skips a table holding it).
pub const FILE_PROPERTY: &str = "walhouse.file";

/// Every property walhouse keeps in a table's summaries: a commit carries
/// them forward (another group's positions included), since only the
/// current snapshot's summary is read.
pub fn carried(summary: &HashMap<String, String>) -> HashMap<String, String> {
    summary
        .iter()
        .filter(|(k, _)| k.starts_with("walhouse."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One group's positions in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, BTreeMap<i32, i64>>);

impl Positions {
    /// `group`'s positions in a snapshot summary (none before its first
    /// commit). `Err`: the property is not what walhouse writes.
    pub fn from_summary(summary: &HashMap<String, String>, group: &str) -> Result<Self, String> {
        let mut out = Positions::default();
        for (topic, partition, next) in by_partition::<i64>(summary, &property(group))? {
            out.0.entry(topic).or_default().insert(partition, next);
        }
        Ok(out)
    }

    /// The summary property's value.
    pub fn to_json(&self) -> String {
        let by_topic: BTreeMap<&String, BTreeMap<String, i64>> = self
            .0
            .iter()
            .map(|(t, p)| (t, p.iter().map(|(p, n)| (p.to_string(), *n)).collect()))
            .collect();
        // String keys and numbers: serializing cannot fail.
        serde_json::to_string(&by_topic).unwrap_or_default()
    }

    pub fn next(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// The table now holds everything of the partition before `next`
    /// (positions never move back).
    pub fn advance(&mut self, topic: &str, partition: i32, next: i64) {
        let at = self
            .0
            .entry(topic.to_owned())
            .or_default()
            .entry(partition)
            .or_insert(next);
        *at = (*at).max(next);
    }

    /// Whether the table already holds the row at `offset` of the
    /// partition.
    pub fn holds(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.next(topic, partition).is_some_and(|next| offset < next)
    }
}

/// One partition's entry in the marker: the stored offset and high-water
/// mark of [`StoredOffset`], spelled out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OffsetEntry {
    next: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    high_commit_lsn: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    high_tx_ordinal: Option<i64>,
    /// Text: an unsigned 64-bit number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    high_system_id: Option<String>,
}

/// One group's offsets in the marker's summary: per topic and partition.
pub fn offsets_from_summary(
    summary: &HashMap<String, String>,
    group: &str,
) -> Result<HashMap<(String, i32), StoredOffset>, String> {
    by_partition::<OffsetEntry>(summary, &offsets_property(group)).map(|entries| {
        entries
            .into_iter()
            .map(|(topic, partition, e)| {
                let high = Mark::from_columns(e.high_commit_lsn, e.high_tx_ordinal, e.high_system_id);
                ((topic, partition), StoredOffset { next: e.next, high })
            })
            .collect()
    })
}

/// The entries of summary property `key` (`{"<topic>": {"<partition>":
/// <entry>}}`), none if it is missing. `Err`: not what walhouse writes.
fn by_partition<T: serde::de::DeserializeOwned>(
    summary: &HashMap<String, String>,
    key: &str,
) -> Result<Vec<(String, i32, T)>, String> {
    let Some(text) = summary.get(key) else {
        return Ok(Vec::new());
    };
    let by_topic: BTreeMap<String, BTreeMap<String, T>> =
        serde_json::from_str(text).map_err(|e| format!("{key}: {e}"))?;
    let mut out = Vec::new();
    for (topic, partitions) in by_topic {
        for (partition, entry) in partitions {
            let partition: i32 = partition
                .parse()
                .map_err(|_| format!("{key}: partition {partition:?} of {topic}"))?;
            out.push((topic.clone(), partition, entry));
        }
    }
    Ok(out)
}

/// The marker's summary value of `offsets`.
pub fn offsets_to_json(offsets: &HashMap<(String, i32), StoredOffset>) -> String {
    let mut by_topic: BTreeMap<&str, BTreeMap<String, OffsetEntry>> = BTreeMap::new();
    for ((topic, partition), stored) in offsets {
        let (high_commit_lsn, high_tx_ordinal, high_system_id) = Mark::columns(stored.high);
        by_topic.entry(topic).or_default().insert(
            partition.to_string(),
            OffsetEntry {
                next: stored.next,
                high_commit_lsn,
                high_tx_ordinal,
                high_system_id,
            },
        );
    }
    // String keys, numbers and strings: serializing cannot fail.
    serde_json::to_string(&by_topic).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_summary_per_group() {
        let mut p = Positions::default();
        p.advance("walhouse.public.t", 0, 10);
        p.advance("walhouse.public.t", 3, 7);
        p.advance("companies", 0, 1);
        let summary = HashMap::from([(property("g"), p.to_json())]);
        assert_eq!(Positions::from_summary(&summary, "g"), Ok(p.clone()));
        assert_eq!(Positions::from_summary(&summary, "other"), Ok(Positions::default()));
        assert_eq!(p.next("walhouse.public.t", 3), Some(7));
    }

    #[test]
    fn a_row_is_held_below_the_next_offset_and_positions_never_move_back() {
        let mut p = Positions::default();
        assert!(!p.holds("t", 0, 0), "nothing is held before a first commit");
        p.advance("t", 0, 5);
        p.advance("t", 0, 3);
        assert!(p.holds("t", 0, 4) && !p.holds("t", 0, 5) && !p.holds("t", 1, 0));
    }

    #[test]
    fn a_summary_walhouse_did_not_write_is_an_error_not_a_reset() {
        for bad in ["[]", "{\"t\": {\"x\": 1}}", "{\"t\": {\"0\": \"1\"}}"] {
            let summary = HashMap::from([(property("g"), bad.to_owned())]);
            assert!(Positions::from_summary(&summary, "g").is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_round_trip_through_the_marker_with_their_marks() {
        use crate::warehouse::SourcePosition;
        let mark = Mark {
            position: SourcePosition {
                commit_lsn: 0x1_6B37_4D48,
                tx_ordinal: 3,
            },
            system_id: Some(u64::MAX),
        };
        let offsets = HashMap::from([
            (
                ("t".to_owned(), 0),
                StoredOffset {
                    next: 10,
                    high: Some(mark),
                },
            ),
            (("t".to_owned(), 2), StoredOffset { next: 4, high: None }),
            (("companies".to_owned(), 0), StoredOffset { next: 1, high: None }),
        ]);
        let summary = HashMap::from([(offsets_property("g"), offsets_to_json(&offsets))]);
        assert_eq!(offsets_from_summary(&summary, "g"), Ok(offsets));
        assert_eq!(offsets_from_summary(&summary, "h"), Ok(HashMap::new()));
        let bad = HashMap::from([(offsets_property("g"), "{\"t\": {\"0\": 5}}".to_owned())]);
        assert!(offsets_from_summary(&bad, "g").is_err());
    }
}
