//! `bifs url`: a signed URL of a view, for a client that sends no header (Longhorn's download
//! client sends none of its own). See `bifs_http::signed` for what is signed and how.

use std::path::PathBuf;

use anyhow::{bail, Context};

use bifs_http::signed::{parse_duration, unix_now, DEFAULT_EXPIRY};
use bifs_http::Token;

#[derive(clap::Args, Debug)]
pub struct UrlArgs {
    /// How long the URL stays valid: 90s, 15m, 24h, 7d (default 24h: a day of Longhorn's
    /// retries, which come 1-5 minutes apart).
    #[arg(long, value_name = "DURATION")]
    expires: Option<String>,
    /// The server's token file (the same as its --token-file).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// The server's base URL, for a URL given as a path (/views/...).
    #[arg(long, env = "BIFS_ADVERTISE_URL", value_name = "URL")]
    advertise_url: Option<String>,
    /// The view's URL (http://NODE:8080/views/raw/IMAGE), or its path with --advertise-url.
    url: String,
}

pub fn run(args: &UrlArgs) -> anyhow::Result<()> {
    let token = Token::from_file(&args.token_file)
        .with_context(|| format!("reading the token from {}", args.token_file.display()))?;
    let ttl = match &args.expires {
        Some(e) => parse_duration(e).map_err(anyhow::Error::msg)?,
        None => DEFAULT_EXPIRY,
    };
    if ttl.is_zero() {
        bail!("--expires must be more than 0");
    }
    let (base, path) = split_url(&args.url, args.advertise_url.as_deref())?;
    let expires = unix_now() + ttl.as_secs();
    let signed = token.signer().sign_path(&path, expires);
    eprintln!(
        "bifs url: {path} signed for {} s (until UNIX time {expires}); anyone with this URL can read that view until then",
        ttl.as_secs()
    );
    super::outln!("{base}{signed}")?;
    Ok(())
}

/// `(scheme://host[:port], /path)` of a view's URL, or of a path with `advertise`.
fn split_url(url: &str, advertise: Option<&str>) -> anyhow::Result<(String, String)> {
    if url.contains(['?', '#']) {
        bail!("{url:?}: a view's URL has no query or fragment");
    }
    let (base, path) = if url.starts_with('/') {
        let Some(a) = advertise else {
            bail!("{url:?} is a path: give the server's base URL with --advertise-url (or BIFS_ADVERTISE_URL)");
        };
        (super::serve::check_base_url(a)?, url.to_string())
    } else {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{url:?} is not a URL (http://NODE:PORT/views/...)");
        };
        let slash = rest.find('/').unwrap_or(rest.len());
        let (host, path) = rest.split_at(slash);
        (
            super::serve::check_base_url(&format!("{scheme}://{host}"))?,
            path.to_string(),
        )
    };
    if !path.starts_with("/views/") {
        bail!("{url:?} is not a view's URL (its path starts with /views/)");
    }
    Ok((base, path))
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_and_paths() {
        assert_eq!(
            split_url("http://10.0.0.1:8080/views/raw/a.img", None).unwrap(),
            ("http://10.0.0.1:8080".into(), "/views/raw/a.img".into())
        );
        assert_eq!(
            split_url("/views/raw/a.img", Some("http://n:1/")).unwrap(),
            ("http://n:1".into(), "/views/raw/a.img".into())
        );
        assert!(split_url("/views/raw/a.img", None).is_err());
        assert!(split_url("http://n/other", None).is_err());
        assert!(split_url("http://n/views/raw/a?x=1", None).is_err());
        assert!(split_url("ftp://n/views/raw/a", None).is_err());
    }
}
