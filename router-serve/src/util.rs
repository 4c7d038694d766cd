//! Small helpers shared by every layer (time, hashing, ids); this module imports nothing from
//! the crate, so it can sit under all of them.

use std::time::Instant;

use router_core::artifact::rfc3339_utc;
use sha2::{Digest, Sha256};

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Day (`YYYY-MM-DD`) and month (`YYYY-MM`) of a Unix time, UTC.
pub fn periods(unix_secs: u64) -> (String, String) {
    let stamp = rfc3339_utc(unix_secs);
    (stamp[..10].to_owned(), stamp[..7].to_owned())
}

/// The current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    rfc3339_utc(now_unix())
}

/// Hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new request id (`req_` and 32 hex digits).
pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-11-25T10:00:00Z
        assert_eq!(
            periods(1_795_600_800),
            ("2026-11-25".into(), "2026-11".into())
        );
    }
}
