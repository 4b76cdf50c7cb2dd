//! The `bifs` command line: argument parsing, logging, exit codes. Each command is a thin
//! routing of arguments to the engine. The clap definitions here are also the source of the
//! shell completions and the man page (`bifs completions`, `bifs man`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
mod copy;
mod crypt;
mod docs;
mod inspect;
mod kdf_report;
mod logfmt;
mod mount;
mod serve;
mod table;
mod url;
mod verify;

use copy::Interrupted;

/// The heading of the options every subcommand takes (listed once, apart from its own).
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "bifs",
    version,
    about = "Clone disk images as-is, into LUKS2 or out of LUKS2, keyed by Kubernetes Secrets",
    after_help = "Examples:
  bifs encrypt --secret crypto.yaml disk.qcow2 disk.luks
  bifs apply -f backing-images.yaml --store /var/lib/longhorn
  bifs get --store /var/lib/longhorn -o wide
  bifs mount --store /var/lib/longhorn --secrets /etc/bifs/secrets /mnt/bifs

Each command's own help: bifs help COMMAND. Shell completions: bifs completions SHELL.
The manual: bifs man | man -l -"
)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `debug` or `bifs=trace`); also from BIFS_LOG.
    #[arg(long, global = true, env = "BIFS_LOG", default_value = "info", help_heading = GLOBAL)]
    log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, global = true, help_heading = GLOBAL)]
    log_json: bool,
    /// Refuse LUKS keyslots whose Argon2 asks for more memory than this (KiB) when unlocking.
    /// Default: cryptsetup's ceiling, 4194304 (4 GiB). A node may want less: a hostile image
    /// could otherwise make every unlock allocate 4 GiB.
    #[arg(long, global = true, env = "BIFS_MAX_KDF_MEMORY", value_name = "KIB",
          value_parser = clap::value_parser!(u32).range(32..), help_heading = GLOBAL)]
    max_kdf_memory: Option<u32>,
    /// Refuse PBKDF2 keyslots and volume key digests of more iterations than this when
    /// unlocking. Default 1073741824 (2^30: minutes of work; cryptsetup allows 2^32).
    #[arg(long, global = true, env = "BIFS_MAX_KDF_ITERATIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1000..), help_heading = GLOBAL)]
    max_kdf_iterations: Option<u32>,
    /// Refuse Argon2 keyslots of more passes than this when unlocking. Default 1000.
    #[arg(long, global = true, env = "BIFS_MAX_KDF_TIME", value_name = "N",
          value_parser = clap::value_parser!(u32).range(4..), help_heading = GLOBAL)]
    max_kdf_time: Option<u32>,
    /// Keyslots one unlock tries (each a key derivation) before giving up. Default 32
    /// (cryptsetup's maximum: it tries them all).
    #[arg(long, global = true, env = "BIFS_MAX_KDF_KEYSLOTS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=32), help_heading = GLOBAL)]
    max_kdf_keyslots: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// Where the Secret comes from: a manifest file or directory, and which Secret in it.
#[derive(clap::Args, Debug)]
pub struct SecretArgs {
    /// Kubernetes Secret manifest (file or directory) with the CRYPTO_* keys; `--secrets` is
    /// the same option (as `apply`, `mount` and `serve` spell it).
    #[arg(long, visible_alias = "secrets", value_name = "SECRET.yaml")]
    secret: PathBuf,
    /// Which Secret, as NAMESPACE/NAME, when the manifest holds several.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    secret_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a LUKS2 image of SRC's raw content (qcow2 flattened) to DST.
    #[command(after_help = "Examples:
  bifs encrypt --secret longhorn-crypto.yaml parrot.qcow2 parrot.luks
  bifs encrypt --secret secrets/ --secret-name longhorn-system/longhorn-crypto --sha512 a.raw a.luks
  cryptsetup open --test-passphrase parrot.luks   # opens with the Secret's CRYPTO_KEY_VALUE")]
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
        /// The image to encrypt: raw or qcow2 (flattened), not already LUKS.
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// The LUKS2 image to write (refused if it exists, unless --force).
        #[arg(value_name = "DST")]
        dst: PathBuf,
    },
    /// Write the plaintext of LUKS image SRC's data segment to DST (holes kept).
    #[command(after_help = "Examples:
  bifs decrypt --secret longhorn-crypto.yaml parrot.luks parrot.raw
  bifs decrypt --secrets secrets/ --secret-name longhorn-system/longhorn-crypto --force a.luks a.raw")]
    Decrypt {
        #[command(flatten)]
        secret: SecretArgs,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
        /// Print DST's SHA-512 (computed while writing, no second pass).
        #[arg(long)]
        sha512: bool,
        /// The LUKS1 or LUKS2 image to decrypt.
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// The raw image to write (refused if it exists, unless --force).
        #[arg(value_name = "DST")]
        dst: PathBuf,
    },
    /// Create the BackingImages of Longhorn manifests in a store (a Longhorn disk directory).
    #[command(after_help = "Examples:
  bifs apply -f parrot.yaml -f longhorn-crypto.yaml --store /var/lib/longhorn
  bifs apply -f manifests/ --secrets /etc/bifs/secrets --store /var/lib/longhorn
  bifs get -o yaml --store A | bifs apply -f - --store B --secrets secrets/

