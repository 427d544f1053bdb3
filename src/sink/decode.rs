//! CDC decoding into outcomes: a consumed change record is looked up by its
//! writer schema id (once per id, through the registry), decoded by
//! [`EnvelopePlan`] and turned into the cells of its raw-table row, or into
//! the reason it is a dead letter. No warehouse here: creating and widening
//! the raw tables is the loop's, on a target's first sight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::envelope::{Change, EnvelopePlan};
use super::error::SinkError;
use super::tables::{CDC_COLUMNS, KAFKA_COLUMNS};
use crate::registry::{split_wire, Registry, RegistryError};
use crate::topics::TopicEnd;
use crate::warehouse::{Cell, ColumnDef, Mark, SourcePosition, TableRef};

/// Extra lookups of a schema id the registry does not know, before the
/// record is a dead letter (0.25 s, 0.5 s, 0.75 s apart).
const UNKNOWN_ID_RETRIES: u32 = 3;

/// How long a registry outage is waited out before the sink stops.
const OUTAGE_WAIT: Duration = Duration::from_secs(600);

/// The pending-batch key of the company events (CDC keys are schema ids).
pub(super) const COMPANIES: u64 = u64::MAX;

/// What one writer schema id turned out to be.
#[derive(Clone)]
enum Plan {
    Envelope(Arc<EnvelopePlan>),
    /// walhouse's transaction-boundary records: not rows.
    TransactionMetadata,
    Refused(String),
}

/// Where rows of one writer schema (or of the company events) go: worked
/// out once, so the per-message path allocates no names.
pub(super) struct Target {
    pub key: u64,
    /// The source table (schema, name); empty for company events.
    pub source: (String, String),
    pub table: TableRef,
    /// The cells' columns, Kafka coordinates included.
    pub columns: Vec<ColumnDef>,
    /// How the topics of its records end.
    pub topic: TopicEnd,
    /// Source columns stored under another name (see
    /// [`super::tables::warehouse_column_names`]), source → warehouse.
    pub renamed: HashMap<String, String>,
}

impl Target {
    /// The warehouse name of a source column.
    pub fn column<'a>(&'a self, source: &'a str) -> &'a str {
        self.renamed.get(source).map_or(source, String::as_str)
    }
}

impl Target {
    /// `columns`: the table's, as its cells come, Kafka coordinates included.
    pub fn new(key: u64, source: (String, String), table: TableRef, columns: Vec<ColumnDef>) -> Self {
        Target {
            key,
            source,
            table,
            columns,
            topic: TopicEnd::any(),
            renamed: HashMap::new(),
        }
    }
}

/// One consumed record's fate.
pub(super) enum Outcome {
    /// A row, its cells (all but the Kafka coordinates) in the loop's
    /// row buffer.
    Row {
        target: Arc<Target>,
        /// The change's source position and system (walhouse's format
        /// carries them).
        position: Option<Mark>,
    },
    Dead(String),
    Skip,
    /// A change whose source position (this one) was stored already.
    Duplicate(SourcePosition),
    /// The topic cannot go on (incompatible schema change).
    Stop(String),
}

/// A change record with the plan for its writer schema, or its fate
/// without one.
pub(super) enum Planned<'p> {
    Envelope {
        schema_id: u32,
        plan: Arc<EnvelopePlan>,
        /// The Avro body, after the wire format's header.
        body: &'p [u8],
    },
    Outcome(Outcome),
}

/// Writer schemas by id, and the key columns named by key schemas.
pub(super) struct Decoder {
    registry: Registry,
    plans: HashMap<u32, Plan>,
    key_columns: HashMap<u32, Vec<String>>,
}

impl Decoder {
    pub fn new(registry: Registry) -> Self {
        Decoder {
            registry,
            plans: HashMap::new(),
            key_columns: HashMap::new(),
        }
    }

