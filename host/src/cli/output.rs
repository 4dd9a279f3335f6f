//! Printing values and siblings for people and for scripts.

use base64::Engine as _;
use concord_client::Sibling;
use serde_json::{Value, json};

/// A value for people: as text when it is printable UTF-8, else as hex.
pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => s.to_owned(),
        _ => format!("0x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

/// A sibling as JSON: `value` is text when the bytes are UTF-8 (else null),
/// and `value_base64` always holds the exact bytes.
pub fn sibling_json(s: &Sibling) -> Value {
    json!({
        "value": std::str::from_utf8(&s.value).ok(),
        "value_base64": base64::engine::general_purpose::STANDARD.encode(&s.value),
        "deleted": s.deleted,
        "written_at_ms": s.written_at_ms,
        "writer": s.writer,
    })
}

/// Milliseconds since the epoch as an RFC 3339 UTC time.
pub fn show_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_bytes() {
        assert_eq!(show_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(show_time(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(show_bytes(b"hi there"), "hi there");
        assert_eq!(show_bytes(&[0, 255]), "0x00ff");
    }
}
