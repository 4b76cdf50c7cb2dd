//! Signed URLs: a view that needs the token, reachable by a client that sends no header
//! (Longhorn's download client sends none of its own). `bifs url` (and `POST /api/v1/sign`)
//! appends `?expires=UNIX&signature=HEX` to a view's URL, where
//!
//! `signature = HMAC-SHA256(key, "bifs/signed-url/v1\n" ‖ path ‖ "\n" ‖ expires)` and
//! `key = HKDF-SHA256(ikm = token, info = "bifs/signed-url/v1")`.
//!
//! The path is the URL's path exactly as sent (percent-encoding included), so a signature
//! covers that one view and nothing else (any change to the path, including its `.sha512`
//! sibling, fails); the method is not covered (HEAD and GET alike). The token itself never
//! appears in a URL, and the MAC key is not the token: a signed URL, or many, tell nothing
//! about it. The server checks a signature before any lookup, in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hkdf::Hkdf;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The construction's name: its domain in the HKDF and in every MAC.
pub const DOMAIN: &str = "bifs/signed-url/v1";

/// How long a URL from `bifs url` stays valid when `--expires` is not given: a day. Long
/// enough for Longhorn to finish with it (it downloads once per BackingImage; a failed attempt
/// is retried after a 1-5 minute backoff, so a day covers hundreds of retries, and leaves time
/// between signing and applying the manifest); short enough that a URL leaked from a manifest
/// or a log stops working tomorrow.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The MAC key derived from the token (never the token).
pub struct Signer {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this signed URL expired at {0} (UNIX time); sign a new one with `bifs url`")]
    Expired(u64),
    #[error("the URL's signature does not match its path (a signed URL opens exactly the view it was signed for)")]
    Mismatch,
    #[error("a signed URL carries both `expires` (UNIX seconds) and `signature` (hex)")]
    Malformed,
}

type HmacSha256 = hmac::Hmac<Sha256>;

impl Signer {
    pub fn from_token(token: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, token);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 blocks.
        let _ = hk.expand(DOMAIN.as_bytes(), key.as_mut());
        Self { key }
    }

    fn mac(&self, path: &str, expires: u64) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(format!("{DOMAIN}\n{path}\n{expires}").as_bytes());
        m
    }

    /// The signature (hex) of `path` valid until `expires` (UNIX seconds).
    pub fn sign(&self, path: &str, expires: u64) -> String {
        hex::encode(self.mac(path, expires).finalize().into_bytes())
    }

    /// `path` with `?expires=…&signature=…` (a path that already has a query is refused by
    /// the caller: views take none).
    pub fn sign_path(&self, path: &str, expires: u64) -> String {
        format!(
            "{path}?expires={expires}&signature={}",
            self.sign(path, expires)
        )
    }

    /// Checks a request's `expires` and `signature` for `path` at `now` (UNIX seconds).
    pub fn verify(
        &self,
        path: &str,
        expires: &str,
        signature: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        let expires: u64 = expires.parse().map_err(|_| SignatureError::Malformed)?;
        let given = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
        // The MAC first, the time after: an altered path is a mismatch whatever its expiry.
        self.mac(path, expires)
            .verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)?;
        if now >= expires {
            return Err(SignatureError::Expired(expires));
        }
        Ok(())
    }
}

/// The `expires` and `signature` of a query string, if it has either.
pub fn signature_params(query: &str) -> Option<(String, String)> {
    let mut expires = None;
    let mut signature = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = Some(v.to_owned()),
            Some(("signature", v)) => signature = Some(v.to_owned()),
            _ => {}
        }
    }
    match (expires, signature) {
        (None, None) => None,
        (e, s) => Some((e.unwrap_or_default(), s.unwrap_or_default())),
    }
}

/// Seconds since the epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A duration as `bifs url --expires` takes it: `90`, `90s`, `15m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 15m, 24h, 7d)"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_exactly_its_path_and_expires() {
        let s = Signer::from_token(b"0123456789abcdef-token");
        let sig = s.sign("/views/raw/a.img", 2000);
        assert!(!sig.contains("0123456789abcdef"));
        assert_eq!(s.verify("/views/raw/a.img", "2000", &sig, 1999), Ok(()));
        assert_eq!(
            s.verify("/views/raw/a.img", "2000", &sig, 2000),
            Err(SignatureError::Expired(2000))
        );
        for other in [
            "/views/raw/b.img",
            "/views/raw/a.img.sha512",
            "/views/raw/a.im",
            "/views/ignore/a.img",
        ] {
            assert_eq!(
                s.verify(other, "2000", &sig, 10),
                Err(SignatureError::Mismatch),
                "{other}"
            );
        }
        // A later expiry under the same signature is a mismatch, not an extension.
        assert_eq!(
            s.verify("/views/raw/a.img", "3000", &sig, 10),
            Err(SignatureError::Mismatch)
        );
        // Another token's signer does not accept it.
        let t = Signer::from_token(b"another-token-0123456789");
        assert_eq!(
            t.verify("/views/raw/a.img", "2000", &sig, 10),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify("/views/raw/a.img", "x", &sig, 10),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn query_and_durations() {
        assert_eq!(
            signature_params("expires=5&signature=ab"),
            Some(("5".into(), "ab".into()))
        );
        assert_eq!(signature_params("x=1"), None);
        assert_eq!(
            signature_params("signature=ab"),
            Some((String::new(), "ab".into()))
        );
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("").is_err());
    }
}
