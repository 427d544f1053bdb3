//! A small Confluent Schema Registry API server for tests (and the demo):
//! a development tool, not a registry to run in production.
//!
//! It answers what walhouse and its readers use: register
//! (`POST /subjects/{s}/versions`, same schema → same id), lookup
//! (`POST /subjects/{s}`), `GET /schemas/ids/{id}`,
//! `GET /subjects/{s}/versions/latest`, `GET /subjects`, compatibility
//! (`POST /compatibility/subjects/{s}/versions/latest`), `GET/PUT /config`
//! and `PUT /config/{s}`. Like a real registry it returns schemas
//! re-serialised (keys reordered), and it checks BACKWARD compatibility
//! (fields added or removed with defaults; type promotions), answering 409
//! with `{"error_code": 409, …}` otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Global ids: the same (parsed) schema always gets the same id.
    ids: Vec<Value>,
    subjects: HashMap<String, Vec<u32>>,
    global_level: String,
    subject_level: HashMap<String, String>,
    /// An outage: every request is answered 503.
    down: bool,
    /// Schema ids answered with a status and a raw body of the test's.
    broken: HashMap<u32, (u16, String)>,
}

pub struct TestRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            global_level: "BACKWARD".into(),
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        TestRegistry { url, state, task }
    }

    /// Starts (`true`) or ends an outage: meanwhile every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("lock").down = down;
    }

    /// From now on `GET /schemas/ids/{id}` is answered `status` with
    /// `body` as it is: a registry broken for one schema.
    pub fn break_id(&self, id: u32, status: u16, body: &str) {
        self.state
            .lock()
            .expect("lock")
            .broken
            .insert(id, (status, body.to_owned()));
    }

    /// Number of versions registered under `subject`.
    pub fn versions(&self, subject: &str) -> usize {
        self.state
            .lock()
            .expect("lock")
            .subjects
            .get(subject)
            .map_or(0, Vec::len)
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, content_length) = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            break (end + 4, len);
        }
    };
    while buf.len() < head_end + content_length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let down = state.lock().map(|s| s.down).unwrap_or(false);
    let broken = path
        .strip_prefix("/schemas/ids/")
        .and_then(|id| id.parse::<u32>().ok())
        .and_then(|id| state.lock().ok()?.broken.get(&id).cloned());
    let (status, text) = if let Some(answer) = broken {
        answer
    } else if down {
        (
            503,
            json!({"error_code": 50301, "message": "unavailable (a test outage)"}).to_string(),
        )
    } else {
        let (status, answer) = route(&state, method, path, &body);
        (status, answer.to_string())
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

fn err(status: u16, code: i64, message: &str) -> (u16, Value) {
    (status, json!({"error_code": code, "message": message}))
}

fn route(state: &Mutex<State>, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut s = state.lock().expect("lock");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["config"]) => (200, json!({"compatibilityLevel": s.global_level})),
        ("PUT", ["config"]) => {
            s.global_level = body["compatibility"].as_str().unwrap_or("BACKWARD").to_string();
            (200, json!({"compatibility": s.global_level}))
        }
        ("PUT", ["config", subject]) => {
            let level = body["compatibility"].as_str().unwrap_or("BACKWARD").to_string();
            s.subject_level.insert(subject.to_string(), level.clone());
            (200, json!({"compatibility": level}))
        }
        ("GET", ["subjects"]) => (200, json!(s.subjects.keys().collect::<Vec<_>>())),
        ("GET", ["schemas", "ids", id]) => match id.parse::<usize>().ok().and_then(|i| s.ids.get(i.wrapping_sub(1))) {
            Some(schema) => (200, json!({"schema": schema.to_string()})),
            None => err(404, 40403, "Schema not found"),
        },
        ("GET", ["subjects", subject, "versions", "latest"]) => match s.subjects.get(*subject).and_then(|v| v.last()) {
            Some(&id) => {
                let version = s.subjects[*subject].len();
                (
                    200,
                    json!({"subject": subject, "version": version, "id": id, "schema": s.ids[id as usize - 1].to_string()}),
                )
            }
            None => err(404, 40401, "Subject not found"),
        },
        ("POST", ["subjects", subject]) => {
            let Some(schema) = parse_schema(body) else {
                return err(422, 42201, "Invalid schema");
            };
            let Some(versions) = s.subjects.get(*subject) else {
                return err(404, 40401, "Subject not found");
            };
            match versions.iter().position(|&id| s.ids[id as usize - 1] == schema) {
                Some(v) => {
                    let id = versions[v];
                    (
                        200,
                        json!({"subject": subject, "version": v + 1, "id": id, "schema": schema.to_string()}),
                    )
                }
                None => err(404, 40403, "Schema not found"),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let Some(schema) = parse_schema(body) else {
                return err(422, 42201, "Invalid schema");
            };
            if let Some(versions) = s.subjects.get(*subject) {
                if let Some(&id) = versions.iter().find(|&&id| s.ids[id as usize - 1] == schema) {
                    return (200, json!({"id": id}));
                }
                let level = s
                    .subject_level
                    .get(*subject)
                    .cloned()
                    .unwrap_or_else(|| s.global_level.clone());
                if level != "NONE" {
                    if let Some(&latest) = versions.last() {
                        if let Err(why) = can_read(&schema, &s.ids[latest as usize - 1]) {
                            return err(
                                409,
                                409,
                                &format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {why}"),
                            );
                        }
                    }
                }
            }
            let id = match s.ids.iter().position(|x| *x == schema) {
                Some(i) => i as u32 + 1,
                None => {
                    s.ids.push(schema);
                    s.ids.len() as u32
                }
            };
            s.subjects.entry(subject.to_string()).or_default().push(id);
            (200, json!({"id": id}))
        }
        ("POST", ["compatibility", "subjects", subject, "versions", "latest"]) => {
            let Some(schema) = parse_schema(body) else {
                return err(422, 42201, "Invalid schema");
            };
            match s.subjects.get(*subject).and_then(|v| v.last()) {
                Some(&latest) => (
                    200,
                    json!({"is_compatible": can_read(&schema, &s.ids[latest as usize - 1]).is_ok()}),
                ),
                None => err(404, 40401, "Subject not found"),
            }
        }
        _ => err(404, 404, "Not found"),
    }
}

