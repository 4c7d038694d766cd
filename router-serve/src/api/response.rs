//! The OpenAI chat-completion response as the router reads and rewrites it: its `usage`, and
//! `model` renamed to the router's name for the model that answered.

use bytes::Bytes;
use serde_json::Value;

use crate::observe::log::Usage;

/// The upstream's JSON with `model` set to the router's name, and its usage.
pub fn rewrite_complete(body: Bytes, model: &str) -> (Bytes, Option<Usage>) {
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            let usage = usage_of(&value);
            if let Value::Object(o) = &mut value {
                o.insert("model".into(), Value::String(model.to_owned()));
            }
            match serde_json::to_vec(&value) {
                Ok(bytes) => (Bytes::from(bytes), usage),
                Err(_) => (body, usage),
            }
        }
        Err(_) => (body, None),
    }
}

/// Whether `body` is a chat completion: a JSON object with a `choices` array.
pub fn is_chat_completion(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("choices").is_some_and(Value::is_array))
}

/// Characters of the answer's text (every choice's message content), to estimate its output
/// tokens when the upstream reports no usage.
pub fn content_chars(body: &[u8]) -> usize {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return body.len();
    };
    value
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |choices| {
            choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                .map(|t| t.chars().count())
                .sum()
        })
}

/// Token usage from an OpenAI `usage` object.
pub fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    let input = usage.get("prompt_tokens").and_then(Value::as_u64);
    let output = usage.get("completion_tokens").and_then(Value::as_u64);
    if input.is_none() && output.is_none() {
        return None;
    }
    let cached = usage
        .pointer("/prompt_tokens_details/cached_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        // Never more than the input it is part of.
        cached_input_tokens: cached.min(input.unwrap_or(0)),
    })
}
