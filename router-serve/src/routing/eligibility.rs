//! Which models can serve a request: tools, image inputs, structured output and the context
//! window, as `[models.MODEL]` declares them. The decision chooses only among the able; the
//! others are reported with the reason (`/v1/route`, `x-router-excluded`, the decision log).

use serde::Serialize;

use crate::api::chat::Needs;
use crate::config::Capabilities;

/// A model the request cannot go to, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    pub model: String,
    pub reason: String,
}

/// Why a model with `caps` cannot serve a request that needs `needs`, with `tokens` input plus
/// output tokens when known; `None` when it can.
pub fn unable(caps: Option<&Capabilities>, needs: Needs, tokens: Option<u64>) -> Option<String> {
    let caps = caps?;
    if needs.tools && !caps.tools {
        return Some("no tool calls".into());
    }
    if needs.vision && !caps.vision {
        return Some("no image inputs".into());
    }
    if needs.json_schema && !caps.json_schema {
        return Some("no json_schema response format".into());
    }
    match (caps.context_window, tokens) {
        (Some(window), Some(tokens)) if tokens > window => Some(format!(
            "{tokens} input and output tokens exceed its context window of {window}"
        )),
        _ => None,
    }
}

/// `excluded` as one line: `a (no tool calls); b (…)`.
pub fn describe(excluded: &[Excluded]) -> String {
    excluded
        .iter()
        .map(|e| format!("{} ({})", e.model, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_capability_excludes_only_the_requests_that_need_it() {
        let small = Capabilities {
            context_window: Some(100),
            tools: false,
            vision: false,
            json_schema: false,
        };
        let plain = Needs::default();
        assert_eq!(unable(Some(&small), plain, Some(100)), None);
        assert!(unable(Some(&small), plain, Some(101)).is_some());
        for needs in [
            Needs {
                tools: true,
                ..plain
            },
            Needs {
                vision: true,
                ..plain
            },
            Needs {
                json_schema: true,
                ..plain
            },
        ] {
            assert!(unable(Some(&small), needs, None).is_some(), "{needs:?}");
            // A model with no capability table is assumed able.
            assert_eq!(unable(None, needs, Some(1_000_000)), None);
        }
    }
}
