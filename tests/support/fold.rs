//! A walhouse-format topic read back and folded by key, as a warehouse's
//! latest-state view would: for tests whose tables are `(id int, v text)`.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use walhouse::registry::{split_wire, Registry, RegistryConfig};

use crate::kafka::Record;

/// A Confluent-framed Avro message, decoded with its registered schema.
pub async fn decode(registry: &Registry, bytes: &[u8]) -> Value {
    let (id, mut body) = split_wire(bytes).expect("Confluent wire format");
    let text = registry.schema(id).await.expect("schema by id");
    let schema = apache_avro::Schema::parse_str(&text).expect("registered schema parses");
    apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader")
        .read_value(&mut body)
        .expect("body decodes")
}

/// What a topic of `(id int, v text)` rows says.
#[derive(Debug, Default)]
pub struct Folded {
    /// Records with `op = r`, by `source.snapshot` (`true`, `last`,
    /// `incremental`).
    pub reads: BTreeMap<String, usize>,
    /// The latest `v` of every id not deleted since.
    pub latest: BTreeMap<i32, String>,
}

impl Folded {
    pub fn reads_of(&self, kind: &str) -> usize {
        self.reads.get(kind).copied().unwrap_or(0)
    }

    pub fn all_reads(&self) -> usize {
        self.reads.values().sum()
    }

    /// Initial-snapshot reads (`source.snapshot` `true` or `last`).
    pub fn initial_reads(&self) -> usize {
        self.reads_of("true") + self.reads_of("last")
    }
}

fn field(v: &Value, name: &str) -> Value {
    let found = match v {
        Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
        _ => None,
    };
    match found {
        Some(Value::Union(_, inner)) => *inner,
        Some(other) => other,
        None => Value::Null,
    }
}

/// Folds `records` in offset order (one partition), schemas from the
/// registry at `registry_url`; tombstones are skipped.
pub async fn fold(registry_url: &str, records: &[Record]) -> Folded {
    let registry = Registry::new(&RegistryConfig {
        url: registry_url.to_owned(),
        ..Default::default()
    })
    .expect("registry");
    let mut folded = Folded::default();
    for r in records {
        let Some(bytes) = r.value.as_deref() else { continue };
        let value = decode(&registry, bytes).await;
        let op = field(&value, "op");

        let id = |row: &Value| match field(row, "id") {
            Value::Int(id) => id,
            other => panic!("id in {row:?}: {other:?}"),
        };
        if op == Value::String("d".into()) {
            folded.latest.remove(&id(&field(&value, "before")));
            continue;
        }
        if op == Value::String("r".into()) {
            let kind = match field(&field(&value, "source"), "snapshot") {
                Value::String(s) | Value::Enum(_, s) => s,
                other => format!("{other:?}"),
            };
            *folded.reads.entry(kind).or_default() += 1;
        }
        let after = field(&value, "after");
        let Value::String(v) = field(&after, "v") else {
            panic!("v in {after:?}")
        };
        folded.latest.insert(id(&after), v);
    }
    folded
}
