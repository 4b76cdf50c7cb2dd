//! The encrypt view: a LUKS2 image of a raw disk. The first 16 MiB are the header region
//! (made once, then served as bytes); after it, each sector of the source encrypted with the
//! volume key. The source is padded with zeros to whole 512-byte units.

use std::io;
use std::sync::Arc;

use crate::io::{MemSource, ReadAt};
use crate::kdf::KdfLimits;
use crate::keys::{Passphrase, VolumeKey};
use crate::luks::{
    FormatParams, Layout, Luks2Header, LuksError, LuksHeader, Unsupported, DATA_OFFSET,
};
use crate::xts::Xts;

use super::sectors::{Direction, SectorTransform};
use super::{LuksParams, ViewError};

/// cryptsetup's choice for a regular file: 4096-byte sectors when the data allows, else 512.
pub fn default_sector_size(data_len: u64) -> usize {
    if data_len.is_multiple_of(4096) {
        4096
    } else {
        512
    }
}

/// The source length rounded up to whole 512-byte units: the size of the data segment.
pub fn padded_len(source_len: u64) -> u64 {
    source_len.div_ceil(512) * 512
}

pub struct EncryptView {
    header: Arc<dyn ReadAt>,
    data: SectorTransform,
}

impl EncryptView {
    /// A new LUKS2 image of `source` under `params` (new random volume key, new header).
    pub fn create(
        source: Arc<dyn ReadAt>,
        params: &LuksParams,
        sector_size: Option<usize>,
    ) -> Result<Self, ViewError> {
        // One key derivation: the header is made with a key we hold, not unlocked again.
        let (header, key) = new_header_and_key(params, source.len(), sector_size)?;
        let header: Arc<dyn ReadAt> = Arc::new(MemSource(header));
        let parsed = Luks2Header::read(&*header)?;
        Self::with_key(source, header, &parsed, &key)
    }

    /// The LUKS2 image of `source` with an existing header region (`DATA_OFFSET` bytes, e.g.
    /// persisted so that the view's bytes stay the same across mounts).
    pub fn with_header(
        source: Arc<dyn ReadAt>,
        header: Arc<dyn ReadAt>,
        passphrase: &Passphrase,
    ) -> Result<Self, ViewError> {
        let parsed = match LuksHeader::read(&*header)? {
            LuksHeader::V2(h) => h,
            LuksHeader::V1(_) => return Err(LuksError::from(Unsupported::Luks1EncryptView).into()),
        };
        check_region(header.len(), &parsed)?;
        let (key, _) = parsed.unlock(&*header, passphrase, &KdfLimits::default())?;
        Self::with_key(source, header, &parsed, &key)
    }

    /// With the header already parsed and its volume key unlocked (cached per mount).
    pub fn with_key(
        source: Arc<dyn ReadAt>,
        header: Arc<dyn ReadAt>,
        parsed: &Luks2Header,
        key: &VolumeKey,
    ) -> Result<Self, ViewError> {
        let len = padded_len(source.len());
        let sector_size = parsed.segment.sector_size;
        if !len.is_multiple_of(sector_size as u64) {
            return Err(LuksError::from(Layout::SectorSize { sector_size, len }).into());
        }
        let data = SectorTransform {
            inner: source,
            inner_offset: 0,
            len,
            sector_size,
            iv_tweak: parsed.segment.iv_tweak,
            direction: Direction::Encrypt,
            xts: Xts::new(key.as_bytes())?,
            path: Default::default(),
        };
        Ok(Self { header, data })
    }

    pub fn sector_size(&self) -> usize {
        self.data.sector_size
    }
}

/// Formats a header region for a source of `source_len` bytes.
pub fn new_header(
    params: &LuksParams,
    source_len: u64,
    sector_size: Option<usize>,
) -> Result<Vec<u8>, ViewError> {
    Ok(new_header_and_key(params, source_len, sector_size)?.0)
}

/// [`new_header`] that also hands back the new volume key, so a caller that keeps the view
/// (the filesystem) does not run the KDF a second time to unlock what it just made.
pub fn new_header_and_key(
    params: &LuksParams,
    source_len: u64,
    sector_size: Option<usize>,
) -> Result<(Vec<u8>, VolumeKey), ViewError> {
    let data_len = padded_len(source_len);
    let sector_size = sector_size.unwrap_or_else(|| default_sector_size(data_len));
    if !data_len.is_multiple_of(sector_size as u64) {
        return Err(LuksError::from(Unsupported::SectorSizeFor {
            sector_size,
            data_len,
        })
        .into());
    }
    let key = VolumeKey::random(params.key_bytes()).map_err(ViewError::Random)?;
    let kdf = params.kdf.resolve(params.key_bytes())?;
    let format = FormatParams {
        hash: params.hash,
        kdf,
        sector_size,
        digest_iterations: Some(params.kdf.digest_iterations(params.key_bytes())),
        uuid: None,
        label: String::new(),
    };
    let header = Luks2Header::format(&format, &key, &params.passphrase)?;
    Ok((header, key))
}

impl ReadAt for EncryptView {
    fn len(&self) -> u64 {
        DATA_OFFSET + self.data.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        if offset < DATA_OFFSET {
            let take = buf.len().min((DATA_OFFSET - offset) as usize);
            crate::io::read_full_at(&*self.header, offset, &mut buf[..take])?;
            done = take;
        }
        if done < buf.len() {
            let pos = offset + done as u64 - DATA_OFFSET;
            done += self.data.read_at(pos, &mut buf[done..])?;
        }
        Ok(done)
    }
}

/// An encrypt view's persisted header region must be exactly bifs's layout: `DATA_OFFSET`
/// bytes long, with the data segment right after it.
pub fn check_region(header_len: u64, parsed: &Luks2Header) -> Result<(), ViewError> {
    let data_offset = parsed.segment.offset;
    if header_len != DATA_OFFSET || data_offset != DATA_OFFSET {
        return Err(LuksError::from(Layout::Region {
            len: header_len,
            data_offset,
            expected: DATA_OFFSET,
        })
        .into());
    }
    Ok(())
}
