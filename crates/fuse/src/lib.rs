//! The FUSE adapter: kernel requests in, [`Catalog`] calls, replies out. Nothing here decides
//! what a view contains; it maps paths to nodes, handles to views, and errors to errnos.
//!
//! Every callback runs its work under `catch_unwind`: a panic in a worker thread would take
//! the whole mount down, so a bug becomes EIO and a log line instead.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, Request,
    SessionACL,
};

use bifs_core::io::ReadAt;

pub mod tree;

pub use bifs_node::catalog::{Catalog, CatalogError, FileInfo, Mode};
pub use tree::{Inodes, Node};

/// How long the kernel may cache names and attributes. Short: the store can change.
const TTL: Duration = Duration::from_secs(1);
/// `st_blksize`: tools size their reads from it, and big reads keep the XTS engine busy.
const BLKSIZE: u32 = 1 << 20;

/// How open files use the kernel page cache. `keep-cache` measured faster for `cp` (README,
/// "Performance"), but only `direct-io` guarantees that a reader never gets pages cached before
/// its source changed, so that is the CLI's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Page cache kept across opens (`FOPEN_KEEP_CACHE`): repeated reads are free, and the
    /// kernel reads ahead for sequential readers such as `cp`.
    KeepCache,
    /// Every read goes to bifs (`FOPEN_DIRECT_IO`): no page cache, request size = read size.
    DirectIo,
}

/// What `bifs mount` asks of the session.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub allow_other: bool,
    pub threads: usize,
    pub cache: CacheMode,
}

impl MountOptions {
    /// The fuser session configuration: read-only, kernel permission checks, one request
    /// queue per worker thread (`clone_fd`).
    pub fn fuser_config(&self) -> fuser::Config {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("bifs".into()),
            MountOption::Subtype("bifs".into()),
            MountOption::RO,
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        cfg.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        cfg.n_threads = Some(self.threads.max(1));
        cfg.clone_fd = true;
        cfg
    }
}

pub struct BifsFs {
    // Shared with `bifs mount --serve`'s HTTP server: one key cache, one header per view.
    catalog: Arc<Catalog>,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Arc<dyn ReadAt>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    cache: CacheMode,
    /// Source identity at the last open of each inode: with `keep-cache`, the kernel's cached
    /// pages are kept only while the source is unchanged (an open without FOPEN_KEEP_CACHE
    /// makes the kernel drop them).
    opened: Mutex<HashMap<u64, bifs_node::store::SourceIdentity>>,
}

impl BifsFs {
    pub fn new(catalog: impl Into<Arc<Catalog>>, opts: &MountOptions) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        Self {
            catalog: catalog.into(),
            inodes: Inodes::new(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
            cache: opts.cache,
            opened: Mutex::new(HashMap::new()),
        }
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        self.attr(ino, FileType::Directory, 0o550, 0, 0, self.mounted_at)
    }

    fn attr(
        &self,
        ino: u64,
        kind: FileType,
        perm: u16,
        size: u64,
        blocks: u64,
        mtime: SystemTime,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: BLKSIZE,
        }
    }

    /// Checks that `node` exists now and returns its attributes (with the inode number it has
    /// or would get: nothing is allocated here).
    fn stat(&self, node: &Node) -> Result<FileAttr, CatalogError> {
        let ino = self.inodes.ino(node);
        match node {
            Node::Root | Node::Mode(_) => {}
            Node::Namespace(_, ns) => {
                self.catalog.secrets_in(ns)?;
            }
            Node::Secret(_, s) => {
                self.catalog.check_secret(s)?;
            }
            Node::Image { mode, secret, name } => {
                let img = self.catalog.image(*mode, secret.as_ref(), name)?;
                let info = self.catalog.info(*mode, &img)?;
                return Ok(self.attr(
                    ino,
                    FileType::RegularFile,
                    0o440,
                    info.size,
                    info.blocks,
                    info.mtime,
                ));
            }
        }
        Ok(self.dir_attr(ino))
    }

    /// Names below a directory node.
    fn children(&self, node: &Node) -> Result<Vec<(String, Node)>, CatalogError> {
        let names: Vec<String> = match node {
            Node::Root => Mode::ALL.iter().map(|m| m.name().to_owned()).collect(),
            Node::Mode(m) if m.keyed() => self.catalog.namespaces(),
            Node::Mode(m) | Node::Secret(m, _) => {
                if let Node::Secret(_, s) = node {
                    self.catalog.check_secret(s)?;
                }
                self.catalog
                    .images(*m)?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            }
            Node::Namespace(_, ns) => self.catalog.secrets_in(ns)?,
            Node::Image { .. } => return Ok(Vec::new()),
        };
        Ok(names
            .into_iter()
            .filter_map(|n| node.child(&n).map(|c| (n, c)))
            .collect())
    }

    fn view(&self, fh: FileHandle) -> Option<Arc<dyn ReadAt>> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.inodes.node(ino.0).ok_or(Errno::ENOENT)
    }
}

