//! Conditional requests (RFC 9110 section 13) and the validators every GET/HEAD answer of the
//! server carries: views, their `.sha512`, the page and its assets, the API's lists.
//!
//! The header fields are parsed and compared by the `headers` crate (typed `IfMatch`,
//! `IfNoneMatch`, `IfModifiedSince`, `IfUnmodifiedSince`, `ETag`); this module only keeps the
//! RFC's order of evaluation (13.2.2), which the crate leaves to its user.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::body::Body;
use bytes::Bytes;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfUnmodifiedSince};
use sha2::Digest;

/// What the preconditions of a GET or HEAD say (RFC 9110 13.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Answer the request as if it had none.
    Proceed,
    /// 304: the client's copy is current (If-None-Match, else If-Modified-Since).
    NotModified,
    /// 412: If-Match or If-Unmodified-Since is false.
    Failed,
}

/// The preconditions of a GET/HEAD of a representation whose validators are `etag` (a strong
/// entity tag as sent, quotes included) and `modified` (its Last-Modified), in the order of
/// RFC 9110 13.2.2. A field that does not parse is ignored (13.1.1-13.1.4 say so for dates; a
/// malformed entity-tag list matches nothing the server sent either).
pub fn evaluate(
    headers: &HeaderMap,
    etag: Option<&str>,
    modified: Option<SystemTime>,
) -> Precondition {
    let etag: Option<ETag> = etag.and_then(|e| e.parse().ok());
    // Step 1: If-Match (strong comparison; `*` holds for any current representation).
    if let Some(im) = headers.typed_get::<IfMatch>() {
        let holds = match &etag {
            Some(e) => im.precondition_passes(e),
            None => im.is_any(),
        };
        if !holds {
            return Precondition::Failed;
        }
    } else if let (Some(ius), Some(m)) = (headers.typed_get::<IfUnmodifiedSince>(), modified) {
        // Step 2: If-Unmodified-Since, only without If-Match.
        if !ius.precondition_passes(m) {
            return Precondition::Failed;
        }
    }
    // Step 3: If-None-Match (weak comparison; `*` matches any current representation).
    if let Some(inm) = headers.typed_get::<IfNoneMatch>() {
        let matched = match &etag {
            Some(e) => !inm.precondition_passes(e),
            None => inm == IfNoneMatch::any(),
        };
        return if matched {
            Precondition::NotModified
        } else {
            Precondition::Proceed
        };
    }
    // Step 4: If-Modified-Since, only without If-None-Match.
    if let (Some(ims), Some(m)) = (headers.typed_get::<IfModifiedSince>(), modified) {
        if !ims.is_modified(m) {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// The answer to a request whose preconditions stop it, with the validator and cache headers
/// a 200 would carry (RFC 9110 15.4.5: a 304 repeats ETag, Cache-Control, and so on).
pub fn stopped(p: Precondition, validators: HeaderMap) -> Option<Response> {
    match p {
        Precondition::Proceed => None,
        // A body of unknown length: axum would add `Content-Length: 0` to an empty one, which a
        // 304 must not carry unless it is the 200's length (RFC 9110 8.6); hyper sends none.
        Precondition::NotModified => Some(
            (
                StatusCode::NOT_MODIFIED,
                validators,
                Body::from_stream(futures_util::stream::empty::<Result<Bytes, Infallible>>()),
            )
                .into_response(),
        ),
        Precondition::Failed => Some(
            (
                StatusCode::PRECONDITION_FAILED,
                validators,
                "precondition failed: the representation is not the one the request names\n",
            )
                .into_response(),
        ),
    }
}

/// A strong entity tag for fixed bytes: the first 128 bits of their SHA-256, quoted.
pub fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(bytes)[..16]))
}

