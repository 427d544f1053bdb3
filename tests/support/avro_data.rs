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
        // JsonConverter writes Connect's FLOAT32 and FLOAT64 so.
        "float" | "float32" => json!("float"),
        "double" | "float64" => json!("double"),
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
                        field.insert("default".into(), avro_default(f, d));
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
            props.insert("connect.default".into(), avro_default(s, d));
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

/// A default as AvroData writes it: JsonConverter's base64 bytes become
/// one character per byte (ISO-8859-1); other JSON stays.
fn avro_default(s: &Value, d: &Value) -> Value {
    match (s["type"].as_str(), d) {
        (Some("bytes"), Value::String(b64)) => {
            json!(base64_decode(b64).iter().map(|&b| char::from(b)).collect::<String>())
        }
        _ => d.clone(),
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

/// A Connect value (a JsonConverter payload under `schema`) in the normal
/// form values are compared in ([`normal_avro`] gives it for Avro):
/// decimals as their exact text, bytes as lower-case hex, NaN and the
/// infinities as strings, structs as objects by field name.
pub fn normal_connect(schema: &Value, v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    match schema["type"].as_str().unwrap_or_default() {
        "bytes" => {
            let raw = base64_decode(v.as_str().unwrap_or_default());
            if schema["name"] == DECIMAL {
                let scale = schema["parameters"]["scale"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                json!(decimal_text(&raw, scale))
            } else {
                json!(hex(&raw))
            }
        }
        "float" | "double" | "float32" | "float64" => match v {
            Value::String(s) => json!(s),
            Value::Number(n) => json!(float_text(n.as_f64().unwrap_or_default())),
            other => other.clone(),
        },
        "array" => Value::Array(
            v.as_array()
                .into_iter()
                .flatten()
                .map(|x| normal_connect(&schema["items"], x))
                .collect(),
        ),
        "map" => Value::Object(
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, x)| (k.clone(), normal_connect(&schema["values"], x)))
                .collect(),
        ),
        "struct" => Value::Object(
            schema["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let name = f["field"].as_str().unwrap_or_default().to_owned();
                    let x = normal_connect(f, &v[&name]);
                    (name, x)
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// An Avro value decoded by apache-avro under `schema` (an [`expand`]ed
/// schema), in the normal form of [`normal_connect`].
pub fn normal_avro(schema: &Value, v: &apache_avro::types::Value) -> Value {
    use apache_avro::types::Value as A;
    match (schema, v) {
        (_, A::Null) => Value::Null,
        (Value::Array(branches), A::Union(i, inner)) => {
            let branch = branches.get(*i as usize).unwrap_or(&Value::Null);
            normal_avro(branch, inner)
        }
        (_, A::Union(_, inner)) => normal_avro(schema, inner),
        (_, A::Boolean(b)) => json!(b),
        (_, A::Int(i) | A::Date(i) | A::TimeMillis(i)) => json!(i),
        (
            _,
            A::Long(l)
            | A::TimeMicros(l)
            | A::TimestampMillis(l)
            | A::TimestampMicros(l)
            | A::LocalTimestampMillis(l)
            | A::LocalTimestampMicros(l),
        ) => json!(l),
        (_, A::Float(f)) => json!(float_text(f64::from(*f))),
        (_, A::Double(f)) => json!(float_text(*f)),
        (_, A::String(s) | A::Enum(_, s)) => json!(s),
        (_, A::Uuid(u)) => json!(u.to_string()),
        (_, A::Bytes(b) | A::Fixed(_, b)) => json!(hex(b)),
        (_, A::Decimal(d)) => {
            let raw: Vec<u8> = d.clone().try_into().unwrap_or_default();
            json!(decimal_text(&raw, schema["scale"].as_u64().unwrap_or(0) as usize))
        }
        (_, A::Array(items)) => Value::Array(items.iter().map(|x| normal_avro(&schema["items"], x)).collect()),
        (_, A::Map(m)) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), normal_avro(&schema["values"], x)))
                .collect(),
        ),
        (_, A::Record(fields)) => Value::Object(
            fields
                .iter()
                .map(|(name, x)| {
                    let f = schema["fields"]
                        .as_array()
                        .and_then(|fs| fs.iter().find(|f| f["name"] == name.as_str()))
                        .map_or(Value::Null, |f| f["type"].clone());
                    (name.clone(), normal_avro(&f, x))
                })
                .collect(),
        ),
        (_, other) => json!(format!("{other:?}")),
    }
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A two's-complement big-endian unscaled integer with `scale` decimals.
fn decimal_text(raw: &[u8], scale: usize) -> String {
    let negative = raw.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = raw.to_vec();
    if negative {
        mag.iter_mut().for_each(|b| *b = !*b);
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let mut digits = Vec::new();
    while mag.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let text = String::from_utf8(digits).unwrap_or_default();
    let (int, frac) = text.split_at(text.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
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
    fn debeziums_json_values_in_the_normal_form() {
        // Values as Debezium 3.6.1 wrote them for 9999999999999999999999999999.9999999999
        // (numeric(38,10)), 123.45 (numeric(5,2)), money 12.34, bytea \x00ff.
        let dec = |scale: &str| json!({"type":"bytes","name":DECIMAL,"parameters":{"scale":scale}});
        assert_eq!(
            normal_connect(&dec("10"), &json!("SztMqFqGxHoJiiI//////w==")),
            json!("9999999999999999999999999999.9999999999")
        );
        assert_eq!(normal_connect(&dec("2"), &json!("MDk=")), json!("123.45"));
        assert_eq!(normal_connect(&dec("2"), &json!("BNI=")), json!("12.34"));
        assert_eq!(normal_connect(&json!({"type":"bytes"}), &json!("AP8=")), json!("00ff"));
        assert_eq!(normal_connect(&json!({"type":"float32"}), &json!("NaN")), json!("NaN"));
        let avro_dec = json!({"type":"bytes","logicalType":"decimal","precision":5,"scale":2});
        let v = apache_avro::types::Value::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39]));
        assert_eq!(normal_avro(&avro_dec, &v), json!("123.45"));
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
