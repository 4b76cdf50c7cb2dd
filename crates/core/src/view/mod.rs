//! Transform views: each turns a source into another [`ReadAt`](crate::io::ReadAt) — LUKS2 of a raw disk
//! ([`EncryptView`]), the plaintext of a LUKS image ([`DecryptView`]), or a LUKS image under a
//! new header around the same volume key ([`RekeyView`]). A read through a view *is* the
//! transform; nothing is materialized unless a caller copies it. Views take plain
//! [`LuksParams`], never Kubernetes types.

use crate::kdf::KdfError;
use crate::luks::LuksError;

pub mod decrypt;
pub mod encrypt;
pub mod params;
pub mod read_path;
pub mod rekey;
pub mod sectors;
pub mod stable;

pub use decrypt::DecryptView;
pub use encrypt::EncryptView;
pub use params::LuksParams;
pub use rekey::{RekeyError, RekeyView};
pub use stable::{StablePlan, StableSeed};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the image is already encrypted ({0}); encrypting it again is refused")]
    AlreadyEncrypted(&'static str),
    #[error("the image is not encrypted (no LUKS header); nothing to decrypt")]
    NotEncrypted,
    #[error(transparent)]
    Luks(#[from] LuksError),
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error("volume key: {0}")]
    Key(#[from] crate::xts::XtsError),
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
}
