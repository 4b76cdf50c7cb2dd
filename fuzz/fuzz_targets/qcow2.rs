//! qcow2 reader: open the input as an image file (in tmpfs), then read, next_data and
//! next_hole at offsets derived from the input, as the views and the copier do.
#![no_main]

use std::io::Write;

use bifs_core::image::qcow2::Qcow2Image;
use bifs_core::io::ReadAt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // /dev/shm keeps it off the disk; one file per process, rewritten each run. Backing-file
    // names in the input resolve next to it, inside a directory of our own.
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::Builder::new()
            .prefix("bifs-fuzz-qcow2")
            .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
            .expect("temp dir");
    }
    let path = DIR.with(|d| d.path().join("image.qcow2"));
    {
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(data).expect("write");
    }
    let Ok(image) = Qcow2Image::open(&path) else { return };
    let len = image.len();
    if len == 0 {
        return;
    }
    // Probe offsets from the tail of the input so the fuzzer can steer them.
    let mut probes = vec![0, len / 2, len.saturating_sub(1)];
    for chunk in data.rchunks_exact(8).take(4) {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        probes.push(v % len);
    }
    let mut buf = vec![0u8; 64 * 1024];
    for off in probes {
        let _ = image.read_at(off, &mut buf);
        let _ = image.read_at(off, &mut buf[..1]);
        let _ = image.next_data(off);
        let _ = image.next_hole(off);
    }
});
