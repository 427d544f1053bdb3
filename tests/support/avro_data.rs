//! What Confluent's AvroData (behind the AvroConverter, under its default
//! settings: `connect.meta.data` on, no enhanced schema support, no name
//! scrubbing) makes of a Kafka Connect schema as JsonConverter writes it.
//! The oracle side of the Debezium-format tests: Debezium's records are read
//! as JSON with their Connect schemas, and this gives the Avro schema the
//! AvroConverter would have registered for them.
//!
//! Both sides are compared in one normal form ([`expand`]): every named
//! type written out in full at each use, under its full name.

use serde_json::{json, Map, Value};

const NAMESPACE: &str = "io.confluent.connect.avro";
const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
/// AvroData's precision when a Decimal schema has none.
const DEFAULT_PRECISION: u64 = 64;

/// The Avro schema (in [`expand`]ed form) of a Connect schema.
pub fn from_connect(schema: &Value) -> Value {
    let mut unnamed = 0;
    convert(schema, &mut unnamed, false)
}

fn convert(s: &Value, unnamed: &mut usize, ignore_optional: bool) -> Value {
    let optional = s["optional"].as_bool().unwrap_or(false);
    let ty = s["type"].as_str().unwrap_or_default();
    if ty == "struct" && optional && !ignore_optional {
        return optional_union(s, convert(s, unnamed, true));
    }
    let mut props = Map::new();
    let base = match ty {
        "int8" | "int16" => {
            props.insert("connect.type".into(), json!(ty));
            json!("int")
        }
        "int32" => json!("int"),
        "int64" => json!("long"),
        "float32" => json!("float"),
        "float64" => json!("double"),
        "boolean" => json!("boolean"),
        "string" => json!("string"),
        "bytes" => {
            if s["name"] == DECIMAL {
                let params = &s["parameters"];
                let scale: u64 = params["scale"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                let precision: u64 = params["connect.decimal.precision"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_PRECISION);
                props.insert("scale".into(), json!(scale));
                props.insert("precision".into(), json!(precision));
                props.insert("logicalType".into(), json!("decimal"));
            }
            json!("bytes")
        }
        "array" => json!({"type": "array", "items": convert(&s["items"], unnamed, false)}),
        "map" => json!({"type": "map", "values": convert(&s["values"], unnamed, false)}),
        "struct" => {
            let full = match s["name"].as_str() {
                Some(n) => n.to_owned(),
                None => {
                    *unnamed += 1;
                    let suffix = if *unnamed > 1 {
                        unnamed.to_string()
                    } else {
                        String::new()
                    };
                    format!("{NAMESPACE}.ConnectDefault{suffix}")
                }
            };
            let fields: Vec<Value> = s["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let mut field = Map::new();
                    field.insert("name".into(), f["field"].clone());
                    field.insert("type".into(), convert(f, unnamed, false));
                    if let Some(d) = f.get("default") {
                        field.insert("default".into(), d.clone());
                    } else if f["optional"].as_bool().unwrap_or(false) {
                        field.insert("default".into(), Value::Null);
                    }
                    Value::Object(field)
                })
                .collect();
            json!({"type": "record", "name": full, "fields": fields})
        }
        other => panic!("no Connect type {other:?} in {s}"),
    };
    let with_meta = |props: &mut Map<String, Value>| {
        if let Some(doc) = s.get("doc") {
            props.insert("connect.doc".into(), doc.clone());
        }
        if let Some(v) = s.get("version") {
            props.insert("connect.version".into(), v.clone());
        }
        if let Some(p) = s.get("parameters").and_then(Value::as_object).filter(|p| !p.is_empty()) {
            props.insert("connect.parameters".into(), Value::Object(p.clone()));
        }
        if let Some(d) = s.get("default").filter(|d| !d.is_null()) {
            props.insert("connect.default".into(), d.clone());
        }
        if let Some(n) = s.get("name") {
            props.insert("connect.name".into(), n.clone());
        }
    };
    with_meta(&mut props);
    let base = with_props(base, props);
    if optional && !ignore_optional {
        optional_union(s, base)
    } else {
        base
    }
}

/// `["null", base]`, or `[base, "null"]` when the field has a default.
fn optional_union(s: &Value, base: Value) -> Value {
    if s.get("default").is_some_and(|d| !d.is_null()) {
        json!([base, "null"])
    } else {
        json!(["null", base])
    }
}

