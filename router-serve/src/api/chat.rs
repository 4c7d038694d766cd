//! The OpenAI chat-completions request as the router reads it: validated, the text to embed
//! built from the conversation, per-request routing controls taken out. The body itself is kept
//! as JSON and forwarded unchanged apart from `model` (and `stream_options` when usage must be
//! captured).

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use crate::config::EmbedText;
use crate::http::error::ApiError;

/// Body field for per-request routing controls; removed before forwarding.
pub const ROUTER_FIELD: &str = "router";

/// The most output tokens a request may ask for (no model today writes more in one answer).
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;

/// The most choices a request may ask for (`n`; OpenAI's own limit).
pub const MAX_CHOICES: u64 = 128;

/// A parsed `POST /v1/chat/completions` body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The body to forward (without the `router` field).
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Whether the client asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    pub messages: Vec<Message>,
    pub overrides: Overrides,
    /// `max_completion_tokens`, else `max_tokens` (1 to [`MAX_OUTPUT_TOKENS`]).
    pub max_tokens: Option<u64>,
    /// `n`, the number of choices (1 to [`MAX_CHOICES`]; 1 when absent): the worst case is
    /// `n` answers of `max_tokens` each.
    pub choices: u64,
    /// What the request needs of a model beyond text.
    pub needs: Needs,
    /// The OpenAI `user` field, logged as the caller.
    pub user: Option<String>,
    /// The OpenAI `metadata` field, logged as given.
    pub metadata: Option<Value>,
    /// `x-router-criticality: sheddable`: refuse (503) rather than queue when every endpoint
    /// is saturated. A header can only lower a request's criticality, never raise its tier's.
    pub sheddable: bool,
}

/// What a request needs of the model that answers it, beyond text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `tools` (non-empty) or `functions`.
    pub tools: bool,
    /// An image content part.
    pub vision: bool,
    /// `response_format.type == "json_schema"`.
    pub json_schema: bool,
}

impl Needs {
    fn of(body: &Map<String, Value>) -> Self {
        let non_empty = |key: &str| {
            body.get(key)
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()) && !v.is_null())
        };
        let image = |part: &Value| {
            matches!(
                part.get("type").and_then(Value::as_str),
                Some("image_url" | "input_image" | "image")
            )
        };
        let vision = body
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .any(image);
        Self {
            tools: non_empty("tools") || non_empty("functions"),
            vision,
            json_schema: body
                .get("response_format")
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str)
                == Some("json_schema"),
        }
    }
}

/// One message's role and text (text parts joined; images and tool calls carry no text).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub text: String,
}

/// Routing controls a request may set, by header or by the body's `router` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub mode: Option<String>,
    pub band: Option<f64>,
    pub models: Option<Vec<String>>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.band.is_none() && self.models.is_none()
    }
}

/// Parses `bytes` as a chat-completions request; `headers` may carry `x-router-mode`,
/// `x-router-band` and `x-router-models` (the body's `router` object wins over them).
pub fn parse_chat(bytes: &[u8], headers: &HeaderMap) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(ApiError::InvalidJson)?;
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "`model` must be a non-empty string",
                Some("model"),
            ));
        }
        None => return Err(ApiError::invalid("`model` is required", Some("model"))),
    };
    let messages = match body.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "`messages` must not be empty",
                Some("messages"),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`messages` must be an array",
                Some("messages"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "`messages` is required",
                Some("messages"),
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "`stream` must be a boolean",
                Some("stream"),
            ));
        }
    };
    let client_wants_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = match body.get("max_completion_tokens") {
        Some(v) if !v.is_null() => bounded_integer(v, "max_completion_tokens", MAX_OUTPUT_TOKENS)?,
        _ => match body.get("max_tokens") {
            Some(v) => bounded_integer(v, "max_tokens", MAX_OUTPUT_TOKENS)?,
            None => None,
        },
    };
    let choices = match body.get("n") {
        Some(v) => bounded_integer(v, "n", MAX_CHOICES)?.unwrap_or(1),
        None => 1,
    };
    let needs = Needs::of(&body);
    let user = body.get("user").and_then(Value::as_str).map(str::to_owned);
    let metadata = body.get("metadata").cloned();
    let sheddable = sheddable(headers)?;
    let mut overrides = header_overrides(headers)?;
    if let Some(field) = body.remove(ROUTER_FIELD) {
        merge_body_overrides(&mut overrides, field)?;
    }
    Ok(ChatRequest {
        body,
        model,
        stream,
        client_wants_usage,
        messages,
        overrides,
        max_tokens,
        choices,
        needs,
        user,
        metadata,
        sheddable,
    })
}

