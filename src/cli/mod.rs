//! The `bifs` command line: argument parsing, logging, exit codes. Each command is a thin
//! routing of arguments to the engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
mod copy;
mod crypt;
mod inspect;
mod logfmt;
mod mount;
mod serve;
mod url;
mod verify;

use copy::Interrupted;

#[derive(Parser)]
#[command(
    name = "bifs",
    version,
    about = "Clone disk images as-is, into LUKS2 or out of LUKS2, keyed by Kubernetes Secrets"
)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `debug` or `bifs=trace`); also from BIFS_LOG.
    #[arg(long, global = true, env = "BIFS_LOG", default_value = "info")]
    log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Refuse LUKS keyslots whose Argon2 asks for more memory than this (KiB) when unlocking.
    /// Default: cryptsetup's ceiling, 4194304 (4 GiB). A node may want less: a hostile image
    /// could otherwise make every unlock allocate 4 GiB.
    #[arg(long, global = true, env = "BIFS_MAX_KDF_MEMORY", value_name = "KIB",
          value_parser = clap::value_parser!(u32).range(32..))]
    max_kdf_memory: Option<u32>,
    /// Refuse PBKDF2 keyslots and volume key digests of more iterations than this when
    /// unlocking. Default 1073741824 (2^30: minutes of work; cryptsetup allows 2^32).
    #[arg(long, global = true, env = "BIFS_MAX_KDF_ITERATIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1000..))]
    max_kdf_iterations: Option<u32>,
    /// Refuse Argon2 keyslots of more passes than this when unlocking. Default 1000.
    #[arg(long, global = true, env = "BIFS_MAX_KDF_TIME", value_name = "N",
          value_parser = clap::value_parser!(u32).range(4..))]
    max_kdf_time: Option<u32>,
    /// Keyslots one unlock tries (each a key derivation) before giving up. Default 32
    /// (cryptsetup's maximum: it tries them all).
    #[arg(long, global = true, env = "BIFS_MAX_KDF_KEYSLOTS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=32))]
    max_kdf_keyslots: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// Where the Secret comes from: a manifest file or directory, and which Secret in it.