/// A primitive with properties becomes an object; others take them in.
fn with_props(base: Value, props: Map<String, Value>) -> Value {
    if props.is_empty() {
        return base;
    }
    let mut object = match base {
        Value::String(t) => {
            let mut m = Map::new();
            m.insert("type".into(), Value::String(t));
            m
        }
        Value::Object(m) => m,
        other => return other,
    };
    object.extend(props);
    Value::Object(object)
}

/// An Avro schema (as JSON) in the normal form both sides are compared
/// in: each named type (record, enum, fixed) written out in full at each
/// use, under its full name (no `namespace` key); a primitive without
/// properties as its bare name.
pub fn expand(schema: &Value) -> Value {
    let mut named = std::collections::HashMap::new();
    expand_in(schema, "", &mut named)
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn expand_in(s: &Value, namespace: &str, named: &mut std::collections::HashMap<String, Value>) -> Value {
    match s {
        Value::String(t) => match t.as_str() {
            "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string" => s.clone(),
            name => named
                .get(&full_name(name, namespace))
                .or_else(|| named.get(name))
                .cloned()
                .unwrap_or_else(|| panic!("unknown type {name:?}")),
        },
        Value::Array(branches) => Value::Array(branches.iter().map(|b| expand_in(b, namespace, named)).collect()),
        Value::Object(o) => {
            let ty = o.get("type").cloned().unwrap_or(Value::Null);
            let mut out = o.clone();
            match ty.as_str() {
                Some("record" | "error" | "enum" | "fixed") => {
                    let ns = o.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
                    let full = full_name(o.get("name").and_then(Value::as_str).unwrap_or_default(), ns);
                    let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_owned();
                    out.remove("namespace");
                    out.insert("name".into(), json!(full));
                    if let Some(fields) = o.get("fields").and_then(Value::as_array) {
                        let fields: Vec<Value> = fields
                            .iter()
                            .map(|f| {
                                let mut f = f.as_object().cloned().unwrap_or_default();
                                let t = f.get("type").cloned().unwrap_or(Value::Null);
                                f.insert("type".into(), expand_in(&t, &inner_ns, named));
                                Value::Object(f)
                            })
                            .collect();
                        out.insert("fields".into(), Value::Array(fields));
                    }
                    let out = Value::Object(out);
                    named.insert(full, out.clone());
                    out
                }
                Some("array") => {
                    out.insert("items".into(), expand_in(&o["items"], namespace, named));
                    Value::Object(out)
                }
                Some("map") => {
                    out.insert("values".into(), expand_in(&o["values"], namespace, named));
                    Value::Object(out)
                }
                Some(_) if o.len() == 1 => ty,
                _ => Value::Object(out),
            }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debeziums_decimals_and_semantic_types_as_avro_data_writes_them() {
        // Field schemas as Debezium 3.6.1 wrote them (JsonConverter).
        let money = json!({"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,
            "parameters":{"scale":"2"},"field":"m"});
        assert_eq!(
            from_connect(&money),
            json!(["null", {"type":"bytes","scale":2,"precision":64,"logicalType":"decimal","connect.version":1,
                "connect.parameters":{"scale":"2"},"connect.name":"org.apache.kafka.connect.data.Decimal"}])
        );
        let small = json!({"type":"int16","optional":true,"field":"i2"});
        assert_eq!(
            from_connect(&small),
            json!(["null", {"type":"int","connect.type":"int16"}])
        );
        let ts = json!({"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"tstz"});
        assert_eq!(
            from_connect(&ts),
            json!(["null", {"type":"string","connect.version":1,"connect.name":"io.debezium.time.ZonedTimestamp"}])
        );
        let key = json!({"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],"optional":false,
            "name":"dbz.public.edge.Key"});
        assert_eq!(
            from_connect(&key),
            json!({"type":"record","name":"dbz.public.edge.Key","fields":[{"name":"id","type":"int"}],
                "connect.name":"dbz.public.edge.Key"})
        );
    }

    #[test]
    fn references_expand_to_full_definitions() {
        let avro = json!({"type":"record","name":"Envelope","namespace":"dbz.public.t","fields":[
            {"name":"before","type":["null",{"type":"record","name":"Value","fields":[{"name":"id","type":"int"}]}],"default":null},
            {"name":"after","type":["null","Value"],"default":null}]});
        let e = expand(&avro);
        assert_eq!(e["name"], "dbz.public.t.Envelope");
        assert_eq!(e["fields"][0]["type"][1], e["fields"][1]["type"][1]);
        assert_eq!(e["fields"][1]["type"][1]["name"], "dbz.public.t.Value");
    }
}
