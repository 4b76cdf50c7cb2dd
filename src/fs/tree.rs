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
use std::sync::RwLock;

use crate::catalog::Mode;
use crate::k8s::SecretRef;

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
        if !crate::store::valid_component(name) {
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

/// Inode numbers for nodes, handed out on first sight and kept for the life of the mount
/// (the tree is small: images × Secrets × 4), so a path keeps its inode while mounted.
pub struct Inodes {
    table: RwLock<Table>,
}

struct Table {
    nodes: Vec<Node>,
    by_node: HashMap<Node, u64>,
}

pub const ROOT_INO: u64 = 1;

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Self {
        let mut by_node = HashMap::new();
        by_node.insert(Node::Root, ROOT_INO);
        Self {
            table: RwLock::new(Table {
                nodes: vec![Node::Root],
                by_node,
            }),
        }
    }

    pub fn ino(&self, node: &Node) -> u64 {
        if let Ok(t) = self.table.read() {
            if let Some(&ino) = t.by_node.get(node) {
                return ino;
            }
        }
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&ino) = t.by_node.get(node) {
            return ino;
        }
        t.nodes.push(node.clone());
        let ino = t.nodes.len() as u64;
        t.by_node.insert(node.clone(), ino);
        ino
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let idx = usize::try_from(ino.checked_sub(1)?).ok()?;
        t.nodes.get(idx).cloned()
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
        let a = inodes.ino(&img);
        assert_eq!(inodes.ino(&img), a);
        assert_eq!(inodes.node(a), Some(img));
        assert_eq!(inodes.node(ROOT_INO), Some(Node::Root));
        assert_eq!(inodes.node(0), None);
    }
}
