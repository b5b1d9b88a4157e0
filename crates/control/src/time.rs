//! Timestamps as EC2 writes them: ISO 8601 in UTC with milliseconds (`2026-11-21T12:00:00.000Z`).

use time::macros::format_description;
use time::OffsetDateTime;

pub fn iso8601(t: std::time::SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .expect("a UTC time always formats")
}

pub fn now_iso8601() -> String {
    iso8601(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_like_ec2() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(super::iso8601(t), "2023-11-14T22:13:20.123Z");
    }
}
