//! Request examples in the OpenAPI document are whole requests that the server accepts.
//!
//! A request body with an example of its own (`request_body(example = …)`) is shown
//! and tried by that example. The property examples of the types under it are dropped:
//! readers and tools (schemathesis's examples phase, client generators) compose those
//! into one request, and a job's settings do not compose (`augment` is for images,
//! `task_weights` for multi-task files, `method.supervised` for `"type": "supervised"`),
//! so the composed request would be refused. Types that responses use too keep theirs.
//!
//! The upload's example is added here, as utoipa's attributes cannot give a multipart
//! body an example or its file part a file name.

use std::collections::BTreeSet;

use serde_json::{json, Value};

/// The example upload: two rows of single-label JSONL, sent as `train.jsonl`.
const UPLOAD_EXAMPLE_ROWS: &str = "{\"text\": \"A gripping, beautifully acted film.\", \"label\": \"positive\"}\n\
                                   {\"text\": \"Two hours I will never get back.\", \"label\": \"negative\"}\n";

/// The document as `/openapi.json` serves it: `api` with this module's rules applied.
/// They are applied to its JSON, as utoipa's typed form has no generic walk (and does
/// not read its own JSON back).
pub(crate) fn whole_requests(api: &utoipa::openapi::OpenApi) -> Value {
    // Built from the code alone (no input): it always serializes.
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    add_upload_example(&mut doc);
    drop_composable_examples(&mut doc);
    doc
}

fn add_upload_example(doc: &mut Value) {
    let Some(form) = doc
        .pointer_mut("/paths/~1v1~1files/post/requestBody/content/multipart~1form-data")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    form.insert(
        "example".into(),
        json!({"purpose": "fine-tune", "file": UPLOAD_EXAMPLE_ROWS}),
    );
    form.insert(
        "encoding".into(),
        json!({"file": {"headers": {"Content-Disposition": {
            "description": "The file name's extension tells the format when no `format` field comes first",
            "schema": {"type": "string",
                       "example": "form-data; name=\"file\"; filename=\"train.jsonl\""}}}}}),
    );
}

/// Removes `example` and `examples` from the components that only request bodies with
/// whole examples reach.
fn drop_composable_examples(doc: &mut Value) {
    let mut exemplified = BTreeSet::new();
    let mut elsewhere = BTreeSet::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        let operations = paths
            .values()
            .filter_map(Value::as_object)
            .flat_map(|ops| ops.values().filter_map(Value::as_object));
        for operation in operations {
            for (key, part) in operation {
                if key != "requestBody" {
                    refs(part, &mut elsewhere);
                    continue;
                }
                let Some(content) = part.get("content").and_then(Value::as_object) else {
                    continue;
                };
                for media in content.values() {
                    let whole = media.get("example").is_some() || media.get("examples").is_some();
                    refs(
                        media.get("schema").unwrap_or(&Value::Null),
                        if whole {
                            &mut exemplified
                        } else {
                            &mut elsewhere
                        },
                    );
                }
            }
        }
    }
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let exemplified = reachable(schemas, exemplified);
    let elsewhere = reachable(schemas, elsewhere);
    for name in exemplified.difference(&elsewhere) {
        if let Some(schema) = schemas.get_mut(name) {
            strip_examples(schema);
        }
    }
}

/// The component names `value`'s `$ref`s name.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix("#/components/schemas/") {
                            out.insert(name.to_owned());
                        }
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `roots` and every component they reach.
fn reachable(
    schemas: &serde_json::Map<String, Value>,
    roots: BTreeSet<String>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut next = BTreeSet::new();
        refs(schemas.get(&name).unwrap_or(&Value::Null), &mut next);
        todo.extend(next);
    }
    seen
}

fn strip_examples(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("example");
            map.remove("examples");
            map.values_mut().for_each(strip_examples);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_examples),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_example(value: &Value) -> bool {
        match value {
            Value::Object(map) => {
                map.contains_key("example")
                    || map.contains_key("examples")
                    || map.values().any(has_example)
            }
            Value::Array(items) => items.iter().any(has_example),
            _ => false,
        }
    }

    #[test]
    fn request_types_under_whole_examples_keep_none_and_response_types_keep_theirs() {
        let doc = crate::openapi();
        let schemas = &doc["components"]["schemas"];
        for request_only in [
            "CreateJobRequest",
            "HyperparametersInput",
            "MethodInput",
            "UploadForm",
        ] {
            assert!(
                !has_example(&schemas[request_only]),
                "{request_only}: {}",
                schemas[request_only]
            );
        }
        // Responses' types are untouched, and so are request bodies without an example.
        assert!(has_example(&schemas["Method"]), "{}", schemas["Method"]);
        assert!(has_example(&schemas["PredictRequest"]));
        let create = &doc["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"]["content"]
            ["application/json"];
        assert_eq!(create["example"]["base_model"], "all-MiniLM-L6-v2");
    }

    #[test]
    fn the_upload_example_is_a_dataset_with_a_file_name_that_tells_its_format() {
        let doc = crate::openapi();
        let form =
            &doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"];
        assert_eq!(form["example"]["purpose"], "fine-tune");
        let rows = form["example"]["file"].as_str().expect("file");
        for line in rows.lines() {
            let row: Value = serde_json::from_str(line).expect("a JSON line");
            assert!(row["text"].is_string() && row["label"].is_string(), "{row}");
        }
        let disposition = form["encoding"]["file"]["headers"]["Content-Disposition"]["schema"]
            ["example"]
            .as_str()
            .expect("disposition");
        assert!(
            disposition.contains("filename=\"train.jsonl\""),
            "{disposition}"
        );
    }
}