#[derive(clap::Args, Debug)]
pub struct SecretArgs {
    /// Kubernetes Secret manifest (file or directory) with the CRYPTO_* keys.
    #[arg(long, value_name = "SECRET.yaml")]
    secret: PathBuf,
    /// Which Secret, as NAMESPACE/NAME, when the manifest holds several.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    secret_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a LUKS2 image of SRC's raw content (qcow2 flattened) to DST.
    Encrypt {
        #[command(flatten)]
        secret: SecretArgs,
        /// Data sector size; default 4096 when the data size allows it, else 512 (as cryptsetup).
        #[arg(long, value_parser = ["512", "1024", "2048", "4096"])]
        sector_size: Option<String>,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Print DST's SHA-512 (computed while writing, no second pass).
        #[arg(long)]
        sha512: bool,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Write the plaintext of LUKS image SRC's data segment to DST (holes kept).
    Decrypt {
        #[command(flatten)]
        secret: SecretArgs,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Print DST's SHA-512 (computed while writing, no second pass).
        #[arg(long)]
        sha512: bool,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Create the BackingImages of Longhorn manifests in a store (a Longhorn disk directory).
    Apply {
        /// Manifest file or directory (BackingImage and Secret documents); repeatable.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE_OR_DIR",
            required = true
        )]
        files: Vec<PathBuf>,
        /// The store: a Longhorn disk directory (holds backing-images/).
        #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
        store: PathBuf,
        /// More Secret manifests (file or directory); repeatable.
        #[arg(long, value_name = "PATH")]
        secrets: Vec<PathBuf>,
    },
    /// List backing images of a store with their status, or show one.
    Get {
        name: Option<String>,
        #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
        store: PathBuf,
        /// Print BackingImage objects with their status.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<apply::Output>,
        /// Follow changes until every image shown is ready or failed.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Delete a backing image from a store (its directory and its record).
    Delete {
        name: String,
        #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
        store: PathBuf,
    },
    /// Write SRC (LUKS) to DST with a new LUKS2 header for NEW's passphrase around the same
    /// volume key; the encrypted data is copied unchanged.
    Rekey {
        /// The Secret that opens SRC now.
        #[arg(long, value_name = "OLD.yaml")]
        secret: PathBuf,
        /// Which Secret in --secret, as NAMESPACE/NAME.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        secret_name: Option<String>,
        /// The Secret that will open DST.
        #[arg(long, value_name = "NEW.yaml")]
        new_secret: PathBuf,
        /// Which Secret in --new-secret, as NAMESPACE/NAME.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        new_secret_name: Option<String>,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Print DST's SHA-512 (computed while writing, no second pass).
        #[arg(long)]
        sha512: bool,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Show an image's format, sizes and, for LUKS, its header.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        image: PathBuf,
    },
    /// Mount a store: ignore/, raw/, encrypt/NS/SECRET/, decrypt/NS/SECRET/ views of every image
    /// (foreground; SIGINT/SIGTERM unmounts).
    Mount(mount::MountArgs),
    /// Serve the views over HTTP (GET/HEAD with ranges, ETag, SHA-512), for Longhorn's
    /// `sourceType: download` and for browsers (foreground; SIGINT/SIGTERM stops).
    Serve(serve::ServeArgs),
    /// Unmount a bifs mount (fusermount3 -u).
    Umount { mountpoint: PathBuf },
    /// Print a signed URL of a view (its last line): what a client without headers
    /// (Longhorn's downloader) uses for a view that needs the token.
    Url(url::UrlArgs),
    /// Check a LUKS image with libcryptsetup (and dm-crypt where available) against SOURCE.
    Verify(verify::VerifyArgs),
}

fn init_logging(filter: &str, json: bool) {
    // fuser warns when the mount was already taken down by `fusermount3 -u` (our own
    // `bifs umount`): noise for the user, so its logs start at error unless asked for.
    let filter = if filter.contains("fuser") {
        filter.to_string()
    } else {
        format!("{filter},fuser=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        // Names and messages escaped: a file name cannot forge a log line (logfmt).
        builder
            .with_target(false)
            .fmt_fields(logfmt::fields())
            .init();
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    // Before anything holds a key (after logging, so its warnings are seen): no core dumps,
    // no ptrace by other users.
    bifs_core::keys::harden_process();
    {
        let ceiling = bifs_core::kdf::KdfLimits::cryptsetup();
        let limits = bifs_core::kdf::KdfLimits {
            max_argon2_memory_kib: cli
                .max_kdf_memory
                .unwrap_or(ceiling.max_argon2_memory_kib)
                .min(ceiling.max_argon2_memory_kib),
            max_argon2_time: cli
                .max_kdf_time
                .unwrap_or(ceiling.max_argon2_time)
                .min(ceiling.max_argon2_time),
            max_pbkdf2_iterations: cli
                .max_kdf_iterations
                .unwrap_or(ceiling.max_pbkdf2_iterations)
                .min(ceiling.max_pbkdf2_iterations),
            max_keyslots: cli
                .max_kdf_keyslots
                .unwrap_or(ceiling.max_keyslots)
                .min(ceiling.max_keyslots),
            ..ceiling
        };
        if limits != ceiling {
            bifs_core::kdf::KdfLimits::set_process_default(limits);
            tracing::debug!(?limits, "key derivation limits lowered");
        }
    }
    let result = match cli.command {
        Command::Encrypt {
            secret,
            sector_size,
            force,
            sha512,
            src,
            dst,
        } => {
            let sector_size = sector_size.and_then(|s| s.parse().ok());
            crypt::encrypt(&secret, sector_size, force, sha512, &src, &dst)
        }
        Command::Decrypt {
            secret,
            force,
            sha512,
            src,
            dst,
        } => crypt::decrypt(&secret, force, sha512, &src, &dst),
        Command::Inspect { json, image } => inspect::run(&image, json),
        Command::Apply {
            files,
            store,
            secrets,
        } => apply::apply(&files, &store, &secrets),
        Command::Get {
            name,
            store,
            output,
            watch,
        } => apply::get(&store, name.as_deref(), output, watch),
        Command::Delete { name, store } => apply::delete(&store, &name),
        Command::Rekey {
            secret,
            secret_name,
            new_secret,
            new_secret_name,
            force,
            sha512,
            src,
            dst,
        } => apply::rekey(&apply::RekeyArgs {
            secret: &secret,
            secret_name: secret_name.as_deref(),
            new_secret: &new_secret,
            new_secret_name: new_secret_name.as_deref(),
            force,
            sha512,
            src: &src,
            dst: &dst,
        }),
        Command::Mount(args) => mount::mount(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Umount { mountpoint } => mount::umount(&mountpoint),
        Command::Url(args) => url::run(&args),
        Command::Verify(args) => verify::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("bifs: interrupted; nothing was left at the destination");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("bifs: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one line, `outer: cause: root`. Typed errors often already print
/// their cause (`"unsupported LUKS header: {0}"` with `#[from]`), so a cause whose text the line
/// already ends with is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("cipher \"x\"")]
        Cipher,
    }
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("unsupported LUKS header: {0}")]
        Unsupported(#[from] Inner),
    }

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        let e = anyhow::Error::from(Outer::from(Inner::Cipher)).context("decrypting img");
        assert_eq!(
            error_chain(&e),
            "decrypting img: unsupported LUKS header: cipher \"x\""
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_chain(&plain), "top: middle: root");
    }
}