/// `x-router-criticality`: `critical` (the default) or `sheddable`.
fn sheddable(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get("x-router-criticality") else {
        return Ok(false);
    };
    match value
        .to_str()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("critical") => Ok(false),
        Ok("sheddable") => Ok(true),
        _ => Err(ApiError::invalid(
            format!("x-router-criticality must be `critical` or `sheddable`, got {value:?}"),
            None,
        )),
    }
}

/// An integer field from 1 to `max` (`None` for null); anything else is a 400 naming it.
fn bounded_integer(value: &Value, field: &'static str, max: u64) -> Result<Option<u64>, ApiError> {
    if value.is_null() {
        return Ok(None);
    }
    match value.as_u64() {
        Some(v) if (1..=max).contains(&v) => Ok(Some(v)),
        _ => Err(ApiError::invalid(
            format!("`{field}` must be an integer from 1 to {max}, got {value}"),
            Some(field),
        )),
    }
}

fn parse_message(i: usize, value: &Value) -> Result<Message, ApiError> {
    let bad = |what: &str| ApiError::invalid(format!("messages[{i}]: {what}"), Some("messages"));
    let Value::Object(m) = value else {
        return Err(bad("must be an object"));
    };
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`role` must be a string"))?
        .to_owned();
    let text = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) => return Err(bad("`content` must be a string, an array of parts or null")),
    };
    Ok(Message { role, text })
}

fn header_overrides(headers: &HeaderMap) -> Result<Overrides, ApiError> {
    let get = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| ApiError::invalid(format!("header {name} is not text"), None))
            })
            .transpose()
    };
    let band = get("x-router-band")?
        .map(|b| {
            b.parse::<f64>().map_err(|_| {
                ApiError::invalid(format!("x-router-band `{b}` is not a number"), None)
            })
        })
        .transpose()?;
    let models = get("x-router-models")?.map(|list| {
        list.split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect()
    });
    Ok(Overrides {
        mode: get("x-router-mode")?,
        band,
        models,
    })
}

fn merge_body_overrides(overrides: &mut Overrides, field: Value) -> Result<(), ApiError> {
    let param = Some(ROUTER_FIELD);
    let Value::Object(mut o) = field else {
        return Err(ApiError::invalid("`router` must be an object", param));
    };
    if let Some(mode) = o.remove("mode") {
        let mode = mode
            .as_str()
            .ok_or_else(|| ApiError::invalid("`router.mode` must be a string", param))?;
        overrides.mode = Some(mode.to_owned());
    }
    if let Some(band) = o.remove("band") {
        let band = band
            .as_f64()
            .ok_or_else(|| ApiError::invalid("`router.band` must be a number", param))?;
        overrides.band = Some(band);
    }
    if let Some(models) = o.remove("models") {
        let models = models
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|m| m.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                ApiError::invalid("`router.models` must be an array of strings", param)
            })?;
        overrides.models = Some(models);
    }
    if let Some(key) = o.keys().next() {
        return Err(ApiError::invalid(
            format!("`router.{key}` is not a routing control (mode, band, models)"),
            param,
        ));
    }
    Ok(())
}

