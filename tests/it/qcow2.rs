//! qcow2 reader against qemu: images made by `qemu-img`/`qemu-io` must read exactly as
//! `qemu-img convert -O raw` renders them; damaged images must fail cleanly.
//!
//! Needs `qemu-img` and `qemu-io` (Debian: `apt-get install qemu-utils`); without them every
//! test fails, saying so.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::noise;
use bifs_core::image::qcow2::{Qcow2Error, Qcow2Image};
use bifs_core::image::{open_virtual_disk, read_full_at, ReadAt};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Runs a qemu tool, failing loudly if it is missing or fails.
fn run(tool: &str, args: &[&str], dir: &Path) {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        for t in ["qemu-img", "qemu-io"] {
            if Command::new(t).arg("--version").output().is_err() {
                panic!(
                    "\n\n*** `{t}` not found: the qcow2 tests need qemu's tools. \
                     Install them (Debian/Ubuntu: `apt-get install qemu-utils`). ***\n\n"
                );
            }
        }
    });
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn qemu tool");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run("qemu-img", args, dir);
}

/// `qemu-io -f qcow2 -c CMD... IMG`
fn qemu_io(dir: &Path, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img);
    run("qemu-io", &args, dir);
}

/// A sparse raw disk of `size` bytes: noise and compressible text in a few places, zeros
/// (unwritten) elsewhere, with edges off cluster boundaries.
fn write_source(path: &Path, size: u64) {
    let mut data = vec![0u8; size as usize];
    let mut put = |at: u64, bytes: &[u8]| {
        let at = (at as usize).min(data.len());
        let end = (at + bytes.len()).min(data.len());
        data[at..end].copy_from_slice(&bytes[..end - at]);
    };
    put(0, &noise(1, 300 * KIB as usize));
    put(MIB + 7 * KIB, &noise(2, 200 * KIB as usize + 333));
    let text: Vec<u8> = b"qcow2 clusters compress well when they repeat. "
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect();
    put(3 * MIB, &text);
    put(MIB + 512 * KIB, &text[..128 * KIB as usize]);
    put(size - 10 * KIB - 512, &noise(3, 10 * KIB as usize + 512));
    fs::write(path, data).unwrap();
}

/// What qemu says the virtual disk holds.
fn expected(dir: &Path, img: &str) -> Vec<u8> {
    let out = format!("{img}.expected.raw");
    qemu_img(dir, &["convert", "-O", "raw", img, &out]);
    let data = fs::read(dir.join(&out)).unwrap();
    fs::remove_file(dir.join(&out)).unwrap();
    data
}

fn read_all(src: &dyn ReadAt, chunk: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len() as usize];
    for (i, piece) in out.chunks_mut(chunk).enumerate() {
        let n = src.read_at((i * chunk) as u64, piece).unwrap();
        assert_eq!(n, piece.len(), "short read at {}", i * chunk);
    }
    out
}

/// Reads the image every way a FUSE client might and compares with qemu's rendering.
fn check(dir: &Path, img: &str) -> Qcow2Image {
    let want = expected(dir, img);
    let image = Qcow2Image::open(&dir.join(img)).unwrap();
    assert_eq!(image.len(), want.len() as u64, "{img}: virtual size");

    for chunk in [MIB as usize + 4096, 65536, 4097, 513] {
        assert!(
            read_all(&image, chunk) == want,
            "{img}: mismatch reading in chunks of {chunk}"
        );
    }
    // Odd lengths at odd offsets, many crossing cluster boundaries.
    let mut x = 12345u64;
    for _ in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % want.len() as u64;
        let len = ((x >> 8) % (300 * KIB)) as usize + 1;
        let mut buf = vec![0xeeu8; len];
        let n = image.read_at(off, &mut buf).unwrap();
        let end = (off as usize + len).min(want.len());
        assert_eq!(n, end - off as usize);
        assert!(
            buf[..n] == want[off as usize..end],
            "{img}: mismatch at {off} len {len}"
        );
    }
    // Past the end.
    assert_eq!(image.read_at(want.len() as u64, &mut [0u8; 10]).unwrap(), 0);

    // Several threads at once, each with its own chunking.
    std::thread::scope(|s| {
        for chunk in [131072usize, 1 << 20, 12289, 65536 + 512] {
            let (image, want) = (&image, &want);
            s.spawn(move || {
                assert!(
                    read_all(image, chunk) == *want,
                    "{img}: threaded mismatch ({chunk})"
                );
            });
        }
    });

    check_holes(&image, &want, img);
    image
}