A refused manifest (a webhook rule, a changed spec) leaves nothing behind: its reason is
printed here and `bifs get` does not list it. A failed one (download error, wrong
passphrase, checksum mismatch) is recorded: `bifs get NAME` shows it as failed.")]
    Apply {
        /// Manifest file or directory (BackingImage and Secret documents, or a `kind: List` of
        /// them as `bifs get -o yaml` prints); `-` reads standard input; repeatable.
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
        /// More Secret manifests (file or directory); repeatable; `--secret` is the same option.
        #[arg(long, visible_alias = "secret", value_name = "PATH")]
        secrets: Vec<PathBuf>,
    },
    /// List backing images of a store with their status, or show some.
    #[command(after_help = "Examples:
  bifs get --store /var/lib/longhorn
  bifs get parrot parrot-cloned-encrypted -o wide --store /var/lib/longhorn
  bifs get -o name --store /var/lib/longhorn
  bifs get -w --store /var/lib/longhorn     # follow until every image is ready or failed
  bifs get -o yaml --store /var/lib/longhorn > all.yaml   # `bifs apply -f all.yaml` reads it back")]
    Get {
        /// Backing images to show (every one in the store when none is named).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// The store: a Longhorn disk directory, or a flat directory of images (listed as the
        /// files `bifs mount` shows; they have no BackingImage record).
        #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
        store: PathBuf,
        /// Output format (as kubectl): a table by default.
        #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
        output: Option<apply::Output>,
        /// Follow changes until every image shown is ready or failed.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Delete a backing image from a store (its directory and its record).
    #[command(after_help = "Examples:
  bifs delete parrot-cloned-encrypted --store /var/lib/longhorn")]
    Delete {
        /// The backing image to delete (refused while it is being applied or cloned from).
        #[arg(value_name = "NAME")]
        name: String,
        /// The store: a Longhorn disk directory.
        #[arg(long, env = "BIFS_STORE", value_name = "DIR")]
        store: PathBuf,
    },
    /// Write SRC (LUKS) to DST with a new LUKS2 header for NEW's passphrase around the same
    /// volume key; the encrypted data is copied unchanged.
    #[command(after_help = "Examples:
  bifs rekey --secret old-crypto.yaml --new-secret new-crypto.yaml parrot.luks parrot-new.luks")]
    Rekey {
        /// The Secret that opens SRC now; `--secrets` is the same option.
        #[arg(long, visible_alias = "secrets", value_name = "OLD.yaml")]
        secret: PathBuf,
        /// Which Secret in --secret, as NAMESPACE/NAME.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        secret_name: Option<String>,
        /// The Secret that will open DST; `--new-secrets` is the same option.
        #[arg(long, visible_alias = "new-secrets", value_name = "NEW.yaml")]
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
        /// The LUKS image that the old Secret opens.
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// The LUKS2 image to write (refused if it exists, unless --force).
        #[arg(value_name = "DST")]
        dst: PathBuf,
    },
    /// Show an image's format, sizes and, for LUKS, its header.
    #[command(after_help = "Examples:
  bifs inspect parrot.luks          # bifs's summary, then the header as `cryptsetup luksDump`
  bifs inspect --json parrot.qcow2")]
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The image file: raw, qcow2, LUKS1 or LUKS2.
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
    },
    /// Mount a store: ignore/, raw/, encrypt/NS/SECRET/, decrypt/NS/SECRET/ views of every image
    /// (foreground; SIGINT/SIGTERM unmounts).
    #[command(after_help = "Examples:
  bifs mount --store /var/lib/longhorn --secrets /etc/bifs/secrets /mnt/bifs
  cp /mnt/bifs/encrypt/longhorn-system/longhorn-crypto/parrot parrot.luks
  bifs umount /mnt/bifs")]
    Mount(mount::MountArgs),
    /// Serve the views over HTTP (GET/HEAD with ranges, ETag, SHA-512), for Longhorn's
    /// `sourceType: download` and for browsers (foreground; SIGINT/SIGTERM stops).
    #[command(after_help = "Examples:
  bifs serve --store /var/lib/longhorn --secrets /etc/bifs/secrets --listen 127.0.0.1:8080
  bifs serve --store /var/lib/longhorn --listen 0.0.0.0:8443 --token-file token \\
      --tls-cert tls.crt --tls-key tls.key")]
    Serve(serve::ServeArgs),
    /// Unmount a bifs mount (fusermount3 -u).
    #[command(after_help = "Examples:
  bifs umount /mnt/bifs")]
    Umount {
        /// The mount point of a running `bifs mount`.
        #[arg(value_name = "MOUNTPOINT")]
        mountpoint: PathBuf,
    },
    /// Print a signed URL of a view (its last line): what a client without headers
    /// (Longhorn's downloader) uses for a view that needs the token.
    #[command(after_help = "Examples:
  bifs url --token-file token http://10.0.0.5:8080/views/decrypt/longhorn-system/crypto/parrot
  bifs url --token-file token --expires 7d --advertise-url http://10.0.0.5:8080 /views/raw/parrot")]
    Url(url::UrlArgs),
    /// Check a LUKS image with libcryptsetup (and dm-crypt where available) against SOURCE.
    #[command(after_help = "Examples:
  bifs verify --secret longhorn-crypto.yaml --against parrot.qcow2 parrot.luks
  bifs verify --secret longhorn-crypto.yaml --method xts parrot.luks   # prints the plaintext's SHA-512")]
    Verify(verify::VerifyArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  bifs completions bash > /etc/bash_completion.d/bifs
  bifs completions zsh > \"${fpath[1]}/_bifs\"
  bifs completions fish > ~/.config/fish/completions/bifs.fish")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    #[command(after_help = "Examples:
  bifs man | man -l -
  bifs man --dir /usr/local/share/man/man1     # bifs.1, bifs-encrypt.1, ...")]
    Man {
        /// Write bifs.1 and a bifs-COMMAND.1 page per command into DIR instead of printing
        /// bifs.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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

/// The clap command, for the completions and the man page.
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated text only: no logging, no process hardening needed.
    match &cli.command {
        Command::Completions { shell } => return exit(docs::completions(*shell)),
        Command::Man { dir } => return exit(docs::man(dir.as_deref())),
        _ => {}
    }
    init_logging(&cli.log, cli.log_json);
    // Before anything holds a key (after logging, so its warnings are seen): no core dumps,
    // no ptrace by other users.
    bifs_core::keys::harden_process();
    // A mount or server prepares 16 MiB header regions on its threads: freed, they must go
    // back to the system, not stay in the allocator's arenas (bifs_sys::malloc).
    if !bifs_sys::malloc::return_large_blocks_to_the_system() {
        tracing::debug!("the C allocator kept its own mmap threshold");
    }
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
    kdf_report::install();
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
            names,
            store,
            output,
            watch,
        } => apply::get(&store, &names, output, watch),
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
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    };
    exit(result)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
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
/// Writes `text` to stdout. A reader that stopped early (`bifs get | head`) is not an error,
/// as for cat: the rest is not wanted (`print!` would panic on the closed pipe).
pub(crate) fn print_all(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// `print!` through [`print_all`]: evaluates to `anyhow::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::print_all(&format!($($arg)*)) };
}

/// `println!` through [`print_all`]: evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::print_all(&format!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use {out, outln};

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

    #[test]
    fn the_clap_definitions_are_consistent() {
        super::command().debug_assert();
    }

    /// Every argument says what it is, and every command shows an example.
    #[test]
    fn every_argument_has_help_and_every_command_an_example() {
        let cmd = super::command();
        let mut missing = Vec::new();
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            if !sub
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Examples:"))
            {
                missing.push(format!("{}: no example", sub.get_name()));
            }
            for arg in sub.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{} {}: no help", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
