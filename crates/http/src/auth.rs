//! The access policy: a bearer token (optional) and `--public-read`.

use std::fmt;
use std::io;
use std::path::Path;

use axum::http::{header, HeaderMap, StatusCode};
use zeroize::Zeroizing;

use super::HttpError;

/// What a request wants to do (see the module doc of [`crate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `encrypt/` and `ignore/` views, listings, status.
    Read,
    /// `decrypt/` and `raw/` views: the plaintext of a disk.
    Plaintext,
    /// Create, delete, upload.
    Write,
}

/// The shared secret of `--token-file`. Wiped on drop, never printed.
pub struct Token(Zeroizing<String>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Shortest token accepted: guessing must not be an option over the network.
pub const MIN_TOKEN_LEN: usize = 16;

impl Token {
    /// The file's content without surrounding whitespace (a trailing newline is usual).
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        Self::new(text.trim())
    }

    pub fn new(token: &str) -> io::Result<Self> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the token must be printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        Ok(Self(Zeroizing::new(token.to_owned())))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        bifs_core::keys::ct_eq(self.0.as_bytes(), presented)
    }

    /// The signer of URLs for this token (its key is derived from the token, see
    /// [`crate::signed`]).
    pub fn signer(&self) -> crate::signed::Signer {
        crate::signed::Signer::from_token(self.0.as_bytes())
    }
}

/// Who may do what.
#[derive(Debug)]
pub struct Policy {
    pub token: Option<Token>,
    pub public_read: bool,
}

impl Policy {
    pub fn check(&self, headers: &HeaderMap, access: Access) -> Result<(), HttpError> {
        let Some(token) = &self.token else {
            // No token: the server is bound to loopback only (checked at bind time).
            return Ok(());
        };
        if access == Access::Read && self.public_read {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        match presented {
            Some(p) if token.matches(p) => Ok(()),
            Some(_) => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "the bearer token is wrong",
            )),
            None => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                match access {
                    Access::Read => "reading needs the bearer token (Authorization: Bearer ...); the server was not started with --public-read",
                    Access::Plaintext => "plaintext views (decrypt/, raw/) need the bearer token (Authorization: Bearer ...)",
                    Access::Write => "changes need the bearer token (Authorization: Bearer ...)",
                },
            )),
        }
    }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn no_token_allows_everything() {
        let p = Policy {
            token: None,
            public_read: false,
        };
        for a in [Access::Read, Access::Plaintext, Access::Write] {
            assert!(p.check(&headers(None), a).is_ok());
        }
    }

    #[test]
    fn token_guards_by_access() {
        let tok = "0123456789abcdefXYZ";
        for public_read in [false, true] {
            let p = Policy {
                token: Some(Token::new(tok).unwrap()),
                public_read,
            };
            let good = headers(Some(&format!("bearer {tok}")));
            let bad = headers(Some("Bearer 0123456789abcdefXYy"));
            for a in [Access::Read, Access::Plaintext, Access::Write] {
                assert!(p.check(&good, a).is_ok());
                let open = public_read && a == Access::Read;
                match p.check(&bad, a) {
                    Ok(()) => assert!(open, "{a:?}: a wrong token passed"),
                    Err(e) => assert_eq!(e.status, StatusCode::UNAUTHORIZED),
                }
                let anon = p.check(&headers(None), a);
                assert_eq!(anon.is_ok(), public_read && a == Access::Read, "{a:?}");
            }
        }
    }

    #[test]
    fn short_or_spaced_tokens_refused() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789 abcdefgh").is_err());
    }
}