/// Every hole `next_hole`/`next_data` report reads as zeros, and the walk covers the disk.
fn check_holes(image: &dyn ReadAt, want: &[u8], img: &str) {
    let len = image.len();
    let mut pos = 0;
    while pos < len {
        let hole = image.next_hole(pos).unwrap();
        assert!(
            hole >= pos && hole <= len,
            "{img}: next_hole({pos}) = {hole}"
        );
        if hole == len {
            break;
        }
        let data = image.next_data(hole).unwrap().unwrap_or(len);
        assert!(
            data > hole,
            "{img}: hole at {hole} is empty (next_data {data})"
        );
        assert!(
            want[hole as usize..data as usize].iter().all(|&b| b == 0),
            "{img}: hole {hole}..{data} does not read as zeros"
        );
        pos = data;
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Converts a fresh source disk with `opts` (plus `extra` args such as `-c`) and checks it.
fn check_converted(size: u64, opts: &str, extra: &[&str]) -> Qcow2Image {
    let dir = tmp();
    write_source(&dir.path().join("src.raw"), size);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", opts];
    args.extend(extra);
    args.extend(["src.raw", "img.qcow2"]);
    qemu_img(dir.path(), &args);
    check(dir.path(), "img.qcow2")
}

#[test]
fn v2_images() {
    full_tier_only!("qemu-img and qemu-io");
    check_converted(6 * MIB, "compat=0.10,cluster_size=65536", &[]);
    check_converted(6 * MIB, "compat=0.10,cluster_size=512", &[]);
}

#[test]
fn v3_cluster_sizes() {
    full_tier_only!("qemu-img and qemu-io");
    for cluster in ["512", "65536", "2M"] {
        check_converted(6 * MIB, &format!("compat=1.1,cluster_size={cluster}"), &[]);
    }
}

#[test]
fn virtual_size_not_a_cluster_multiple() {
    full_tier_only!("qemu-img and qemu-io");
    check_converted(6 * MIB + 1536, "cluster_size=2M", &[]);
    check_converted(6 * MIB + 1536, "cluster_size=65536", &["-c"]);
    let dir = tmp();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=2M",
            "img.qcow2",
            "3000k",
        ],
    );
    qemu_io(
        dir.path(),
        "img.qcow2",
        &["write -P 0x5a 2990k 10k", "write -P 0x33 0 1k"],
    );
    check(dir.path(), "img.qcow2");
}

#[test]
fn deflate_compressed() {
    full_tier_only!("qemu-img and qemu-io");
    for cluster in ["512", "65536", "2M"] {
        check_converted(6 * MIB + 1536, &format!("cluster_size={cluster}"), &["-c"]);
    }
    check_converted(6 * MIB, "compat=0.10", &["-c"]);
}

#[test]
fn zstd_compressed() {
    full_tier_only!("qemu-img and qemu-io");
    for cluster in ["512", "65536", "2M"] {
        let image = check_converted(
            6 * MIB + 1536,
            &format!("cluster_size={cluster},compression_type=zstd"),
            &["-c"],
        );
        assert!(format!("{image:?}").contains("Zstd"), "{image:?}");
    }
}