    /// The plan for a change record's value (Confluent wire format).
    pub async fn plan_of<'p>(&mut self, payload: &'p [u8]) -> Result<Planned<'p>, SinkError> {
        let dead = |reason: String| Ok(Planned::Outcome(Outcome::Dead(reason)));
        let Some((schema_id, body)) = split_wire(payload) else {
            return dead("not in the Confluent wire format (magic byte 0 and a schema id expected)".into());
        };
        match self.plan(schema_id).await? {
            Plan::Envelope(plan) => Ok(Planned::Envelope { schema_id, plan, body }),
            Plan::TransactionMetadata => Ok(Planned::Outcome(Outcome::Skip)),
            Plan::Refused(reason) => dead(reason),
        }
    }

    async fn plan(&mut self, id: u32) -> Result<Plan, SinkError> {
        if let Some(p) = self.plans.get(&id) {
            return Ok(p.clone());
        }
        // An id the registry does not know yet may be on its way (a
        // registry replica behind its primary): ask a few times first.
        let mut answer = self.schema_waiting(id).await;
        for attempt in 1..=UNKNOWN_ID_RETRIES {
            if !matches!(answer, Err(RegistryError::UnknownId { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            answer = self.schema_waiting(id).await;
        }
        let plan = match answer {
            Ok(text) => match EnvelopePlan::compile(&text) {
                Ok(p) => Plan::Envelope(Arc::new(p)),
                // walhouse's and Debezium's transaction-boundary records.
                Err(_) if is_transaction_metadata(&text) => Plan::TransactionMetadata,
                Err(e) => Plan::Refused(format!("schema id {id}: {e}")),
            },
            Err(RegistryError::UnknownId { id }) => {
                // Not cached: the schema may be registered later.
                return Ok(Plan::Refused(format!(
                    "schema id {id} is unknown to the schema registry after {} attempts (is the sink pointed at the registry the producer used?)",
                    UNKNOWN_ID_RETRIES + 1
                )));
            }
            // Not cached either: the registry may be mended.
            Err(e) if e.is_about_one_schema() => return Ok(Plan::Refused(format!("schema id {id}: {e}"))),
            Err(e) => return Err(e.into()),
        };
        self.plans.insert(id, plan.clone());
        Ok(plan)
    }

    /// The schema with `id`, waiting out a registry outage (with backoff,
    /// up to [`OUTAGE_WAIT`]) instead of stopping the sink.
    async fn schema_waiting(&self, id: u32) -> Result<Arc<String>, RegistryError> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match self.registry.schema(id).await {
                Err(e) if e.is_transient() && started.elapsed() < OUTAGE_WAIT => {
                    tracing::warn!(schema_id = id, ?wait, "schema registry unavailable, waiting: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                other => return other,
            }
        }
    }

    /// The key columns named by a message key's schema.
    pub async fn key_columns_of(&mut self, key: Option<&[u8]>) -> Result<Option<Vec<String>>, SinkError> {
        let Some((id, _)) = key.and_then(split_wire) else {
            return Ok(None);
        };
        if let Some(k) = self.key_columns.get(&id) {
            return Ok(Some(k.clone()));
        }
        let text = match self.schema_waiting(id).await {
            Ok(t) => t,
            // No view for now; the record itself goes by its value's schema.
            Err(e) if e.is_about_one_schema() => {
                tracing::warn!(
                    schema_id = id,
                    "the key's schema cannot be read, so no latest-state view yet: {e}"
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let columns: Vec<String> = json["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["walhouse.column"].as_str().or(f["name"].as_str()).map(str::to_owned))
            .collect();
        self.key_columns.insert(id, columns.clone());
        Ok(Some(columns))
    }
}

/// The full names of the transaction-boundary records' schemas (walhouse's
/// format, Debezium's): their records are skipped, not stored.
const TRANSACTION_METADATA: [&str; 2] = [
    "walhouse.TransactionMetadataValue",
    "io.debezium.connector.common.TransactionMetadataValue",
];

/// Whether a writer schema is a transaction-boundary record's, by its full
/// name (Avro's: a dotted name, or the namespace and the name), so no
/// other schema is skipped for mentioning one.
fn is_transaction_metadata(text: &str) -> bool {
    let Ok(schema) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let (Some(name), namespace) = (schema["name"].as_str(), schema["namespace"].as_str()) else {
        return false;
    };
    let full = match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    };
    schema["type"] == "record" && TRANSACTION_METADATA.contains(&full.as_str())
}

/// Completes a change's raw-table row in `cells`, which holds its
/// columns as decoded (none for a truncate: they become NULL): the change
/// metadata in `CDC_COLUMNS` order after them, then room for the Kafka
/// coordinates. Cells are overwritten in place, their strings reused.
pub(super) fn finish_row(plan: &EnvelopePlan, target: &Target, change: Change<'_>, cells: &mut Vec<Cell>) {
    let n = plan.columns.len();
    cells.resize(n + CDC_COLUMNS.len() + KAFKA_COLUMNS.len(), Cell::Null);
    if !change.has_row {
        cells[..n].fill(Cell::Null);
    }
    // A value Avro could not hold came as null plus its text: the typed
    // column gets what the warehouse can hold of it.
    for (name, text) in &change.text_values {
        if let Some(i) = plan.columns.iter().position(|c| c.name == *name) {
            if let (Some(Cell::Null), Some(cell)) = (cells.get(i), plan.columns[i].cell_from_text(text)) {
                cells[i] = cell;
            }
        }
    }
    let json_list =
        |items: &[String]| (!items.is_empty()).then(|| Cell::Text(serde_json::Value::from(items.to_vec()).to_string()));
    let meta = &mut cells[n..n + CDC_COLUMNS.len()];
    meta[0].set_text(change.op);
    meta[1] = change.lsn.map_or(Cell::Null, Cell::Long);
    meta[2] = change.tx_id.map_or(Cell::Null, Cell::Long);
    meta[3] = change
        .commit_ts_ms
        .map_or(Cell::Null, |ms| Cell::TimestampTz(ms.saturating_mul(1000)));
    meta[4].set_text(change.snapshot);
    meta[5] = change.commit_lsn.map_or(Cell::Null, Cell::Long);
    meta[6] = change.tx_ordinal.map_or(Cell::Null, Cell::Long);
    let unchanged: Vec<String> = change
        .unchanged_toast
        .iter()
        .map(|c| target.column(c).to_owned())
        .collect();
    meta[7] = json_list(&unchanged).unwrap_or(Cell::Null);
    meta[8] = if change.text_values.is_empty() {
        Cell::Null
    } else {
        let m: serde_json::Map<String, serde_json::Value> = change
            .text_values
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        Cell::Text(serde_json::Value::Object(m).to_string())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_records_are_known_by_their_full_name_only() {
        // As each format registers them: walhouse's published schema (kept
        // equal to capture's by a test of its own), and the name and
        // namespace Debezium's connector gives its own.
        let walhouse = include_str!("../../schemas/walhouse.TransactionMetadataValue.avsc");
        assert!(is_transaction_metadata(walhouse), "{walhouse}");
        let debezium = r#"{"type":"record","name":"TransactionMetadataValue","namespace":"io.debezium.connector.common","fields":[{"name":"status","type":"string"}]}"#;
        assert!(is_transaction_metadata(debezium), "{debezium}");
        let dotted = r#"{"type":"record","name":"walhouse.TransactionMetadataValue","fields":[]}"#;
        assert!(is_transaction_metadata(dotted));
        // A schema that only mentions the name (which the old substring
        // test took for transaction metadata and skipped every record of).
        let mentions = r#"{"type":"record","name":"Orders","namespace":"shop","doc":"see "TransactionMetadataValue"","fields":[{"name":"TransactionMetadataValue","type":"string"}]}"#;
        assert!(mentions.contains("TransactionMetadataValue\""));
        assert!(!is_transaction_metadata(mentions));
        let elsewhere = r#"{"type":"record","name":"TransactionMetadataValue","namespace":"shop","fields":[]}"#;
        assert!(!is_transaction_metadata(elsewhere));
        assert!(!is_transaction_metadata("not json"));
    }
}