/// Logs why a path was refused and gives its errno. Wrong passphrases are what an operator
/// needs to see, and a refused open; names that do not exist (an unknown image, namespace or
/// Secret) and lookups of refused combinations stay at debug: shells and tools probe names,
/// and anyone who can reach the mount must not be able to fill the log with them.
fn refuse(op: &str, node: &Node, e: &CatalogError) -> Errno {
    let path = path_of(node);
    match e {
        CatalogError::NoImage(_)
        | CatalogError::UnknownSecret(_)
        | CatalogError::UnknownNamespace(_) => tracing::debug!(op, path, "{e}"),
        CatalogError::Refused { .. } if op != "open" => {
            tracing::debug!(op, path, "refused: {e}")
        }
        CatalogError::Refused { .. } => tracing::info!(op, path, "refused: {e}"),
        CatalogError::WrongPassphrase { .. } => tracing::warn!(op, path, "refused: {e}"),
        _ => tracing::error!(op, path, "{e}"),
    }
    Errno::from_i32(e.errno())
}

fn path_of(node: &Node) -> String {
    match node {
        Node::Root => "/".into(),
        Node::Mode(m) => m.name().into(),
        Node::Namespace(m, ns) => format!("{}/{ns}", m.name()),
        Node::Secret(m, s) => format!("{}/{}/{}", m.name(), s.namespace, s.name),
        Node::Image {
            mode,
            secret: None,
            name,
        } => format!("{}/{name}", mode.name()),
        Node::Image {
            mode,
            secret: Some(s),
            name,
        } => {
            format!("{}/{}/{}/{name}", mode.name(), s.namespace, s.name)
        }
    }
}

/// Runs `f`, turning a panic into EIO.
fn guarded<T>(op: &str, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!(op, "bug: a request handler panicked; answering EIO");
        Err(Errno::EIO)
    })
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Filesystem for BifsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Read ahead as far as the kernel allows: `cp` reads sequentially.
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = guarded("lookup", || {
            let parent = self.node(parent)?;
            let node = name
                .to_str()
                .and_then(|n| parent.child(n))
                .ok_or(Errno::ENOENT)?;
            let mut attr = self.stat(&node).map_err(|e| refuse("lookup", &node, &e))?;
            // Only a name that exists gets a number, counted until the kernel forgets it.
            attr.ino = INodeNo(self.inodes.lookup(&node));
            Ok(attr)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // fuser's default `batch_forget` calls this once per inode (its argument type is not
        // public, so it cannot be overridden).
        if self.inodes.forget(ino.0, nlookup) {
            // The kernel dropped the inode and its cached pages with it.
            self.opened
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = guarded("getattr", || {
            let node = self.node(ino)?;
            self.stat(&node).map_err(|e| refuse("getattr", &node, &e))
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = guarded("open", || {
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return Err(Errno::EROFS);
            }
            let node = self.node(ino)?;
            let Node::Image { mode, secret, name } = &node else {
                return Err(Errno::EISDIR);
            };
            let (view, identity) = self
                .catalog
                .image(*mode, secret.as_ref(), name)
                .and_then(|img| self.catalog.open(*mode, secret.as_ref(), &img))
                .map_err(|e| refuse("open", &node, &e))?;
            let flags = match self.cache {
                CacheMode::DirectIo => FopenFlags::FOPEN_DIRECT_IO,
                CacheMode::KeepCache => {
                    let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
                    let unchanged = opened.insert(ino.0, identity) == Some(identity);
                    if unchanged {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    }
                }
            };
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(fh, view);
            Ok((fh, flags))
        });
        match r {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = guarded("read", || {
            let view = self.view(fh).ok_or(Errno::EBADF)?;
            let want = (size as u64).min(view.len().saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; want];
            let mut done = 0;
            while done < want {
                match view.read_at(offset + done as u64, &mut buf[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => {
                        tracing::error!(offset, size, error = %e, "read failed");
                        return Err(io_errno(&e));
                    }
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match r {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = guarded("readdir", || {
            let node = self.node(ino)?;
            if !node.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let children = self
                .children(&node)
                .map_err(|e| refuse("readdir", &node, &e))?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (
                    self.inodes.ino(&node.parent()),
                    FileType::Directory,
                    "..".to_owned(),
                ),
            ];
            for (name, child) in children {
                let kind = if child.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((self.inodes.ino(&child), kind, name));
            }
            Ok(entries)
        });
        match r {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = guarded("lseek", || {
            let view = self.view(fh).ok_or(Errno::EBADF)?;
            let off = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
            if off >= view.len() {
                return Err(Errno::ENXIO);
            }
            let found = match whence {
                libc::SEEK_DATA => view
                    .next_data(off)
                    .map_err(|e| io_errno(&e))?
                    .ok_or(Errno::ENXIO)?,
                libc::SEEK_HOLE => view.next_hole(off).map_err(|e| io_errno(&e))?,
                // SEEK_SET/CUR/END never reach a FUSE filesystem; the kernel does them.
                _ => return Err(Errno::EINVAL),
            };
            i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // ENOSYS makes the kernel stop asking for the rest of the mount: no xattrs here.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLKSIZE, 255, BLKSIZE);
    }
}
