//! The libcryptsetup side of `bifs verify`, through the `libcryptsetup-rs` bindings: header
//! load, passphrase check, volume key, data-segment geometry, and a read-only dm-crypt mapping
//! that is always torn down.
//!
//! Everything here reads what libcryptsetup itself parsed, never what our engine parsed: the
//! point of `verify` is a second opinion.
//!
//! Unsafe code is allowed here (audited, each block with its `SAFETY:` reason): the logging
//! callback libcryptsetup calls with a C string, and the device-mapper version ioctl.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate};
use libcryptsetup_rs::consts::vals::{CryptDebugLevel, CryptLogLevel, EncryptionFormat};
use libcryptsetup_rs::{CryptDevice, CryptInit, LibcryptErr};
use zeroize::Zeroizing;

use super::{DeviceMapperError, GeometryError, Unsupported, VerifyError};

/// The last message libcryptsetup logged at error level: its own words explain a failure far
/// better than a bare errno, so errors quote it.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// libcryptsetup prints to stderr unless given a callback. Its messages go to tracing at debug
/// level instead, so `bifs verify` stays quiet unless `--log debug` asks for them.
unsafe extern "C" fn log_to_tracing(level: c_int, msg: *const c_char, _usrptr: *mut c_void) {
    if msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    let text = text.trim_end();
    if level == CryptLogLevel::Error as c_int {
        if let Ok(mut last) = LAST_ERROR.lock() {
            *last = Some(text.to_owned());
        }
    }
    tracing::debug!(target: "libcryptsetup", level, "libcryptsetup: {text}");
}

/// Routes libcryptsetup's logging to tracing; turns on its debug output when tracing would
/// show it. Call once before any other libcryptsetup call.
pub fn init_logging() {
    libcryptsetup_rs::set_log_callback::<()>(Some(log_to_tracing), None);
    if tracing::enabled!(target: "libcryptsetup", tracing::Level::DEBUG) {
        libcryptsetup_rs::set_debug_level(CryptDebugLevel::All);
    }
}

fn take_last_error() -> Option<String> {
    LAST_ERROR.lock().ok().and_then(|mut last| last.take())
}

fn clear_last_error() {
    let _ = take_last_error();
}

/// A libcryptsetup failure, with libcryptsetup's own message when it logged one.
fn lib_err(op: &'static str, e: LibcryptErr) -> VerifyError {
    VerifyError::Libcryptsetup {
        op,
        message: take_last_error(),
        source: e,
    }
}

fn errno_of(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// What libcryptsetup says about the header and its data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// "LUKS1" or "LUKS2".
    pub luks_type: &'static str,
    pub cipher: String,
    pub cipher_mode: String,
    pub key_bytes: usize,
    pub sector_size: usize,
    /// Bytes from the start of the image to the data segment.
    pub data_offset: u64,
    /// IV of the segment's first sector, in 512-byte units (0 for anything bifs writes).
    pub iv_offset: u64,
    /// Segment size in bytes; `None` when it runs to the end of the device ("dynamic").
    pub segment_size: Option<u64>,
}

impl Geometry {
    pub fn cipher_spec(&self) -> String {
        format!("{}-{}", self.cipher, self.cipher_mode)
    }

    /// Bytes of the data segment in an image of `image_len` bytes, as dm-crypt would map them:
    /// whole encryption sectors only.
    pub fn segment_len(&self, image_len: u64) -> Result<u64, VerifyError> {
        let avail =
            image_len
                .checked_sub(self.data_offset)
                .ok_or(GeometryError::StartsPastEnd {
                    data_offset: self.data_offset,
                    image_len,
                })?;
        let len = match self.segment_size {
            Some(size) if size > avail => {
                return Err(GeometryError::RunsPastEnd {
                    size,
                    data_offset: self.data_offset,
                    image_len,
                }
                .into())
            }
            Some(size) => size,
            None => avail,
        };
        Ok(len - len % self.sector_size as u64)
    }
}

/// A LUKS image opened by libcryptsetup.
pub struct LibImage {
    device: CryptDevice,
    path: PathBuf,
}

impl LibImage {
    /// `crypt_init` on the path and `crypt_load` of any LUKS version.
    pub fn load(path: &Path) -> Result<Self, VerifyError> {
        clear_last_error();
        let mut device = CryptInit::init(path).map_err(|e| lib_err("crypt_init", e))?;
        // A NULL type loads LUKS1 or LUKS2, whichever the header is.
        device
            .context_handle()
            .load::<()>(None, None)
            .map_err(|e| match errno_of(&e) {
                Some(libc::EINVAL) => VerifyError::NotLuks {
                    message: take_last_error(),
                },
                _ => lib_err("crypt_load", e),
            })?;
        Ok(Self {
            device,
            path: path.to_owned(),
        })
    }

