//! Runs the shared table of valid and invalid configs (`tests/config_cases.json` at the repository
//! root) against the Rust rules; the Python tests run the same table against the pydantic models.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use smolvm::{VmConfig, VmConfigSpec};

fn table() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/config_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

struct Places {
    _t: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
    dir: PathBuf,
    missing: PathBuf,
}

fn places() -> Places {
    let t = tempfile::tempdir().unwrap();
    let kernel = t.path().join("vmlinux");
    let rootfs = t.path().join("rootfs.ext4");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&rootfs, b"r").unwrap();
    Places {
        dir: t.path().to_path_buf(),
        missing: t.path().join("does-not-exist"),
        _t: t,
        kernel,
        rootfs,
    }
}

/// The case's fields over the base, placeholders replaced.
fn fields(case: &Value, p: &Places) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kernel_path".into(), "$KERNEL".into());
    m.insert("rootfs_path".into(), "$ROOTFS".into());
    for (k, v) in case["fields"].as_object().unwrap() {
        m.insert(k.clone(), v.clone());
    }
    let sub = |s: &str| -> Option<Value> {
        let path = match s {
            "$KERNEL" => &p.kernel,
            "$ROOTFS" => &p.rootfs,
            "$DIR" => &p.dir,
            "$MISSING" => &p.missing,
            _ => return Some(Value::String(s.into())),
        };
        Some(Value::String(path.to_str().unwrap().into()))
    };
    m.into_iter()
        .filter(|(_, v)| v != "$ABSENT")
        .map(|(k, v)| match v.as_str() {
            Some(s) => (k, sub(s).unwrap()),
            None => (k, v),
        })
        .collect()
}

/// Builds a config as a JSON document would (config files, the Python binding): serde, then the rules.
/// Returns the rejected field name (from the `ValidationError`, or named by serde's message).
fn build(fields: Map<String, Value>) -> Result<VmConfig, (Option<String>, String)> {
    let spec: VmConfigSpec =
        serde_json::from_value(Value::Object(fields.clone())).map_err(|e| (None, e.to_string()))?;
    spec.build()
        .map_err(|e| (Some(e.field.clone()), e.to_string()))
}

#[test]
fn every_shared_config_case_holds_in_rust() {
    let p = places();
    let mut failures = Vec::new();
    for case in table() {
        let name = case["name"].as_str().unwrap();
        let f = fields(&case, &p);
        let result = build(f.clone());
        match (case["valid"].as_bool().unwrap(), result) {
            (true, Ok(c)) => {
                let got = serde_json::to_value(&c).unwrap();
                if let Some(expect) = case.get("expect").and_then(Value::as_object) {
                    for (k, v) in expect {
                        if &got[k] != v {
                            failures.push(format!("{name}: {k} = {} (expected {v})", got[k]));
                        }
                    }
                }
                if case["fields"].get("vm_id").is_some_and(Value::is_null) {
                    let id = got["vm_id"].as_str().unwrap();
                    if !(id.len() == 11 && id.starts_with("vm-")) {
                        failures.push(format!("{name}: generated id {id:?}"));
                    }
                }
            }
            (true, Err((_, msg))) => failures.push(format!("{name}: rejected: {msg}")),
            (false, Ok(_)) => failures.push(format!("{name}: accepted")),
            (false, Err((field, msg))) => {
                let want = case["field"].as_str().unwrap();
                // The rules' errors name their field; serde's type errors do not, so for those the
                // field is the one whose removal lets the document deserialise.
                let named = match field {
                    Some(f) => f == want,
                    None => msg.contains(want) || serde_blames(&case, &p) == Some(want.to_string()),
                };
                if !named {
                    failures.push(format!("{name}: rejected for the wrong field: {msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The one case field without which the document deserialises (for serde's type errors).
fn serde_blames(case: &Value, p: &Places) -> Option<String> {
    let keys: Vec<String> = case["fields"].as_object()?.keys().cloned().collect();
    keys.into_iter().find(|k| {
        let mut c = case.clone();
        c["fields"].as_object_mut().unwrap().remove(k);
        serde_json::from_value::<VmConfigSpec>(Value::Object(fields(&c, p))).is_ok()
    })
}