fn parse_schema(body: &Value) -> Option<Value> {
    let text = body["schema"].as_str()?;
    let v: Value = serde_json::from_str(text).ok()?;
    apache_avro::Schema::parse(&v).ok()?;
    Some(v)
}

/// Replaces named-type references by their definitions (records, enums,
/// fixed), so two schemas can be compared structurally.
fn inline(v: &Value, ns: &str, defs: &mut HashMap<String, Value>) -> Value {
    match v {
        Value::String(name) if !is_primitive(name) => {
            let full = if name.contains('.') {
                name.clone()
            } else {
                format!("{ns}.{name}")
            };
            defs.get(&full)
                .or_else(|| defs.get(name))
                .cloned()
                .unwrap_or_else(|| v.clone())
        }
        Value::Array(branches) => Value::Array(branches.iter().map(|b| inline(b, ns, defs)).collect()),
        Value::Object(o) => {
            let mut o = o.clone();
            let ns = o.get("namespace").and_then(Value::as_str).unwrap_or(ns).to_string();
            let fullname = o.get("name").and_then(Value::as_str).map(|n| {
                if n.contains('.') {
                    n.to_string()
                } else {
                    format!("{ns}.{n}")
                }
            });
            if let Some(Value::Array(fields)) = o.get("fields").cloned() {
                let mut out = Vec::new();
                for mut f in fields {
                    f["type"] = inline(&f["type"], &ns, defs);
                    out.push(f);
                }
                o.insert("fields".into(), Value::Array(out));
            }
            for key in ["items", "values"] {
                if let Some(inner) = o.get(key).cloned() {
                    o.insert(key.into(), inline(&inner, &ns, defs));
                }
            }
            let v = Value::Object(o);
            if let Some(n) = fullname {
                defs.insert(n, v.clone());
            }
            v
        }
        other => other.clone(),
    }
}

fn is_primitive(n: &str) -> bool {
    matches!(
        n,
        "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string"
    )
}

/// The type name of a schema node: primitives, records, arrays, …
fn kind(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(_) => "union".into(),
        Value::Object(o) => match o.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(inner) => kind(inner),
            None => "?".into(),
        },
        _ => "?".into(),
    }
}

/// BACKWARD: can `reader` (new) read data written with `writer` (old)?
pub fn can_read(reader: &Value, writer: &Value) -> Result<(), String> {
    let (r, w) = (
        inline(reader, "", &mut HashMap::new()),
        inline(writer, "", &mut HashMap::new()),
    );
    check(&r, &w, "")
}

fn check(r: &Value, w: &Value, at: &str) -> Result<(), String> {
    if let Value::Array(wb) = w {
        for b in wb {
            check(r, b, at)?;
        }
        return Ok(());
    }
    if let Value::Array(rb) = r {
        return if rb.iter().any(|b| check(b, w, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: writer type {} is not in the reader's union", kind(w)))
        };
    }
    let (rk, wk) = (kind(r), kind(w));
    let promotable = matches!(
        (wk.as_str(), rk.as_str()),
        ("int", "long" | "float" | "double")
            | ("long", "float" | "double")
            | ("float", "double")
            | ("string", "bytes")
            | ("bytes", "string")
    );
    if rk != wk && !promotable {
        return Err(format!("{at}: type changed from {wk} to {rk}"));
    }
    match rk.as_str() {
        "record" => {
            let empty = vec![];
            let wf = w["fields"].as_array().unwrap_or(&empty);
            for f in r["fields"].as_array().unwrap_or(&empty) {
                let name = f["name"].as_str().unwrap_or("");
                match wf.iter().find(|x| x["name"] == f["name"]) {
                    Some(x) => check(&f["type"], &x["type"], &format!("{at}.{name}"))?,
                    None if f.get("default").is_some() => {}
                    None => return Err(format!("{at}.{name}: new field without a default")),
                }
            }
            Ok(())
        }
        "array" => check(&r["items"], &w["items"], at),
        "map" => check(&r["values"], &w["values"], at),
        _ => Ok(()),
    }
}
