//! The default of every key that has one (serde's `default = "…"` functions).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::EmbedText;

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
pub(super) fn default_router() -> PathBuf {
    PathBuf::from("models/llmrouter")
}
pub(super) fn default_device() -> String {
    "cpu".to_owned()
}
pub(super) fn default_max_body_bytes() -> usize {
    4 << 20
}
pub(super) fn default_max_input_tokens() -> usize {
    131_072
}
pub(super) fn default_decision_timeout_ms() -> u64 {
    500
}
pub(super) fn default_header_read_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_body_read_timeout_ms() -> u64 {
    30_000
}
pub(super) fn default_watch_interval_ms() -> u64 {
    2_000
}
pub(super) fn default_shutdown_grace_ms() -> u64 {
    30_000
}
pub(super) fn default_mode() -> String {
    "balanced".to_owned()
}
pub(super) fn default_modes() -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("quality".to_owned(), 0.0),
        ("balanced".to_owned(), 0.05),
        ("cost".to_owned(), 0.15),
    ])
}
pub(super) fn default_embed_text() -> EmbedText {
    EmbedText::SystemAndLastUser
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_max_request_band() -> f64 {
    1.0
}
pub(super) fn default_max_batch() -> usize {
    32
}
pub(super) fn default_decision_cache() -> usize {
    10_000
}
pub(super) fn default_rotate_bytes() -> u64 {
    64 << 20
}
pub(super) fn default_keep_files() -> usize {
    20
}
pub(super) fn default_recent_requests() -> usize {
    100_000
}
pub(super) fn default_feedback_scores() -> [f64; 2] {
    [0.0, 1.0]
}