#[test]
fn sparse_holes_cover_unallocated_regions() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("src.raw"), 6 * MIB);
    qemu_img(
        dir.path(),
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "img.qcow2",
        ],
    );
    let image = check(dir.path(), "img.qcow2");
    // Data at 0..300K and from 1M+7K: 320K..1M is unallocated (64K clusters).
    assert_eq!(image.next_data(0).unwrap(), Some(0));
    assert_eq!(image.next_hole(0).unwrap(), 320 * KIB);
    assert_eq!(image.next_data(320 * KIB).unwrap(), Some(MIB));
    for off in (320 * KIB..MIB).step_by(4096) {
        assert_eq!(
            image.next_hole(off).unwrap(),
            off,
            "{off} should be in a hole"
        );
    }
    // 4M..6M-11K is zeros, so unallocated up to the cluster holding the tail's noise.
    let tail_cluster = (6 * MIB - 10 * KIB - 512) / (64 * KIB) * (64 * KIB);
    assert_eq!(image.next_hole(3 * MIB).unwrap(), 4 * MIB);
    assert_eq!(image.next_data(4 * MIB).unwrap(), Some(tail_cluster));
    assert_eq!(image.next_hole(tail_cluster).unwrap(), 6 * MIB);
    assert_eq!(image.next_data(6 * MIB).unwrap(), None);
}

#[test]
fn zero_clusters() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("src.raw"), 6 * MIB);
    qemu_img(
        dir.path(),
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "img.qcow2",
        ],
    );
    qemu_io(
        dir.path(),
        "img.qcow2",
        &["write -z 1M 1M", "write -z -u 3M 128k", "write -z 5M 64k"],
    );
    let image = check(dir.path(), "img.qcow2");
    assert_eq!(image.next_hole(MIB).unwrap(), MIB);
    assert_eq!(image.next_hole(3 * MIB).unwrap(), 3 * MIB);
    assert_eq!(image.next_data(3 * MIB).unwrap(), Some(3 * MIB + 128 * KIB));
}

#[test]
fn backing_raw() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("base.raw"), 6 * MIB);
    // Relative backing name: resolved against the overlay's directory, not the cwd.
    qemu_img(
        dir.path(),
        &[
            "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2", "8M",
        ],
    );
    qemu_io(
        dir.path(),
        "ov.qcow2",
        &[
            "write -P 0xab 100k 300k",
            "write -P 0xcd 5M 4k",
            "write -z 1M 64k",
            "write -P 1 7M 3k",
        ],
    );
    let image = check(dir.path(), "ov.qcow2");
    // Unallocated in the overlay but data in the base: data; past the base's end: a hole.
    assert_eq!(image.next_data(0).unwrap(), Some(0));
    assert_eq!(
        image.next_hole(6 * MIB + 64 * KIB).unwrap(),
        6 * MIB + 64 * KIB
    );
}

#[test]
fn backing_qcow2_chain() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("src.raw"), 6 * MIB);
    qemu_img(
        dir.path(),
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "src.raw",
            "base.qcow2",
        ],
    );
    qemu_img(
        dir.path(),
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "mid.qcow2",
        ],
    );
    qemu_io(
        dir.path(),
        "mid.qcow2",
        &["write -P 0x11 50k 70k", "write -z 3M 8k"],
    );
    qemu_img(
        dir.path(),
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "compat=0.10",
            "top.qcow2",
            "7M",
        ],
    );
    qemu_io(
        dir.path(),
        "top.qcow2",
        &["write -P 0xab 60k 10k", "write -P 0xcd 6M 100k"],
    );
    check(dir.path(), "top.qcow2");
}

#[test]
fn backing_format_probed_without_extension() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("base.raw"), 2 * MIB);
    qemu_img(
        dir.path(),
        &[
            "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
        ],
    );
    qemu_io(dir.path(), "ov.qcow2", &["write -P 0xab 100k 3k"]);
    let want = expected(dir.path(), "ov.qcow2");
    // Turn the backing_fmt extension into an unknown one: the format must be probed.
    let path = dir.path().join("ov.qcow2");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .unwrap();
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    fs::write(&path, bytes).unwrap();
    let image = Qcow2Image::open(&path).unwrap();
    assert!(read_all(&image, 65536) == want);
}

