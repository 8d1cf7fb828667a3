//! Reading an object's status from its JSON (as `recastctl get -o json` prints it), for the
//! end-to-end suite and `make demo`.

use serde_json::Value;

/// The status of condition `kind` ("True", "False", "Unknown"), if the object has it.
pub fn condition(obj: &Value, kind: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// The endpoint's active signal types.
pub fn signals(ep: &Value) -> Vec<String> {
    ep["status"]["signals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The step of the endpoint's active attempt.
pub fn step(ep: &Value) -> Option<String> {
    ep["status"]["activeAttempt"]["step"]
        .as_str()
        .map(str::to_string)
}