    pub fn geometry(&mut self) -> Result<Geometry, VerifyError> {
        let luks_type = match self.device.format_handle().get_type() {
            Ok(EncryptionFormat::Luks1) => "LUKS1",
            Ok(EncryptionFormat::Luks2) => "LUKS2",
            Ok(other) => return Err(Unsupported::DeviceType(other).into()),
            Err(e) => return Err(lib_err("crypt_get_type", e)),
        };
        let cipher = self
            .device
            .status_handle()
            .get_cipher()
            .map_err(|e| lib_err("crypt_get_cipher", e))?;
        let cipher_mode = self
            .device
            .status_handle()
            .get_cipher_mode()
            .map_err(|e| lib_err("crypt_get_cipher_mode", e))?;
        let key_bytes = usize::try_from(self.device.status_handle().get_volume_key_size())
            .map_err(|_| GeometryError::NegativeKeySize)?;
        let sector_size =
            usize::try_from(libcryptsetup_rs::get_sector_size(Some(&mut self.device)))
                .ok()
                .filter(|s| s.is_power_of_two() && (512..=4096).contains(s))
                .ok_or(GeometryError::SectorSize)?;
        // Both are in 512-byte sectors whatever the encryption sector size.
        let data_offset = self.device.status_handle().get_data_offset() * 512;
        let iv_offset = self.device.status_handle().get_iv_offset();
        let segment_size = if luks_type == "LUKS2" {
            self.luks2_segment_size()?
        } else {
            None
        };
        Ok(Geometry {
            luks_type,
            cipher,
            cipher_mode,
            key_bytes,
            sector_size,
            data_offset,
            iv_offset,
            segment_size,
        })
    }

    /// The size of LUKS2 segment 0 from libcryptsetup's own JSON (`crypt_dump_json`): the C API
    /// has no getter for it. Refuses images with more than one segment (a reencryption stopped
    /// half-way), whose plaintext is not one XTS stream.
    fn luks2_segment_size(&mut self) -> Result<Option<u64>, VerifyError> {
        let json = self
            .device
            .status_handle()
            .dump_json()
            .map_err(|e| lib_err("crypt_dump_json", e))?;
        let segments = json
            .get("segments")
            .and_then(|s| s.as_object())
            .ok_or(GeometryError::NoSegments)?;
        if segments.len() != 1 {
            return Err(Unsupported::SegmentCount(segments.len()).into());
        }
        let seg = segments.get("0").ok_or(GeometryError::NoSegmentZero)?;
        match seg.get("size").and_then(|s| s.as_str()) {
            Some("dynamic") => Ok(None),
            Some(n) => n
                .parse()
                .map(Some)
                .map_err(|_| GeometryError::SegmentSizeNotNumber(n.to_owned()).into()),
            None => Err(GeometryError::NoSegmentSize.into()),
        }
    }

    /// `crypt_volume_key_get` with the passphrase: checks it against every keyslot (the KDF
    /// runs inside libcryptsetup) and returns the opened keyslot and the volume key.
    pub fn volume_key(
        &mut self,
        passphrase: &[u8],
        key_bytes: usize,
    ) -> Result<(u32, Zeroizing<Vec<u8>>), VerifyError> {
        clear_last_error();
        let mut key = Zeroizing::new(vec![0u8; key_bytes]);
        let (slot, len) = self
            .device
            .volume_key_handle()
            .get(None, &mut key, Some(passphrase))
            .map_err(|e| match errno_of(&e) {
                // libcryptsetup's "No key available with this passphrase."
                Some(libc::EPERM) => {
                    clear_last_error();
                    VerifyError::WrongPassphrase
                }
                _ => lib_err("crypt_volume_key_get", e),
            })?;
        key.truncate(len);
        let slot = u32::try_from(slot).map_err(|_| GeometryError::Keyslot(i64::from(slot)))?;
        // Belt and braces: the key must match the header's digest (`crypt_volume_key_verify`).
        self.device
            .volume_key_handle()
            .verify(&key)
            .map_err(|e| lib_err("crypt_volume_key_verify", e))?;
        Ok((slot, key))
    }

