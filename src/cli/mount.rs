//! `bifs mount` and `bifs umount`: a foreground FUSE session over a store, ended cleanly by
//! SIGINT/SIGTERM or by an unmount from outside.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use bifs_fuse::{BifsFs, CacheMode, Catalog, MountOptions};
use bifs_node::store::Store;

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Directory of backing images (flat, or a Longhorn disk with backing-images/).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Kubernetes Secret manifest file, or a directory of manifests and NAMESPACE/NAME/
    /// Secret volumes; changes are picked up while mounted. `--secret` is the same option.
    #[arg(long, visible_alias = "secret", value_name = "PATH")]
    secrets: PathBuf,
    /// Where persisted encrypt-view headers live (default: STORE/.bifs).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Let other users (e.g. a CSI driver's containers) read the mount.
    #[arg(long)]
    allow_other: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Page-cache use of open files.
    #[arg(long, value_enum, default_value = "keep-cache")]
    cache: CacheArg,
    /// Kernel read-ahead of the mount in KiB (page-cache mode; 0 keeps the kernel's 128):
    /// `cp` gets its bytes in larger, fewer FUSE requests. Needs root (/sys/class/bdi).
    #[arg(long, value_name = "KIB", default_value_t = 512)]
    read_ahead_kib: u32,
    /// Also serve the views over HTTP on ADDR:PORT (as `bifs serve`, same catalog).
    #[arg(long, value_name = "ADDR:PORT")]
    serve: Option<std::net::SocketAddr>,
    #[command(flatten)]
    exposure: super::serve::ExposureArgs,
    #[command(flatten)]
    node: super::serve::NodeArgs,
    /// An existing, empty directory to mount on (not a live bifs mount).
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
}

/// `--cache`, as [`CacheMode`] (the FUSE face's own type knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CacheArg {
    /// Page cache kept across opens, dropped when a source or Secret changes: the kernel
    /// reads ahead and repeated reads are free; a reader never gets bytes of two versions.
    KeepCache,
    /// Every read goes to bifs: no page cache at all.
    DirectIo,
}

pub fn mount(args: &MountArgs) -> anyhow::Result<()> {
    check_mountpoint(&args.mountpoint)?;
    let store = Store::open(&args.store, args.state.as_deref())?;
    let secrets = bifs_k8s::SecretSource::open(&args.secrets)?;
    let images = store
        .list()
        .with_context(|| format!("listing {}", store.root().display()))?;
    tracing::info!(
        store = %store.root().display(), layout = ?store.layout(), state = %store.state().path().display(),
        images = images.len(), secrets = secrets.secrets().count(), "opening store"
    );
    let opts = MountOptions {
        allow_other: args.allow_other,
        threads: args.threads,
        cache: match args.cache {
            CacheArg::KeepCache => CacheMode::KeepCache,
            CacheArg::DirectIo => CacheMode::DirectIo,
        },
    };
    let catalog = std::sync::Arc::new(Catalog::watching(store, secrets));
    let node = args.node.node_info()?;
    args.node.start(&catalog);
    if let Some(listen) = args.serve {
        super::serve::spawn_for_mount(
            listen,
            &args.exposure,
            node,
            catalog.clone(),
            vec![args.secrets.clone()],
        )?;
    }
    let fs = BifsFs::new(catalog, &opts);
    let invalidator = fs.invalidator();
    let mut session = fuser::Session::new(fs, &args.mountpoint, &opts.fuser_config())
        .with_context(|| {
            format!(
                "mounting on {} (is /dev/fuse there and fusermount3 installed?)",
                args.mountpoint.display()
            )
        })?;
    if opts.cache == CacheMode::KeepCache {
        set_read_ahead(&args.mountpoint, args.read_ahead_kib);
    }
    invalidator
        .start(session.notifier())
        .context("starting the page-cache invalidation thread")?;
    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    let stop = bifs_node::signals::on_stop(move |sig| {
        tracing::info!(signal = sig, mountpoint = %mountpoint.display(), "unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!(error = %e, "unmount failed; try `bifs umount` (busy mount?)");
        }
    })
    .context("installing signal handlers")?;
    tracing::info!(mountpoint = %args.mountpoint.display(), "mounted; Ctrl-C or `bifs umount` to stop");
    let result = session.run().context("FUSE session");
    stop.close();
    tracing::info!(mountpoint = %args.mountpoint.display(), "unmounted");
    result
}

/// Sets the read-ahead of the new mount (its backing-dev-info, found in mountinfo): FUSE
/// starts every mount at 128 KiB. Best effort: without root it stays at the kernel's.
fn set_read_ahead(mountpoint: &Path, kib: u32) {
    if kib == 0 {
        return;
    }
    let Some(entry) = mount_entry(&canonical(mountpoint)) else {
        tracing::warn!(mountpoint = %mountpoint.display(), "new mount not in /proc/self/mountinfo; read-ahead left as is");
        return;
    };
    match bifs_fuse::set_read_ahead(&entry.dev, kib) {
        Ok(()) => tracing::debug!(dev = entry.dev, kib, "read-ahead set"),
        Err(e) => tracing::info!(
            dev = entry.dev, kib, error = %e,
            "could not set the mount's read-ahead (not root?); sequential reads go in 128 KiB requests"
        ),
    }
}