#[test]
fn extended_l2_subclusters() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    let d = dir.path();
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "a.qcow2",
            "4M",
        ],
    );
    qemu_io(
        d,
        "a.qcow2",
        &[
            "write -P 0x11 1k 3k",
            "write -P 0x22 70k 5k",
            "write -z 200k 8k",
            "write -P 0x33 130k 64k",
        ],
    );
    let image = check(d, "a.qcow2");
    assert!(
        format!("{image:?}").contains("extended_l2: true"),
        "{image:?}"
    );

    // Over a backing file, unwritten subclusters of allocated clusters read through.
    write_source(&d.join("base.raw"), 4 * MIB);
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "extended_l2=on,cluster_size=32k",
            "b.qcow2",
        ],
    );
    qemu_io(
        d,
        "b.qcow2",
        &[
            "write -P 0x44 3k 2k",
            "write -z 40k 1k",
            "write -P 0x55 1053696 7k",
            "write -z -u 2M 32k",
        ],
    );
    check(d, "b.qcow2");

    // Converted and compressed with extended L2.
    write_source(&d.join("src.raw"), 6 * MIB);
    qemu_img(
        d,
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            "src.raw",
            "c.qcow2",
        ],
    );
    check(d, "c.qcow2");
    qemu_img(
        d,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=2M",
            "src.raw",
            "e.qcow2",
        ],
    );
    check(d, "e.qcow2");
}

#[test]
fn dispatcher_opens_qcow2_and_raw() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    write_source(&dir.path().join("src.raw"), 2 * MIB);
    qemu_img(
        dir.path(),
        &["convert", "-O", "qcow2", "-c", "src.raw", "img.qcow2"],
    );
    let raw = fs::read(dir.path().join("src.raw")).unwrap();
    for name in ["img.qcow2", "src.raw"] {
        let disk = open_virtual_disk(&dir.path().join(name)).unwrap();
        let mut buf = vec![0u8; raw.len()];
        read_full_at(&*disk, 0, &mut buf).unwrap();
        assert!(buf == raw, "{name}");
    }
    let err = open_virtual_disk(&dir.path().join("missing"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

// ---- Hostile and unsupported images ----

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// A small v3 image with data, 64K clusters; returns its path.
fn sample(dir: &Path, extra: &[&str]) -> PathBuf {
    write_source(&dir.join("src.raw"), 2 * MIB);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend(extra);
    args.extend(["src.raw", "img.qcow2"]);
    qemu_img(dir, &args);
    dir.join("img.qcow2")
}

fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, bytes).unwrap();
}

