//! `bifs verify`: CLI glue around [`bifs_verify`]; picks the exit code.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::SecretArgs;
use bifs_core::kdf::KdfLimits;
use bifs_verify::{Method, VerifyError, VerifyOptions};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    secret: SecretArgs,
    /// Compare the plaintext with this image's raw content (qcow2 flattened); without it, only
    /// its SHA-512 is printed.
    #[arg(long, value_name = "SOURCE")]
    against: Option<PathBuf>,
    /// How to read the plaintext: dm-crypt where available (auto), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    method: MethodArg,
    /// The LUKS image to check.
    image: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum MethodArg {
    Auto,
    DmCrypt,
    Xts,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let params = super::crypt::load_params(&args.secret)?;
    // Ctrl-C or SIGTERM set the flag instead of killing us, so a dm-crypt mapping is always
    // removed by its guard on the way out.
    let cancel = bifs_node::signals::stop_flag();
    let opts = VerifyOptions {
        image: &args.image,
        against: args.against.as_deref(),
        passphrase: &params.luks.passphrase,
        method: match args.method {
            MethodArg::Auto => Method::Auto,
            MethodArg::DmCrypt => Method::DmCrypt,
            MethodArg::Xts => Method::Xts,
        },
        limits: KdfLimits::default(),
    };
    let mut stdout = std::io::stdout().lock();
    let report = match bifs_verify::verify(&opts, &cancel, &mut stdout) {
        Err(VerifyError::Interrupted) => return Err(super::Interrupted.into()),
        other => other.with_context(|| {
            format!(
                "verifying {} with Secret {}",
                args.image.display(),
                params.secret
            )
        })?,
    };
    match &report.outcome.mismatch {
        None => {
            super::outln!("result: OK ({})", report.method.name())?;
            Ok(())
        }
        Some(m) => {
            super::outln!("result: FAILED ({})", report.method.name())?;
            bail!("verification failed: {m}")
        }
    }
}