/// Refuses a mount point that is missing, not a directory, or already a live bifs mount
/// (a second daemon on top would hide the first without a word); detaches a dead bifs
/// mount left there (see [`clean_stale_mount`]).
fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {shown} does not exist (create it first: mkdir -p {shown})")
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        Err(e) => return Err(e).with_context(|| format!("mount point {shown}")),
        Ok(m) if !m.is_dir() => bail!("mount point {shown} is not a directory"),
        Ok(_) => {}
    }
    clean_stale_mount(mountpoint)?;
    let path = canonical(mountpoint);
    match mount_fstype(&path) {
        Some((fstype, source)) if is_bifs(&fstype, &source) => bail!(
            "{} is already a bifs mount, served by another `bifs mount`; unmount it first \
             (`bifs umount {}`) or choose another mount point",
            path.display(),
            path.display()
        ),
        Some((fstype, _)) => tracing::warn!(
            mountpoint = %path.display(), fstype,
            "mounting over another mount: what it holds is hidden while bifs is mounted"
        ),
        None => {}
    }
    Ok(())
}

/// The path as /proc/self/mountinfo spells it: absolute, symlinks resolved (a dead mount
/// cannot be resolved: then only made absolute).
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// mount(2) as root records fstype "fuse" (the subtype only with fusermount3): the source
/// (fsname) "bifs" is what marks ours.
fn is_bifs(fstype: &str, source: &str) -> bool {
    fstype == "fuse.bifs" || (fstype == "fuse" && source == "bifs")
}

/// A bifs daemon that died (SIGKILL, OOM) leaves its mount behind: every access to it fails
/// with ENOTCONN ("Transport endpoint is not connected") until it is unmounted. If that is what
/// sits on `mountpoint`, and it is a bifs mount (fsname/subtype `bifs` in mountinfo), detach it
/// lazily (`fusermount3 -uz`: processes still inside it keep their ENOTCONN, new ones don't).
/// Anything else that is stale there is someone else's: refuse with a clear error.
fn clean_stale_mount(mountpoint: &Path) -> anyhow::Result<()> {
    // stat alone may be answered from the kernel's attribute cache of the dead mount;
    // opening the directory always needs the daemon.
    let dead = |r: std::io::Result<()>| r.is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    if !dead(std::fs::metadata(mountpoint).map(drop))
        && !dead(std::fs::read_dir(mountpoint).map(drop))
    {
        return Ok(());
    }
    let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let Some((fstype, source)) = mount_fstype(&abs) else {
        bail!("{} is a dead mount (transport endpoint is not connected) that is not in /proc/self/mountinfo", abs.display());
    };
    if !is_bifs(&fstype, &source) {
        bail!(
            "{} is a dead {fstype} mount (transport endpoint is not connected), not bifs's; \
             unmount it with `fusermount3 -uz`",
            abs.display()
        );
    }
    tracing::warn!(mountpoint = %abs.display(), "a previous bifs mount died here; detaching it (fusermount3 -uz)");
    let attempts: [(&str, &[&str]); 3] = [
        ("fusermount3", &["-u", "-z"]),
        ("fusermount", &["-u", "-z"]),
        ("umount", &["-l"]),
    ];
    for (program, flags) in attempts {
        match Command::new(program).args(flags).arg(&abs).status() {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => bail!(
                "{program} {} {} failed ({s}) on the dead mount",
                flags.join(" "),
                abs.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("running {program}")),
        }
    }
    bail!("none of fusermount3, fusermount, umount is installed to detach the dead mount")
}

/// The filesystem type (`fuse.bifs`) and source (`bifs`) of the last mount on `path`, from
/// /proc/self/mountinfo.
fn mount_fstype(path: &Path) -> Option<(String, String)> {
    mount_entry(path).map(|m| (m.fstype, m.source))
}

/// One line of /proc/self/mountinfo.
struct MountEntry {
    /// `major:minor` of the mounted file system (its backing-dev-info in /sys/class/bdi).
    dev: String,
    fstype: String,
    source: String,
}

/// The last mount on `path`, from /proc/self/mountinfo (read without touching the mount:
/// a stat of a FUSE mount whose session is not running yet would never return).
fn mount_entry(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    // Fields: id parent major:minor root MOUNTPOINT options... - FSTYPE SOURCE superoptions.
    // Octal escapes (\040 for a space) in the mount point are undone before comparing.
    // The last match is the mount on top, hence rev().find_map.
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split(' ');
        let dev = fields.nth(2)?;
        let mnt = unescape_mountinfo(fields.nth(1)?);
        let mut it = right.split(' ');
        let fstype = it.next()?;
        let source = it.next().unwrap_or_default();
        (mnt == want).then(|| MountEntry {
            dev: dev.to_string(),
            fstype: fstype.to_string(),
            source: source.to_string(),
        })
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts with fusermount3 (fusermount, then umount(8), where it is missing). A path that
/// is not a mount point, or is another file system's, is refused with a word of its own
/// rather than the unmounter's "Invalid argument".
pub fn umount(mountpoint: &Path) -> anyhow::Result<()> {
    let shown = mountpoint.display();
    if let Err(e) = std::fs::symlink_metadata(mountpoint) {
        if e.kind() == std::io::ErrorKind::NotFound {
            bail!("{shown} does not exist (nothing is mounted there)");
        }
    }
    let path = canonical(mountpoint);
    match mount_fstype(&path) {
        None => bail!("{} is not mounted (no mount in /proc/self/mountinfo)", path.display()),
        Some((fstype, source)) if !is_bifs(&fstype, &source) => bail!(
            "{} is not a bifs mount (it is a {fstype} mount of {source}); unmount it with umount(8)",
            path.display()
        ),
        Some(_) => {}
    }
    let mountpoint = path.as_path();
    let attempts: [(&str, &[&str]); 3] = [
        ("fusermount3", &["-u"]),
        ("fusermount", &["-u"]),
        ("umount", &[]),
    ];
    for (program, flags) in attempts {
        match Command::new(program).args(flags).arg(mountpoint).status() {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => bail!(
                "{program} {} {} failed ({s})",
                flags.join(" "),
                mountpoint.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("running {program}")),
        }
    }
    bail!("none of fusermount3, fusermount, umount is installed")
}