/// Offset in the file of L2 entry 0 (of L1 entry 0).
fn first_l2_entry(bytes: &[u8]) -> usize {
    let l1 = be64(bytes, 40) as usize;
    (be64(bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize
}

/// Reads everything; the first error's kind, if any.
fn read_error(image: &Qcow2Image) -> Option<ErrorKind> {
    let mut buf = vec![0u8; 256 * KIB as usize];
    let mut off = 0;
    while off < image.len() {
        if let Err(e) = image.read_at(off, &mut buf) {
            return Some(e.kind());
        }
        off += buf.len() as u64;
    }
    None
}

#[test]
fn refuses_truncated_images() {
    let dir = tmp();
    let path = sample(dir.path(), &[]);
    let full = fs::read(&path).unwrap();
    for len in [0, 4, 50, 100, 300, 70_000] {
        fs::write(&path, &full[..len]).unwrap();
        assert!(Qcow2Image::open(&path).is_err(), "truncated to {len}");
    }
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    match Qcow2Image::open(&path) {
        Err(_) => {}
        Ok(image) => assert_eq!(read_error(&image), Some(ErrorKind::InvalidData)),
    }
}

#[test]
fn refuses_bad_geometry() {
    let dir = tmp();
    let path = sample(dir.path(), &[]);
    let good = fs::read(&path).unwrap();
    let open_with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        f(&mut bytes);
        fs::write(&path, bytes).unwrap();
        Qcow2Image::open(&path)
    };
    let cluster_bits =
        |bits: u32| move |b: &mut Vec<u8>| b[20..24].copy_from_slice(&bits.to_be_bytes());
    for bits in [0, 8, 22, 40, u32::MAX] {
        assert!(
            matches!(open_with(&cluster_bits(bits)), Err(Qcow2Error::ClusterBits(b)) if b == bits)
        );
    }
    // Huge L1 size with a huge virtual size: refused without allocating it.
    let e = open_with(&|b| {
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        put64(b, 24, 1 << 60);
    });
    assert!(
        matches!(
            e,
            Err(Qcow2Error::L1Table { .. } | Qcow2Error::VirtualSizeTooLarge(_))
        ),
        "{e:?}"
    );
    let e = open_with(&|b| put64(b, 24, u64::MAX));
    assert!(
        matches!(e, Err(Qcow2Error::VirtualSizeTooLarge(_))),
        "{e:?}"
    );
    // Virtual size larger than the L1 table maps.
    let e = open_with(&|b| put64(b, 24, 1 << 40));
    assert!(matches!(e, Err(Qcow2Error::L1TooSmall { .. })), "{e:?}");
    // L1 table misaligned or past the end.
    let e = open_with(&|b| put64(b, 40, 0x10200));
    assert!(matches!(e, Err(Qcow2Error::L1Table { .. })), "{e:?}");
    let e = open_with(&|b| put64(b, 40, u64::MAX - 0xffff));
    assert!(matches!(e, Err(Qcow2Error::L1Table { .. })), "{e:?}");
    let e = open_with(&|b| b[0] = b'X');
    assert!(matches!(e, Err(Qcow2Error::BadMagic)), "{e:?}");
    let e = open_with(&|b| b[7] = 4);
    assert!(matches!(e, Err(Qcow2Error::Version(4))), "{e:?}");
    let e = open_with(&|b| b[79] |= 1 << 6);
    assert!(
        matches!(e, Err(Qcow2Error::UnknownIncompatibleFeatures(0x40))),
        "{e:?}"
    );
    let e = open_with(&|b| b[79] |= 1 << 1);
    assert!(matches!(e, Err(Qcow2Error::MarkedCorrupt)), "{e:?}");
    // Dirty (lazy refcounts) still reads.
    assert!(open_with(&|b| b[79] |= 1).is_ok());
}

#[test]
fn bad_table_and_data_offsets_fail_reads() {
    let dir = tmp();
    let path = sample(dir.path(), &[]);
    let good = fs::read(&path).unwrap();
    let l1 = be64(&good, 40) as usize;
    let l2 = first_l2_entry(&good);
    let eof_cluster = (good.len() as u64).next_multiple_of(65536);
    type Patch = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Patch); 5] = [
        (
            "L2 past EOF",
            Box::new(move |b| put64(b, l1, (1 << 63) | (eof_cluster + (100 << 16)))),
        ),
        (
            "L2 misaligned",
            Box::new(move |b| put64(b, l1, (1 << 63) | 0x10200)),
        ),
        (
            "data past EOF",
            Box::new(move |b| put64(b, l2, (1 << 63) | (eof_cluster + (7 << 16)))),
        ),
        (
            "data misaligned",
            Box::new(move |b| put64(b, l2, (1 << 63) | 0x30200)),
        ),
        (
            "compressed past EOF",
            Box::new(move |b| put64(b, l2, (1 << 62) | (eof_cluster + 5))),
        ),
    ];
    for (what, f) in cases {
        let mut bytes = good.clone();
        f(&mut bytes);
        fs::write(&path, bytes).unwrap();
        let image = Qcow2Image::open(&path).unwrap();
        let err = image.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains("offset 0x0"), "{what}: {err}");
    }
}

#[test]
fn garbage_compressed_data_fails_reads() {
    for compression in ["zlib", "zstd"] {
        let dir = tmp();
        let opt = format!("compression_type={compression}");
        let path = sample(dir.path(), &["-c", "-o", &opt]);
        let mut cluster_index = 0;
        patch(&path, |b| {
            let l2 = first_l2_entry(b);
            let (index, entry) = (0..32)
                .map(|i| (i, be64(b, l2 + 8 * i)))
                .find(|(_, e)| e & (1 << 62) != 0)
                .expect("a compressed cluster");
            cluster_index = index as u64;
            let host = (entry & ((1 << 54) - 1)) as usize;
            b[host..host + 2048].fill(0xff);
        });
        let image = Qcow2Image::open(&path).unwrap();
        let err = image
            .read_at(cluster_index * 65536, &mut [0u8; 100])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{compression}: {err}");
    }
}