/// `Cache-Control: no-cache`: any cache may keep the answer but must ask again before using it
/// (RFC 9111 5.2.2.4), which a validator makes cheap (a 304). Views, checksums, the page and
/// the API's answers all change whenever the store, a Secret or the binary does, so none has a
/// freshness lifetime of its own.
pub const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// Sends `body` (fixed bytes with the strong ETag `etag`) or a 304/412, as the request's
/// preconditions say, with `Cache-Control: no-cache`.
pub fn fixed(
    request: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    body: impl IntoResponse,
) -> Response {
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, v);
    }
    out.insert(header::CACHE_CONTROL, REVALIDATE);
    if let Some(r) = stopped(evaluate(request, Some(etag), None), out.clone()) {
        return r;
    }
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (StatusCode::OK, out, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn req(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TAG: &str = "\"abc\"";

    #[test]
    fn order_of_rfc_9110() {
        use Precondition::*;
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let m = Some(t);
        let e = Some(TAG);
        assert_eq!(evaluate(&req(&[]), e, m), Proceed);
        // If-None-Match: weak comparison, `*`, lists.
        assert_eq!(evaluate(&req(&[("if-none-match", TAG)]), e, m), NotModified);
        assert_eq!(
            evaluate(&req(&[("if-none-match", "W/\"abc\"")]), e, m),
            NotModified
        );
        assert_eq!(
            evaluate(&req(&[("if-none-match", "\"x\", \"abc\"")]), e, m),
            NotModified
        );
        assert_eq!(evaluate(&req(&[("if-none-match", "*")]), e, m), NotModified);
        assert_eq!(
            evaluate(&req(&[("if-none-match", "\"abd\"")]), e, m),
            Proceed
        );
        // If-Modified-Since: seconds, ignored beside If-None-Match and when malformed.
        assert_eq!(
            evaluate(&req(&[("if-modified-since", &at(1_700_000_000))]), e, m),
            NotModified
        );
        assert_eq!(
            evaluate(&req(&[("if-modified-since", &at(1_700_000_100))]), e, m),
            NotModified
        );
        assert_eq!(
            evaluate(&req(&[("if-modified-since", &at(1_699_999_999))]), e, m),
            Proceed
        );
        assert_eq!(
            evaluate(&req(&[("if-modified-since", "yesterday")]), e, m),
            Proceed
        );
        assert_eq!(
            evaluate(
                &req(&[
                    ("if-none-match", "\"old\""),
                    ("if-modified-since", &at(1_700_000_000))
                ]),
                e,
                m
            ),
            Proceed
        );
        assert_eq!(
            evaluate(&req(&[("if-modified-since", &at(1_700_000_000))]), e, None),
            Proceed
        );
        // If-Match: strong comparison; If-Unmodified-Since only without it.
        assert_eq!(evaluate(&req(&[("if-match", TAG)]), e, m), Proceed);
        assert_eq!(evaluate(&req(&[("if-match", "*")]), e, m), Proceed);
        assert_eq!(evaluate(&req(&[("if-match", "W/\"abc\"")]), e, m), Failed);
        assert_eq!(evaluate(&req(&[("if-match", "\"old\"")]), e, m), Failed);
        assert_eq!(evaluate(&req(&[("if-match", "\"old\"")]), None, m), Failed);
        assert_eq!(
            evaluate(&req(&[("if-unmodified-since", &at(1_699_999_999))]), e, m),
            Failed
        );
        assert_eq!(
            evaluate(&req(&[("if-unmodified-since", &at(1_700_000_000))]), e, m),
            Proceed
        );
        assert_eq!(
            evaluate(
                &req(&[("if-match", TAG), ("if-unmodified-since", &at(1))]),
                e,
                m
            ),
            Proceed
        );
        // 412 before 304.
        assert_eq!(
            evaluate(
                &req(&[("if-match", "\"old\""), ("if-none-match", TAG)]),
                e,
                m
            ),
            Failed
        );
    }

    #[test]
    fn fixed_bytes() {
        let tag = etag_of(b"page");
        assert_eq!(tag.len(), 34);
        let r = fixed(&req(&[]), &tag, "text/plain", "page");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ETAG], tag.as_str());
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        let r = fixed(&req(&[("if-none-match", &tag)]), &tag, "text/plain", "page");
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(r.headers()[header::ETAG], tag.as_str());
        let r = fixed(&req(&[("if-match", "\"x\"")]), &tag, "text/plain", "page");
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    }
}
