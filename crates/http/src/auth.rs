//! The access policy: a bearer token (optional) and `--public-read`.

use std::fmt;
use std::io;
use std::path::Path;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use zeroize::Zeroizing;

use super::HttpError;

/// What a request wants to do (see the module doc of [`crate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `encrypt/` views, `ignore/` views of LUKS images (ciphertext), listings, status.
    Read,
    /// `decrypt/` and `raw/` views, and `ignore/` views of images that are not LUKS: the
    /// plaintext of a disk.
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

/// The refusal of a plaintext view without the token.
pub const PLAINTEXT_NEEDS_TOKEN: &str = "plaintext views (decrypt/, raw/, and ignore/ of an image that is not LUKS) need the bearer token (Authorization: Bearer ...)";

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
                    Access::Plaintext => PLAINTEXT_NEEDS_TOKEN,
                    Access::Write => "changes need the bearer token (Authorization: Bearer ...)",
                },
            )),
        }
    }
}

/// Why a request is refused while the server runs without a token (loopback only, where every
/// request is otherwise allowed): what stops a web page in the user's browser from driving the
/// server, by a cross-site request or through DNS rebinding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalOnly {
    /// The request names another host (`Host`, or HTTP/2's `:authority`): a DNS-rebinding
    /// page's requests name the page's own host.
    #[error(
        "Host {0:?} is not this server: without --token-file it answers only requests addressed \
         to a loopback name (localhost, 127.0.0.1, [::1], any port)"
    )]
    Host(String),
    /// A page of another origin sent it (browsers add `Origin` to cross-site requests).
    #[error(
        "Origin {0:?} is not this server's: without --token-file it answers only pages of a \
         loopback origin (localhost, 127.0.0.1, [::1]); cross-site requests are refused"
    )]
    Origin(String),
    /// A manifest not sent as JSON or YAML: a cross-site form or `text/plain` request needs
    /// no preflight, so the body must carry a type a browser sends only after one.
    #[error(
        "Content-Type {0:?}: without --token-file a manifest must be sent as application/json \
         or application/yaml (a type a browser only sends to another site after a CORS \
         preflight, which this server never grants)"
    )]
    ContentType(String),
}

impl From<LocalOnly> for HttpError {
    fn from(e: LocalOnly) -> Self {
        let status = match e {
            LocalOnly::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            LocalOnly::Origin(_) => StatusCode::FORBIDDEN,
            LocalOnly::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        HttpError::new(status, e.to_string())
    }
}

/// Whether `authority` (`host[:port]`) names this machine's loopback: `localhost`, an address
/// of 127.0.0.0/8 or `[::1]`, with any port.
pub fn loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once(']') else {
            return false;
        };
        if !port_part(port) {
            return false;
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port_part(&format!(":{port}")) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `""` or `:` and digits.
fn port_part(s: &str) -> bool {
    s.is_empty()
        || s.strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether an `Origin` value is a loopback origin: `http(s)://` and a loopback authority.
fn loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(loopback_authority)
}

impl Policy {
    /// Without a token: the request must name a loopback host and, when a browser says which
    /// page sent it, come from a loopback origin. With a token: nothing to check here (a
    /// token travels only in a header, which no page of another site can make a browser
    /// send without a preflight).
    pub fn check_local(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), LocalOnly> {
        if self.token.is_some() {
            return Ok(());
        }
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`. A request
        // without either (HTTP/1.0) comes from no browser.
        let host = match uri.authority() {
            Some(a) => Some(a.as_str().to_owned()),
            None => headers
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        };
        if let Some(h) = host {
            if !loopback_authority(h.trim()) {
                return Err(LocalOnly::Host(h));
            }
        }
        if let Some(o) = headers.get(header::ORIGIN) {
            let o = String::from_utf8_lossy(o.as_bytes()).into_owned();
            if !loopback_origin(o.trim()) {
                return Err(LocalOnly::Origin(o));
            }
        }
        Ok(())
    }

    /// Without a token, a manifest's body must say it is JSON or YAML (`application/json`,
    /// `application/yaml`, `application/x-yaml`, `text/yaml`, with or without parameters).
    pub fn check_manifest_type(&self, headers: &HeaderMap) -> Result<(), LocalOnly> {
        if self.token.is_some() {
            return Ok(());
        }
        let value = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if MANIFEST_TYPES.contains(&essence.as_str()) {
            Ok(())
        } else {
            Err(LocalOnly::ContentType(value))
        }
    }
}

/// The media types of a manifest's body (docs/serve.md).
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
];

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
    fn loopback_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:443",
        ] {
            assert!(loopback_authority(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:80",
            "[::2]:80",
            "[::1]x",
            "localhost:",
            "localhost:80:80",
            "",
        ] {
            assert!(!loopback_authority(bad), "{bad}");
        }
        assert!(loopback_origin("http://127.0.0.1:9000"));
        assert!(!loopback_origin("null"));
        assert!(!loopback_origin("http://attacker.example"));
        assert!(!loopback_origin("file://127.0.0.1"));
    }

    #[test]
    fn local_only_without_a_token() {
        let open = Policy {
            token: None,
            public_read: false,
        };
        let req = |fields: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in fields {
                h.insert(k.clone(), v.parse().unwrap());
            }
            h
        };
        let uri: Uri = "/api/v1/backingimages".parse().unwrap();
        let local = req(&[(header::HOST, "127.0.0.1:8080")]);
        assert_eq!(open.check_local(&uri, &local), Ok(()));
        assert_eq!(open.check_local(&uri, &HeaderMap::new()), Ok(()));
        let foreign = req(&[(header::HOST, "attacker.example")]);
        assert!(matches!(
            open.check_local(&uri, &foreign),
            Err(LocalOnly::Host(_))
        ));
        let h2: Uri = "http://attacker.example/x".parse().unwrap();
        assert!(matches!(
            open.check_local(&h2, &local),
            Err(LocalOnly::Host(_))
        ));
        let cross = req(&[
            (header::HOST, "localhost:1"),
            (header::ORIGIN, "http://attacker.example"),
        ]);
        assert!(matches!(
            open.check_local(&uri, &cross),
            Err(LocalOnly::Origin(_))
        ));
        let same = req(&[
            (header::HOST, "localhost:1"),
            (header::ORIGIN, "http://localhost:1"),
        ]);
        assert_eq!(open.check_local(&uri, &same), Ok(()));
        for (ct, ok) in [
            ("application/json", true),
            ("application/yaml; charset=utf-8", true),
            ("Application/JSON", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            let h = req(&[(header::CONTENT_TYPE, ct)]);
            assert_eq!(open.check_manifest_type(&h).is_ok(), ok, "{ct}");
        }
        assert!(open.check_manifest_type(&HeaderMap::new()).is_err());
        // With a token none of this applies (the token is what guards).
        let guarded = Policy {
            token: Some(Token::new("0123456789abcdefXYZ").unwrap()),
            public_read: false,
        };
        assert_eq!(guarded.check_local(&uri, &foreign), Ok(()));
        assert_eq!(guarded.check_manifest_type(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn short_or_spaced_tokens_refused() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789 abcdefgh").is_err());
    }
}