#[test]
fn refuses_backing_loops_and_deep_chains() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    let d = dir.path();
    qemu_img(d, &["create", "-f", "qcow2", "aa.qcow2", "1M"]);
    qemu_img(
        d,
        &[
            "create", "-f", "qcow2", "-b", "aa.qcow2", "-F", "qcow2", "bb.qcow2",
        ],
    );
    qemu_img(
        d,
        &[
            "create", "-f", "qcow2", "-b", "bb.qcow2", "-F", "qcow2", "cc.qcow2",
        ],
    );
    let rename_backing = |img: &str, to: &[u8]| {
        patch(&d.join(img), |b| {
            let at = be64(b, 8) as usize;
            b[at..at + to.len()].copy_from_slice(to);
        })
    };
    // bb -> bb
    rename_backing("bb.qcow2", b"bb.qcow2");
    let e = Qcow2Image::open(&d.join("bb.qcow2")).err().unwrap();
    assert!(e.to_string().contains("loops back"), "{e}");
    assert!(Qcow2Image::open(&d.join("cc.qcow2")).is_err());
    // aa -> cc -> bb -> aa... made a cycle of three.
    rename_backing("bb.qcow2", b"aa.qcow2");
    qemu_img(
        d,
        &[
            "create", "-f", "qcow2", "-b", "cc.qcow2", "-F", "qcow2", "-u", "aa.qcow2", "1M",
        ],
    );
    let e = Qcow2Image::open(&d.join("cc.qcow2")).err().unwrap();
    assert!(e.to_string().contains("loops back"), "{e}");

    // A straight chain of 20 is refused as too deep.
    qemu_img(d, &["create", "-f", "qcow2", "l0.qcow2", "1M"]);
    for i in 1..20 {
        let (prev, this) = (format!("l{}.qcow2", i - 1), format!("l{i}.qcow2"));
        qemu_img(
            d,
            &[
                "create", "-f", "qcow2", "-b", &prev, "-F", "qcow2", "-u", &this, "1M",
            ],
        );
    }
    let e = Qcow2Image::open(&d.join("l19.qcow2")).err().unwrap();
    assert!(e.to_string().contains("deeper than"), "{e}");
    assert!(Qcow2Image::open(&d.join("l10.qcow2")).is_ok());
}

#[test]
fn refuses_unsupported_features() {
    full_tier_only!("qemu-img and qemu-io");
    let dir = tmp();
    let d = dir.path();
    // Marked rather than made: qemu's LUKS key-derivation benchmark is flaky on a busy machine.
    qemu_img(d, &["create", "-f", "qcow2", "enc.qcow2", "1M"]);
    patch(&d.join("enc.qcow2"), |b| {
        b[32..36].copy_from_slice(&2u32.to_be_bytes())
    });
    assert!(matches!(
        Qcow2Image::open(&d.join("enc.qcow2")),
        Err(Qcow2Error::Encrypted(2))
    ));
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "ext.qcow2",
            "1M",
        ],
    );
    assert!(matches!(
        Qcow2Image::open(&d.join("ext.qcow2")),
        Err(Qcow2Error::ExternalDataFile)
    ));
    let e = open_virtual_disk(&d.join("ext.qcow2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ext.qcow2") && e.contains("external data file"),
        "{e}"
    );
}

/// Random damage to the metadata never panics or hangs.
#[test]
fn random_corruption_never_panics() {
    let dir = tmp();
    let path = sample(dir.path(), &["-c", "-o", "cluster_size=4096"]);
    let good = fs::read(&path).unwrap();
    let l1 = be64(&good, 40) as usize;
    let l2 = first_l2_entry(&good);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + round % 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let region = [0, l1, l2, l2 + 256][(x % 4) as usize];
            let at = region + ((x >> 8) % 128) as usize;
            bytes[at] ^= 1 << ((x >> 20) % 8);
        }
        fs::write(&path, &bytes).unwrap();
        if let Ok(image) = Qcow2Image::open(&path) {
            let mut buf = vec![0u8; 64 * KIB as usize];
            let len = image.len();
            for off in [0, 4096, len / 2, len.saturating_sub(100)] {
                let _ = image.read_at(off, &mut buf);
                let _ = image.next_data(off);
                let _ = image.next_hole(off);
            }
        }
    }
}