impl ChatRequest {
    /// The text the router embeds, by `rule` (see [`EmbedText`]).
    pub fn embed_text(&self, rule: EmbedText) -> String {
        let last_user = self.messages.iter().rposition(|m| m.role == "user");
        let parts: Vec<&str> = match rule {
            EmbedText::All => self.messages.iter().map(|m| m.text.as_str()).collect(),
            EmbedText::LastUser => last_user
                .map(|i| vec![self.messages[i].text.as_str()])
                .unwrap_or_default(),
            EmbedText::SystemAndLastUser => self
                .messages
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    matches!(m.role.as_str(), "system" | "developer") || Some(*i) == last_user
                })
                .map(|(_, m)| m.text.as_str())
                .collect(),
        };
        let text = parts
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            // No user turn: route on whatever the conversation says.
            self.messages
                .iter()
                .map(|m| m.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        }
    }

    /// Characters of message text outside `embedded` (for the input-token estimate).
    pub fn total_chars(&self) -> usize {
        self.messages.iter().map(|m| m.text.chars().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn embeds_the_system_prompt_and_the_last_user_turn() {
        let r = parse(
            r#"{"model":"router","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"first"},
                {"role":"assistant","content":"ok"},
                {"role":"user","content":[{"type":"text","text":"second"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.embed_text(EmbedText::SystemAndLastUser),
            "Be brief.\nsecond"
        );
        assert_eq!(r.embed_text(EmbedText::LastUser), "second");
        assert_eq!(r.embed_text(EmbedText::All), "Be brief.\nfirst\nok\nsecond");
    }

    #[test]
    fn malformed_requests_name_the_field() {
        for (body, needle) in [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                "`model` is required",
            ),
            (r#"{"model":"router"}"#, "`messages` is required"),
            (r#"{"model":"router","messages":[]}"#, "must not be empty"),
            (
                r#"{"model":"router","messages":[{"content":"x"}]}"#,
                "messages[0]",
            ),
            (
                r#"{"model":"router","messages":[{"role":"user","content":5}]}"#,
                "content",
            ),
            (
                r#"{"model":"router","messages":[{"role":"user","content":"x"}],"router":{"bandd":1}}"#,
                "router.bandd",
            ),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{body}");
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn integer_fields_out_of_range_are_a_400_never_an_overflow() {
        let body = |field: &str| {
            format!(r#"{{"model":"router","messages":[{{"role":"user","content":"x"}}],{field}}}"#)
        };
        for (field, needle) in [
            (r#""max_tokens":18446744073709551615"#, "`max_tokens`"),
            (r#""max_tokens":-1"#, "`max_tokens`"),
            (r#""max_tokens":1.5"#, "`max_tokens`"),
            (r#""max_tokens":"100""#, "`max_tokens`"),
            (r#""max_completion_tokens":0"#, "`max_completion_tokens`"),
            (r#""n":0"#, "`n`"),
            (r#""n":129"#, "`n`"),
        ] {
            let err = parse(&body(field)).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{field}");
            assert!(err.to_string().contains(needle), "{field}: {err}");
        }
        let ok = parse(&body(r#""max_tokens":100,"n":3"#)).unwrap();
        assert_eq!((ok.max_tokens, ok.choices), (Some(100), 3));
        let null = parse(&body(r#""max_tokens":null,"n":null"#)).unwrap();
        assert_eq!((null.max_tokens, null.choices), (None, 1));
    }

    #[test]
    fn overrides_come_from_headers_and_the_body_field_which_is_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-router-band", "0.2".parse().unwrap());
        headers.insert("x-router-models", "a, b".parse().unwrap());
        let r = parse_chat(
            br#"{"model":"router","messages":[{"role":"user","content":"x"}],"router":{"mode":"cost"}}"#,
            &headers,
        )
        .unwrap();
        assert_eq!(
            r.overrides,
            Overrides {
                mode: Some("cost".into()),
                band: Some(0.2),
                models: Some(vec!["a".into(), "b".into()]),
            }
        );
        assert!(!r.body.contains_key(ROUTER_FIELD));
    }
}
