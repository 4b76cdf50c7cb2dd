//! The fixed shape of the mount and its inode table.
//!
//! ```text
//! ignore/<image>                    the stored file as is
//! raw/<image>                       its raw virtual disk
//! encrypt/<namespace>/<secret>/<image>   LUKS2 of the raw disk (non-LUKS images only)
//! decrypt/<namespace>/<secret>/<image>   plaintext of a LUKS image (LUKS images only)
//! ```
//! Which names exist below the mode directories is the catalog's business; this module only
//! knows the shape, so a path maps to a [`Node`] without touching the disk.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bifs_k8s::SecretRef;
use bifs_node::catalog::Mode;

use crate::binding::Binding;

/// A path in the mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Mode(Mode),
    Namespace(Mode, String),
    Secret(Mode, SecretRef),
    Image {
        mode: Mode,
        secret: Option<SecretRef>,
        name: String,
    },
}

impl Node {
    pub fn is_dir(&self) -> bool {
        !matches!(self, Node::Image { .. })
    }

    /// The node `name` below this one, by shape alone.
    pub fn child(&self, name: &str) -> Option<Node> {
        if !bifs_node::store::valid_component(name) {
            return None;
        }
        let name = name.to_owned();
        Some(match self {
            Node::Root => Node::Mode(Mode::from_name(&name)?),
            Node::Mode(m) if m.keyed() => Node::Namespace(*m, name),
            Node::Mode(m) => Node::Image {
                mode: *m,
                secret: None,
                name,
            },
            Node::Namespace(m, ns) => Node::Secret(
                *m,
                SecretRef {
                    namespace: ns.clone(),
                    name,
                },
            ),
            Node::Secret(m, s) => Node::Image {
                mode: *m,
                secret: Some(s.clone()),
                name,
            },
            Node::Image { .. } => return None,
        })
    }

    /// The parent directory (the root is its own parent).
    pub fn parent(&self) -> Node {
        match self {
            Node::Root | Node::Mode(_) => Node::Root,
            Node::Namespace(m, _) => Node::Mode(*m),
            Node::Secret(m, s) => Node::Namespace(*m, s.namespace.clone()),
            Node::Image {
                mode, secret: None, ..
            } => Node::Mode(*mode),
            Node::Image {
                mode,
                secret: Some(s),
                ..
            } => Node::Secret(*mode, s.clone()),
        }
    }
}

/// The inode numbers the kernel holds, with its lookup counts.
///
/// FUSE's contract: every entry reply to `lookup` adds one to the kernel's count for that
/// inode, and `forget(ino, n)` gives `n` back; at zero the kernel has dropped the inode and
/// the number may be freed. Only nodes that exist get a number (a miss allocates nothing), and
/// forgotten ones are freed, so the table is bounded by what the kernel caches, not by every
/// name ever probed over a long-lived mount.
///
/// A node's number is a hash of its path, so it is the same every time it is looked up (and
/// `readdir` can report it without allocating). Two live nodes with the same hash get
/// distinct numbers by probing upward; the later one then reports a different number in
/// `readdir` than `stat` gives, which nothing relies on.
///
/// An image node's number carries a [`Binding`] (the version of the view its pages hold).
/// Once that is stale, the next lookup of the name gets a new number (the old one lives on,
/// for the handles open on it, until the kernel forgets it).
pub struct Inodes {
    table: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Entry>,
    by_node: HashMap<Node, u64>,
}

struct Entry {
    node: Node,
    lookups: u64,
    binding: Option<Arc<Binding>>,
}

