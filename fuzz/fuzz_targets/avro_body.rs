//! The sink's Avro decoder on arbitrary bodies under a writer schema with
//! every type walhouse writes (what a faulty or hostile producer can send
//! under a valid schema id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use walhouse::sink::envelope::EnvelopePlan;

const SCHEMA: &str = r#"{"type":"record","name":"Envelope","namespace":"w.public.t","fields":[
  {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
    {"name":"id","type":["null","long"],"default":null},
    {"name":"i","type":["null","int"],"default":null},
    {"name":"b","type":["null","boolean"],"default":null},
    {"name":"f","type":["null","float"],"default":null},
    {"name":"g","type":["null","double"],"default":null},
    {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":19,"scale":4}],"default":null},
    {"name":"big","type":["null",{"type":"bytes","logicalType":"decimal","precision":1000,"scale":20}],"default":null},
    {"name":"fx","type":["null",{"type":"fixed","name":"F","size":16,"logicalType":"decimal","precision":38,"scale":2}],"default":null},
    {"name":"d","type":["null",{"type":"int","logicalType":"date"}],"default":null},
    {"name":"t","type":["null",{"type":"long","logicalType":"time-micros"}],"default":null},
    {"name":"ts","type":["null",{"type":"long","logicalType":"local-timestamp-micros"}],"default":null},
    {"name":"tz","type":["null",{"type":"long","logicalType":"timestamp-micros"}],"default":null},
    {"name":"u","type":["null",{"type":"string","logicalType":"uuid"}],"default":null},
    {"name":"meta","type":["null",{"type":"string","walhouse.type":"json"}],"default":null},
    {"name":"e","type":["null",{"type":"enum","name":"E","symbols":["a","b"]}],"default":null},
    {"name":"raw","type":["null","bytes"],"default":null},
    {"name":"tags","type":["null",{"type":"array","items":["null","string"]}],"default":null},
    {"name":"grid","type":["null",{"type":"array","items":["null",{"type":"array","items":["null","int"]}]}],"default":null},
    {"name":"attrs","type":["null",{"type":"map","values":"string"}],"default":null}
  ]}],"default":null},
  {"name":"after","type":["null","Value"],"default":null},
  {"name":"source","type":{"type":"record","name":"Source","namespace":"walhouse","fields":[
    {"name":"schema","type":"string"},{"name":"table","type":"string"},
    {"name":"snapshot","type":"string"},{"name":"txId","type":["null","long"]},
    {"name":"lsn","type":["null","long"]},{"name":"ts_ms","type":"long"}]}},
  {"name":"op","type":"string"},
  {"name":"ts_ms","type":["null","long"],"default":null},
  {"name":"unchanged_toast","type":{"type":"array","items":"string"},"default":[]},
  {"name":"text_values","type":{"type":"map","values":"string"},"default":{}}
]}"#;

fn plan() -> &'static EnvelopePlan {
    static PLAN: OnceLock<EnvelopePlan> = OnceLock::new();
    PLAN.get_or_init(|| EnvelopePlan::compile(SCHEMA).expect("the fixed schema compiles"))
}

fuzz_target!(|body: &[u8]| {
    if let Ok(change) = plan().decode(body) {
        for (name, text) in &change.text_values {
            if let Some(c) = plan().columns.iter().find(|c| c.name == *name) {
                let _ = c.cell_from_text(text);
            }
        }
    }
});