    /// Activates a read-only dm-crypt mapping named `name` with the volume key. On a regular
    /// file libcryptsetup attaches a read-only, auto-clearing loop device itself; removing the
    /// mapping frees the loop device.
    pub fn activate_read_only(mut self, name: &str, key: &[u8]) -> Result<Mapping, VerifyError> {
        clear_last_error();
        self.device
            .activate_handle()
            .activate_by_volume_key(Some(name), Some(key), CryptActivate::READONLY)
            .map_err(|e| lib_err("crypt_activate_by_volume_key", e))?;
        // From here on the guard owns the mapping: any error below still removes it.
        let mut mapping = Mapping {
            device: self.device,
            name: name.to_owned(),
            active: true,
            len: 0,
        };
        let active = mapping
            .device
            .runtime_handle(name)
            .get_active_device()
            .map_err(|e| lib_err("crypt_get_active_device", e))?;
        tracing::debug!(name, image = %self.path.display(), sectors = active.size, "dm-crypt mapping active");
        // dm sizes are in 512-byte sectors whatever the encryption sector size.
        mapping.len = active.size * 512;
        Ok(mapping)
    }
}

/// An active dm-crypt mapping: deactivated when dropped, whatever happened (error, Ctrl-C,
/// panic unwinding), so `verify` never leaves a mapping or a loop device behind.
pub struct Mapping {
    device: CryptDevice,
    name: String,
    active: bool,
    len: u64,
}

impl Mapping {
    /// Size of the mapped device in bytes, as dm-crypt maps it.
    pub fn size(&self) -> u64 {
        self.len
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mapped block device. udev may take a moment to create the node.
    pub fn path(&self) -> Result<PathBuf, VerifyError> {
        let path = Path::new("/dev/mapper").join(&self.name);
        for _ in 0..50 {
            if path.exists() {
                return Ok(path);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(DeviceMapperError::NodeMissing(path).into())
    }

    /// Removes the mapping now, reporting failure (drop only logs it).
    pub fn deactivate(mut self) -> Result<(), VerifyError> {
        self.try_deactivate()
    }

    fn try_deactivate(&mut self) -> Result<(), VerifyError> {
        if !self.active {
            return Ok(());
        }
        let mut last = None;
        // udev's probes can hold the device open for a moment after we close it.
        for _ in 0..20 {
            clear_last_error();
            match self
                .device
                .activate_handle()
                .deactivate(&self.name, CryptDeactivate::empty())
            {
                Ok(()) => {
                    self.active = false;
                    tracing::debug!(name = %self.name, "dm-crypt mapping removed");
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let e = last.map(|e| lib_err("crypt_deactivate", e));
        Err(e.unwrap_or_else(|| DeviceMapperError::DeactivationFailed.into()))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Err(e) = self.try_deactivate() {
            tracing::error!(
                name = %self.name,
                "could not remove the dm-crypt mapping: {e}; remove it with `cryptsetup close {}`",
                self.name
            );
        }
    }
}

/// Whether this process can use device-mapper. The control node alone proves nothing: in
/// containers `/dev/mapper/control` often exists while the kernel has no device-mapper (opening
/// it fails with ENODEV). So open it and ask the driver its version (`DM_VERSION`), as
/// libdevmapper does; that also fails unless we are root.
pub fn dm_available() -> bool {
    use std::os::unix::io::AsRawFd;
    let control = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("device-mapper: cannot open /dev/mapper/control: {e}");
            return false;
        }
    };
    // struct dm_ioctl is 312 bytes; u32s keep it aligned. version = 4.0.0, data_size = 312.
    let mut dmi = [0u32; 78];
    dmi[0] = 4;
    dmi[3] = 312;
    // _IOWR(DM_IOCTL = 0xfd, DM_VERSION_CMD = 0, struct dm_ioctl)
    const DM_VERSION: u64 = (3 << 30) | (312 << 16) | (0xfd << 8);
    // SAFETY: the buffer is a properly sized and aligned struct dm_ioctl (312 bytes, data_size
    // says so) that lives across the call; the kernel reads and writes only within it.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), DM_VERSION as _, dmi.as_mut_ptr()) };
    if rc != 0 {
        tracing::debug!(
            "device-mapper: DM_VERSION failed: {}",
            std::io::Error::last_os_error()
        );
        return false;
    }
    tracing::debug!(
        "device-mapper: driver version {}.{}.{}",
        dmi[0],
        dmi[1],
        dmi[2]
    );
    true
}
