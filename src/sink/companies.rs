//! Company `created`/`updated` events (JSON) into `raw.company_events`.
//!
//! Events are stored as received: the raw message is kept beside what was
//! parsed, and the producers' inconsistencies (a `name` that disagrees with
//! `changes`, one company under several organizations, duplicates, events
//! out of order) are left for the SQL to see. Only what cannot be a row is
//! refused, with the reason, for the dead-letter table.

use serde_json::Value as Json;

use crate::warehouse::{Cell, ColumnDef, SqlType, TableDef, TableRef};

pub const SCHEMA: &str = "raw";
pub const TABLE: &str = "company_events";

/// Columns parsed from the event, in the order [`parse`] fills them.
const EVENT_COLUMNS: [(&str, SqlType); 9] = [
    ("event_type", SqlType::Text),
    ("idempotency_key", SqlType::Text),
    ("id", SqlType::Text),
    ("organization_id", SqlType::Text),
    ("name", SqlType::Text),
    ("created_at", SqlType::TimestampTz),
    ("updated_at", SqlType::TimestampTz),
    ("changes", SqlType::Json),
    ("raw", SqlType::Json),
];

pub fn table() -> TableRef {
    TableRef::new(SCHEMA, TABLE)
}

pub fn table_def() -> TableDef {
    let mut columns: Vec<ColumnDef> = EVENT_COLUMNS
        .iter()
        .map(|(n, t)| ColumnDef::new(n, t.clone()))
        .collect();
    columns.extend(super::tables::kafka_columns());
    TableDef {
        table: table(),
        columns,
    }
}

/// The event's cells (without the Kafka columns), or why it is refused.
pub fn parse(payload: &[u8]) -> Result<Vec<Cell>, String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("message is not UTF-8: {e}"))?;
    let json: Json = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Json::Object(o) = &json else {
        return Err("the message is not a JSON object".into());
    };
    let string = |k: &str| -> Result<String, String> {
        match o.get(k) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("field {k} is not a string: {other}")),
            None => Err(format!("missing field {k}")),
        }
    };
    let seconds = |k: &str| -> Result<Cell, String> {
        match o.get(k) {
            Some(Json::Number(n)) => n
                .as_i64()
                .and_then(|s| s.checked_mul(1_000_000))
                .map(Cell::TimestampTz)
                .ok_or_else(|| format!("field {k} is not whole seconds since the epoch: {n}")),
            Some(other) => Err(format!("field {k} is not a number of seconds: {other}")),
            None => Err(format!("missing field {k}")),
        }
    };
    let event = string("event")?;
    if event != "created" && event != "updated" {
        return Err(format!("field event is {event:?}, not \"created\" or \"updated\""));
    }
    let changes_text = string("changes")?;
    let changes: Json =
        serde_json::from_str(&changes_text).map_err(|e| format!("field changes does not hold JSON: {e}"))?;
    if !changes.is_object() {
        return Err(format!("field changes holds {changes}, not a JSON object"));
    }
    Ok(vec![
        Cell::Text(event),
        Cell::Text(string("idempotency_key")?),
        Cell::Text(string("id")?),
        Cell::Text(string("organization_id")?),
        Cell::Text(string("name")?),
        seconds("created_at")?,
        seconds("updated_at")?,
        Cell::Text(changes.to_string()),
        Cell::Text(text.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"idempotency_key": "5f1c2a9e-created-20001", "event": "created", "id": "3b0c7f52-9d7e-4a51-8f0e-2c1d6a4b9e01", "created_at": 1700000000, "updated_at": 1700000000, "organization_id": "a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a", "name": "Acme Tools", "changes": "{\"name\":{\"from\":null,\"to\":\"Acme Tools\"}}"}"#;

    #[test]
    fn parses_the_spec_example() {
        let cells = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(cells.len(), EVENT_COLUMNS.len());
        assert_eq!(cells[0], Cell::Text("created".into()));
        assert_eq!(cells[5], Cell::TimestampTz(1_700_000_000_000_000));
        assert_eq!(
            cells[7],
            Cell::Text(r#"{"name":{"from":null,"to":"Acme Tools"}}"#.into())
        );
        assert_eq!(cells[8], Cell::Text(GOOD.into()));
    }

    #[test]
    fn refuses_what_cannot_be_a_row_with_the_reason() {
        let cases = [
            ("{not json", "malformed JSON"),
            ("[1,2]", "not a JSON object"),
            (&GOOD.replace("\"name\": \"Acme Tools\", ", ""), "missing field name"),
            (
                &GOOD.replace("\"changes\": \"{", "\"changes\": \"not json{"),
                "changes does not hold JSON",
            ),
            (&GOOD.replace("1700000000,", "\"soon\","), "created_at is not a number"),
            (
                &GOOD.replace("\"created\"", "\"deleted\""),
                "not \"created\" or \"updated\"",
            ),
        ];
        for (input, reason) in cases {
            let err = parse(input.as_bytes()).expect_err(input);
            assert!(err.contains(reason), "{err} should name {reason}");
        }
    }
}
