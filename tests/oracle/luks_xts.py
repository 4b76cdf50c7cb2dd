#!/usr/bin/python3
"""Independent AES-XTS oracle for LUKS data segments (not bifs code).

Uses the Python `cryptography` package (OpenSSL) for AES-XTS. The volume key must come
from elsewhere (the tests take it from `cryptsetup luksDump --dump-volume-key`).

LUKS/dm-crypt "aes-xts-plain64" layout:
  * the data segment starts at byte OFFSET of the image;
  * one XTS data unit = one sector of SECTOR_SIZE bytes (512 or 4096);
  * the tweak of the sector starting at byte B of the segment is the little-endian
    u64 (B / 512 + IV_TWEAK), zero-extended to 16 bytes -- counted in 512-byte units
    even when SECTOR_SIZE is 4096 (dm-crypt without iv_large_sectors, as cryptsetup does
    for LUKS2);
  * the XTS key is the whole volume key (32 bytes = AES-128-XTS, 64 = AES-256-XTS).

Usage:
  luks_xts.py check
  luks_xts.py selftest
  luks_xts.py decrypt|encrypt --key-hex HEX --offset N --sector-size S
                      [--length L] [--iv-tweak T] INPUT OUTPUT

decrypt: reads INPUT[OFFSET : OFFSET+L] (L defaults to the rest of the file), writes the
         plaintext (L bytes) to OUTPUT.
encrypt: reads INPUT[0 : L] (L defaults to the whole file), writes OFFSET zero bytes followed
         by the ciphertext to OUTPUT (a header-less "segment at OFFSET" image).
L must be a multiple of SECTOR_SIZE.
"""
import argparse
import sys

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        "luks_xts.py: the Python 'cryptography' package is missing (%s); "
        "install it with: apt-get install python3-cryptography\n" % e)
    sys.exit(3)

CHUNK_SECTORS_BYTES = 1 << 20


def xts(key, sector_size, iv_tweak, data, base, decrypt):
    """Process `data` (sector aligned) whose first byte is at segment byte offset `base`."""
    out = bytearray()
    for pos in range(0, len(data), sector_size):
        tweak = ((base + pos) // 512 + iv_tweak).to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak))
        ctx = c.decryptor() if decrypt else c.encryptor()
        out += ctx.update(data[pos:pos + sector_size]) + ctx.finalize()
    return bytes(out)


def selftest():
    # IEEE P1619/D16 Annex B, vector 4 (AES-128-XTS, data unit sequence number 0, 512 bytes)
    key = bytes.fromhex(
        "2718281828459045235360287471352631415926535897932384626433832795")
    pt = bytes(range(256)) * 2
    ct_head = bytes.fromhex("27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
                            "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412")
    ct_tail = bytes.fromhex("eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568")
    ct = xts(key, 512, 0, pt, 0, decrypt=False)
    if ct[:64] != ct_head or ct[-32:] != ct_tail:
        sys.stderr.write("luks_xts.py selftest: IEEE 1619 vector 4 mismatch\n")
        return 1
    if xts(key, 512, 0, ct, 0, decrypt=True) != pt:
        sys.stderr.write("luks_xts.py selftest: round trip mismatch\n")
        return 1
    # tweak counts 512-byte units even for 4096-byte sectors: sector 1 of a 4096 segment
    # must equal the 512-sector encryption with tweak 8 of a 4096-byte unit.
    unit = bytes(range(256)) * 16
    a = xts(key, 4096, 0, unit * 2, 0, decrypt=False)[4096:]
    c = Cipher(algorithms.AES(key), modes.XTS((8).to_bytes(16, "little"))).encryptor()
    if a != c.update(unit) + c.finalize():
        sys.stderr.write("luks_xts.py selftest: 4096-sector tweak mismatch\n")
        return 1
    print("ok")
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        import cryptography
        print("cryptography", cryptography.__version__)
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "selftest":
        return selftest()
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["decrypt", "encrypt"])
    ap.add_argument("--key-hex", required=True)
    ap.add_argument("--offset", type=int, required=True)
    ap.add_argument("--sector-size", type=int, required=True, choices=[512, 1024, 2048, 4096])
    ap.add_argument("--length", type=int)
    ap.add_argument("--iv-tweak", type=int, default=0)
    ap.add_argument("input")
    ap.add_argument("output")
    a = ap.parse_args()
    key = bytes.fromhex(a.key_hex)
    if len(key) not in (32, 64):
        sys.stderr.write("luks_xts.py: XTS key must be 32 or 64 bytes, got %d\n" % len(key))
        return 2
    decrypt = a.mode == "decrypt"
    with open(a.input, "rb") as f:
        if decrypt:
            f.seek(0, 2)
            end = f.tell()
            length = a.length if a.length is not None else end - a.offset
            if a.offset + length > end:
                sys.stderr.write("luks_xts.py: segment %d+%d beyond end of file (%d)\n"
                                 % (a.offset, length, end))
                return 2
            f.seek(a.offset)
        else:
            f.seek(0, 2)
            length = a.length if a.length is not None else f.tell()
            f.seek(0)
        if length % a.sector_size:
            sys.stderr.write("luks_xts.py: length %d is not a multiple of sector size %d\n"
                             % (length, a.sector_size))
            return 2
        with open(a.output, "wb") as out:
            if not decrypt:
                out.truncate(a.offset)
                out.seek(a.offset)
            done = 0
            step = max(CHUNK_SECTORS_BYTES - CHUNK_SECTORS_BYTES % a.sector_size, a.sector_size)
            while done < length:
                n = min(step, length - done)
                buf = f.read(n)
                if len(buf) != n:
                    sys.stderr.write("luks_xts.py: short read at %d\n" % done)
                    return 2
                out.write(xts(key, a.sector_size, a.iv_tweak, buf, done, decrypt))
                done += n
    return 0


if __name__ == "__main__":
    sys.exit(main())