pub const ROOT_INO: u64 = 1;

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Self {
        Self {
            table: RwLock::new(Table::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The number `node` has, or would get when looked up; allocates nothing.
    pub fn ino(&self, node: &Node) -> u64 {
        if *node == Node::Root {
            return ROOT_INO;
        }
        let t = self.read();
        t.by_node
            .get(node)
            .copied()
            .unwrap_or_else(|| t.free_ino(node))
    }

    /// Records one kernel lookup of `node`, which exists: call it right before the entry
    /// reply. Returns its inode number: the one it has, unless that one's binding is stale,
    /// then a new one.
    pub fn lookup(&self, node: &Node) -> u64 {
        if *node == Node::Root {
            return ROOT_INO;
        }
        let mut t = self.write();
        if let Some(&ino) = t.by_node.get(node) {
            if let Some(e) = t.by_ino.get_mut(&ino) {
                if !e.binding.as_ref().is_some_and(|b| b.is_stale()) {
                    e.lookups += 1;
                    return ino;
                }
            }
        }
        let ino = t.free_ino(node);
        let binding = matches!(node, Node::Image { .. }).then(|| Arc::new(Binding::new()));
        t.by_ino.insert(
            ino,
            Entry {
                node: node.clone(),
                lookups: 1,
                binding,
            },
        );
        t.by_node.insert(node.clone(), ino);
        ino
    }

    /// The binding of an image node's number.
    pub fn binding(&self, ino: u64) -> Option<Arc<Binding>> {
        self.read().by_ino.get(&ino).and_then(|e| e.binding.clone())
    }

    /// Every number the kernel holds for an image node, with its node and binding.
    pub fn bindings(&self) -> Vec<(u64, Node, Arc<Binding>)> {
        self.read()
            .by_ino
            .iter()
            .filter_map(|(&ino, e)| Some((ino, e.node.clone(), e.binding.clone()?)))
            .collect()
    }

    /// The kernel dropped `n` lookups of `ino`; the number is freed when none remain.
    /// Returns whether it was freed.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        let mut t = self.write();
        let Some(e) = t.by_ino.get_mut(&ino) else {
            return false;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups > 0 {
            return false;
        }
        if let Some(e) = t.by_ino.remove(&ino) {
            // The name may already have a newer number.
            if t.by_node.get(&e.node) == Some(&ino) {
                t.by_node.remove(&e.node);
            }
        }
        true
    }

    /// The node behind a number the kernel holds.
    pub fn node(&self, ino: u64) -> Option<Node> {
        if ino == ROOT_INO {
            return Some(Node::Root);
        }
        self.read().by_ino.get(&ino).map(|e| e.node.clone())
    }

    /// How many numbers are held (the root not counted).
    pub fn len(&self) -> usize {
        self.read().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// The first number at or above `node`'s hash that is not the root's, not 0 and not held.
    fn free_ino(&self, node: &Node) -> u64 {
        use std::hash::BuildHasher;
        // Fixed keys: the same path hashes the same for the life of the process.
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let mut ino = hasher.hash_one(node);
        loop {
            if ino > ROOT_INO && !self.by_ino.contains_key(&ino) {
                return ino;
            }
            ino = ino.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let enc = Node::Root.child("encrypt").unwrap();
        let img = enc
            .child("ns")
            .unwrap()
            .child("s")
            .unwrap()
            .child("a.img")
            .unwrap();
        assert_eq!(
            img,
            Node::Image {
                mode: Mode::Encrypt,
                secret: Some(SecretRef {
                    namespace: "ns".into(),
                    name: "s".into()
                }),
                name: "a.img".into()
            }
        );
        assert_eq!(img.parent().parent().parent(), enc);
        assert_eq!(
            Node::Root
                .child("raw")
                .unwrap()
                .child("x")
                .unwrap()
                .child("y"),
            None
        );
        assert_eq!(Node::Root.child("other"), None);
        let inodes = Inodes::new();
        let a = inodes.lookup(&img);
        assert_eq!(inodes.ino(&img), a);
        assert_eq!(inodes.lookup(&img), a);
        assert_eq!(inodes.node(a), Some(img));
        assert_eq!(inodes.node(ROOT_INO), Some(Node::Root));
        assert_eq!(inodes.node(0), None);
    }

    fn image(name: &str) -> Node {
        Node::Root.child("raw").and_then(|m| m.child(name)).unwrap()
    }

    #[test]
    fn misses_allocate_nothing() {
        // The adapter calls `lookup` only for names that exist; a miss only ever asks `ino`
        // (readdir) or nothing at all. Probing many names must leave the table empty.
        let inodes = Inodes::new();
        for i in 0..10_000 {
            let node = image(&format!("missing-{i}.img"));
            let ino = inodes.ino(&node);
            assert!(ino > ROOT_INO);
            assert_eq!(inodes.node(ino), None);
        }
        assert!(inodes.is_empty());
    }

    #[test]
    fn forget_frees_after_the_last_lookup() {
        let inodes = Inodes::new();
        let a = image("a.img");
        let b = image("b.img");
        let ia = inodes.lookup(&a);
        assert_eq!(inodes.lookup(&a), ia);
        let ib = inodes.lookup(&b);
        assert_ne!(ia, ib);
        assert_eq!(inodes.len(), 2);
        assert!(!inodes.forget(ia, 1));
        assert_eq!(inodes.node(ia), Some(a.clone()), "one lookup is still held");
        assert!(inodes.forget(ia, 1));
        assert_eq!(inodes.node(ia), None);
        assert_eq!(inodes.len(), 1);
        // A batch forget of more than was looked up frees too; unknown numbers are ignored.
        assert!(inodes.forget(ib, 5));
        assert!(!inodes.forget(12345, 1));
        assert!(inodes.is_empty());
        // The root is never in the table and never forgotten.
        assert!(!inodes.forget(ROOT_INO, 1));
        assert_eq!(inodes.node(ROOT_INO), Some(Node::Root));
        // Looked up again, a path gets the same number.
        assert_eq!(inodes.lookup(&a), ia);
    }

    #[test]
    fn a_stale_binding_gives_the_name_a_new_number() {
        let inodes = Inodes::new();
        let a = image("a.img");
        let old = inodes.lookup(&a);
        let binding = inodes.binding(old).unwrap();
        assert!(inodes.binding(ROOT_INO).is_none());
        binding.mark_stale();
        let new = inodes.lookup(&a);
        assert_ne!(new, old);
        assert_eq!(inodes.ino(&a), new);
        assert!(!inodes.binding(new).unwrap().is_stale());
        // Both live until the kernel forgets each; forgetting the old one keeps the name's
        // new number.
        assert_eq!(inodes.bindings().len(), 2);
        assert!(inodes.forget(old, 1));
        assert_eq!(inodes.node(new), Some(a.clone()));
        assert_eq!(inodes.lookup(&a), new);
        assert_eq!(inodes.bindings().len(), 1);
    }

    #[test]
    fn colliding_hashes_get_distinct_numbers() {
        let inodes = Inodes::new();
        let a = image("a.img");
        let b = image("b.img");
        // Put a on b's number, as a hash collision would.
        let hb = inodes.ino(&b);
        {
            let mut t = inodes.write();
            t.by_ino.insert(
                hb,
                Entry {
                    node: a.clone(),
                    lookups: 1,
                    binding: None,
                },
            );
            t.by_node.insert(a.clone(), hb);
        }
        let ib = inodes.lookup(&b);
        assert_ne!(ib, hb);
        assert_eq!(inodes.node(hb), Some(a));
        assert_eq!(inodes.node(ib), Some(b.clone()));
        assert_eq!(inodes.ino(&b), ib);
    }
}
