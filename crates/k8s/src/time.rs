//! Kubernetes timestamps.

/// RFC 3339 in UTC to the second, as longhorn-manager's `util.Now()` writes times
/// (`lastStateTransitionTime`, `diskLastRefAtMap`).
pub fn rfc3339_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_to_the_second_in_utc() {
        let now = super::rfc3339_now();
        assert_eq!(now.len(), "2026-12-04T20:18:15Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        let parsed: jiff::Timestamp = now.parse().unwrap();
        assert!((jiff::Timestamp::now().as_second() - parsed.as_second()).abs() < 5);
    }
}
