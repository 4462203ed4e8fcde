//! Fuzzes collaborative-session operations as clients send them: the operation name, the
//! JSON Pointer path and the JSON value, applied to a document under both conflict policies,
//! and publish data checks (size, nesting). The input is split at NUL bytes. Any panic, or a
//! document that stops being valid JSON, is a bug.

#![no_main]

use chorus_core::check_publish_input;
use chorus_core::collab::{ConflictPolicy, SessionDoc, parse_op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = check_publish_input(&text, 64 * 1024, None, None);
    let mut parts = text.split('\0');
    let (op, path, value, document) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("{}"),
    );
    let value = serde_json::from_str(value).ok();
    let Ok(document) = serde_json::from_str::<serde_json::Value>(document) else {
        return;
    };
    let Ok((path, kind)) = parse_op(op, path, value) else {
        return;
    };
    for policy in [ConflictPolicy::Lww, ConflictPolicy::Reject] {
        let Ok(mut doc) = SessionDoc::new(policy, document.clone()) else {
            continue;
        };
        for base_version in [0, 1] {
            let _ = doc.apply(&path, &kind, base_version);
        }
        let json = serde_json::to_string(doc.document()).expect("a document stays JSON");
        serde_json::from_str::<serde_json::Value>(&json).expect("and parses back");
    }
});
