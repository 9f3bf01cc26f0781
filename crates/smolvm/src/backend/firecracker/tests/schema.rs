//! Checks requests against Firecracker's Swagger 2.0 definition (a copy of the v1.16.1 file lives in
//! `crates/smolvm/tests/fixtures/`): the path and method must exist, and the body must match the body
//! parameter's definition: required fields present, no field the definition lacks (Firecracker denies
//! unknown fields), types, enum values, integer bounds, nested `$ref`s.

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The fixture, relative to the crate.
pub(super) const FIXTURE: &str = "tests/fixtures/firecracker-api-v1.16.1.yaml";

pub(super) struct Schema {
    doc: Yaml,
}

impl Schema {
    pub(super) fn load() -> Schema {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Schema {
            doc: serde_yaml::from_str(&text).expect("the API definition is valid YAML"),
        }
    }

    /// The definition named `name`.
    pub(super) fn definition(&self, name: &str) -> &Yaml {
        let d = &self.doc["definitions"][name];
        assert!(!d.is_null(), "no definition {name}");
        d
    }

    /// Validates a request; returns the name of the body's definition.
    pub(super) fn check_request(
        &self,
        method: &str,
        path: &str,
        body: &Json,
    ) -> Result<String, String> {
        let operation = self.operation(method, path)?;
        let params = operation["parameters"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let Some(body_param) = params.iter().find(|p| p["in"].as_str() == Some("body")) else {
            return if body.is_null() {
                Ok(String::new())
            } else {
                Err(format!("{method} {path} takes no body"))
            };
        };
        let reference = body_param["schema"]["$ref"]
            .as_str()
            .ok_or_else(|| format!("{method} {path}: body has no $ref"))?;
        let name = reference.trim_start_matches("#/definitions/").to_string();
        self.check_value(self.definition(&name), body, &name)?;
        Ok(name)
    }

    /// Checks `value` against the definition `name`.
    pub(super) fn check_definition(&self, name: &str, value: &Json) -> Result<(), String> {
        self.check_value(self.definition(name), value, name)
    }

    /// The operation object for `method` on the path template matching `path`.
    fn operation(&self, method: &str, path: &str) -> Result<&Yaml, String> {
        let paths = self.doc["paths"].as_mapping().ok_or("no paths")?;
        let segments: Vec<&str> = path.split('/').collect();
        for (template, item) in paths {
            let template = template.as_str().unwrap_or_default();
            let t: Vec<&str> = template.split('/').collect();
            let matches = t.len() == segments.len()
                && t.iter().zip(&segments).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                });
            if matches {
                let op = &item[method.to_ascii_lowercase().as_str()];
                if op.is_null() {
                    return Err(format!("{template} has no {method}"));
                }
                return Ok(op);
            }
        }
        Err(format!("no path {path} in the API"))
    }

    fn check_value(&self, schema: &Yaml, value: &Json, at: &str) -> Result<(), String> {
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.trim_start_matches("#/definitions/");
            return self.check_value(self.definition(name), value, at);
        }
        if let Some(allowed) = schema["enum"].as_sequence() {
            let ok = allowed
                .iter()
                .any(|a| a.as_str().is_some() && a.as_str() == value.as_str());
            if !ok {
                return Err(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        match schema["type"].as_str() {
            Some("object") => {
                let obj = value
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object, got {value}"))?;
                for req in schema["required"].as_sequence().into_iter().flatten() {
                    let req = req.as_str().unwrap_or_default();
                    if !obj.contains_key(req) {
                        return Err(format!("{at}: required field {req} missing"));
                    }
                }
                for (k, v) in obj {
                    let prop = &schema["properties"][k.as_str()];
                    if prop.is_null() {
                        return Err(format!("{at}: field {k} is not in the definition"));
                    }
                    self.check_value(prop, v, &format!("{at}.{k}"))?;
                }
                Ok(())
            }
            Some("string") if !value.is_string() => Err(format!("{at}: expected a string")),
            Some("boolean") if !value.is_boolean() => Err(format!("{at}: expected a boolean")),
            Some("integer") => {
                let n = value
                    .as_i64()
                    .or_else(|| value.as_u64().map(|u| u as i64))
                    .ok_or_else(|| format!("{at}: expected an integer, got {value}"))?;
                if let Some(min) = schema["minimum"].as_i64() {
                    if n < min {
                        return Err(format!("{at}: {n} is below the minimum {min}"));
                    }
                }
                if let Some(max) = schema["maximum"].as_i64() {
                    if n > max {
                        return Err(format!("{at}: {n} is above the maximum {max}"));
                    }
                }
                Ok(())
            }
            Some("array") => {
                let items = value
                    .as_array()
                    .ok_or_else(|| format!("{at}: expected an array"))?;
                items.iter().enumerate().try_for_each(|(i, v)| {
                    self.check_value(&schema["items"], v, &format!("{at}[{i}]"))
                })
            }
            _ => Ok(()),
        }
    }

    /// The enum values of a property (`definition.property`) or of a definition itself.
    pub(super) fn enum_values(&self, definition: &str, property: Option<&str>) -> Vec<String> {
        let mut node = self.definition(definition);
        if let Some(p) = property {
            node = &node["properties"][p];
        }
        if let Some(reference) = node["$ref"].as_str() {
            node = self.definition(reference.trim_start_matches("#/definitions/"));
        }
        node["enum"]
            .as_sequence()
            .expect("an enum")
            .iter()
            .map(|v| v.as_str().expect("string enum").to_string())
            .collect()
    }
}
