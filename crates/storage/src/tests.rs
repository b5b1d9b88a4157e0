//! Overlays, flattening and hostile images. `qemu-img` (qemu-utils, installed by
//! scripts/install-deps.sh) cross-checks what imago writes: an independent qcow2 reader.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const MIB: usize = 1 << 20;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// 4 MiB: a pattern in the first and last MiB, zeros between (so flattening leaves holes).
fn base_bytes() -> Vec<u8> {
    let mut v = vec![0u8; 4 * MIB];
    for (i, b) in v[..MIB].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8 + 1;
    }
    for (i, b) in v[3 * MIB..].iter_mut().enumerate() {
        *b = (i * 13 % 241) as u8 + 1;
    }
    v
}

fn write_base(dir: &Path) -> PathBuf {
    let p = dir.join("base.raw");
    std::fs::write(&p, base_bytes()).unwrap();
    p
}

fn read_all(disk: &dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; disk.size() as usize];
    disk.read(&[v.as_mut_slice().into()], 0).unwrap();
    v
}

fn write_at(disk: &dyn BlockBackend, data: &[u8], offset: u64) {
    let mut d = data.to_vec();
    disk.write(&[d.as_mut_slice().into()], offset).unwrap();
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("these tests need qemu-img (apt-get install qemu-utils)")
}

fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The names in `dir`, sorted: no temporary file may be left behind.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn overlay_reads_the_base_and_keeps_writes_to_itself() {
    let d = dir();
    let base = write_base(d.path());
    let overlay = d.path().join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    assert_eq!(names(d.path()), ["base.raw", "vm.qcow2"]);
    assert_eq!(detect_format(&overlay).unwrap(), Format::Qcow2);

    // What qemu makes of it: qcow2 v3 (compat 1.1), raw backing file by absolute path, same
    // virtual size.
    let info = qemu_img_ok(&["info", "--output=json", s(&overlay)]);
    let canonical = std::fs::canonicalize(&base).unwrap();
    assert!(info.contains("\"compat\": \"1.1\""), "{info}");
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    assert!(
        info.contains(&format!(
            "\"backing-filename\": \"{}\"",
            canonical.display()
        )),
        "{info}"
    );
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 4 * MIB)),
        "{info}"
    );

    let mut expected = base_bytes();
    {
        let disk = open(&overlay, Format::Qcow2, false, false).unwrap();
        assert_eq!(disk.size(), 4 * MIB as u64);
        assert_eq!(disk.format(), Format::Qcow2);
        assert!(
            read_all(&*disk) == expected,
            "the overlay reads as its base"
        );
        // A sector inside a cluster the base has data in (copy-on-write of the cluster), a
        // write across a cluster boundary, and one in the zero middle.
        for (off, len, byte) in [
            (70_000 / 512 * 512, 512, 0xa1u8),
            (128 * 1024 - 1024, 4096, 0xb2),
            (2 * MIB - 512, 8192, 0xc3),
        ] {
            write_at(&*disk, &vec![byte; len], off as u64);
            expected[off..off + len].fill(byte);
        }
        assert!(read_all(&*disk) == expected, "writes read back");
        disk.flush().unwrap();
    }
    assert!(
        std::fs::read(&base).unwrap() == base_bytes(),
        "the base file is byte-identical"
    );
    let reopened = open(&overlay, Format::Qcow2, true, false).unwrap();
    assert!(reopened.read_only());
    assert!(read_all(&*reopened) == expected, "writes were kept");
    drop(reopened);

    // qemu agrees: the image is consistent and holds the same disk.
    qemu_img_ok(&["check", s(&overlay)]);
    let want = d.path().join("want.raw");
    std::fs::write(&want, &expected).unwrap();
    qemu_img_ok(&["compare", "-f", "qcow2", "-F", "raw", s(&overlay), s(&want)]);
}

#[test]
fn discard_and_write_zeroes_on_qcow2_read_as_zeros_not_as_the_base() {
    let d = dir();
    let base = write_base(d.path());
    let overlay = d.path().join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    let disk = open(&overlay, Format::Qcow2, false, false).unwrap();
    let mut expected = base_bytes();
    write_at(&*disk, &vec![0x55; 256 * 1024], 0);
    expected[..256 * 1024].fill(0x55);
    // Whole clusters, written and not (the base shows through the latter before the discard).
    disk.discard(0, 128 * 1024).unwrap();
    expected[..128 * 1024].fill(0);
    disk.discard(3 * MIB as u64, 64 * 1024).unwrap();
    expected[3 * MIB..3 * MIB + 64 * 1024].fill(0);
    // Partial clusters.
    disk.discard(130 * 1024, 1024).unwrap();
    expected[130 * 1024..131 * 1024].fill(0);
    disk.write_zeroes(200 * 1024, 4096, false).unwrap();
    expected[200 * 1024..204 * 1024].fill(0);
    disk.write_zeroes(MIB as u64 - 4096, 8192, true).unwrap();
    expected[MIB - 4096..MIB + 4096].fill(0);
    assert!(read_all(&*disk) == expected);
    disk.flush().unwrap();
    drop(disk);
    qemu_img_ok(&["check", s(&overlay)]);
    assert!(std::fs::read(&base).unwrap() == base_bytes());
}

#[test]
fn requests_past_the_end_and_writes_to_read_only_images_fail() {
    let d = dir();
    let base = write_base(d.path());
    let overlay = d.path().join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    for (path, format) in [(&base, Format::Raw), (&overlay, Format::Qcow2)] {
        let disk = open(path, format, false, false).unwrap();
        let mut buf = vec![0u8; 1024];
        let end = disk.size();
        assert!(disk.read(&[buf.as_mut_slice().into()], end - 512).is_err());
        assert!(disk
            .write(&[buf.as_mut_slice().into()], u64::MAX - 10)
            .is_err());
        assert!(disk.discard(end, 512).is_err());
        assert!(disk.write_zeroes(u64::MAX, 2, false).is_err());
        drop(disk);
        let ro = open(path, format, true, false).unwrap();
        assert!(ro.read_only());
        assert!(ro.write(&[buf.as_mut_slice().into()], 0).is_err());
        assert!(ro.discard(0, 512).is_err());
        assert!(ro.write_zeroes(0, 512, false).is_err());
        ro.read(&[buf.as_mut_slice().into()], 0).unwrap();
        ro.flush().unwrap();
    }
    assert!(std::fs::read(&base).unwrap() == base_bytes());
}

#[test]
fn flatten_round_trip_is_sparse_and_exact() {
    let d = dir();
    let base = write_base(d.path());
    let overlay = d.path().join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    let mut expected = base_bytes();
    {
        let disk = open(&overlay, Format::Qcow2, false, false).unwrap();
        write_at(&*disk, b"a file the guest wrote", 2 * MIB as u64);
        expected[2 * MIB..2 * MIB + 22].copy_from_slice(b"a file the guest wrote");
        disk.discard(3 * MIB as u64 + 64 * 1024, 64 * 1024).unwrap();
        expected[3 * MIB + 64 * 1024..3 * MIB + 128 * 1024].fill(0);
    }
    let flat = d.path().join("image.raw");
    flatten(&overlay, &flat).unwrap();
    assert_eq!(names(d.path()), ["base.raw", "image.raw", "vm.qcow2"]);
    let got = std::fs::read(&flat).unwrap();
    assert!(got == expected, "the flattened image is the overlay's disk");
    assert_eq!(detect_format(&flat).unwrap(), Format::Raw);
    // 1 MiB + 4 KiB + 1 MiB - 64 KiB of data; the ~2 MiB of zeros are holes.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&flat).unwrap().blocks() * 512;
    assert!(
        allocated < 3 * MIB as u64,
        "{allocated} bytes allocated for 2 MiB of data"
    );
    qemu_img_ok(&["compare", "-f", "raw", "-F", "qcow2", s(&flat), s(&overlay)]);

    // A flattened image serves as the base of a new overlay, and flattening a raw image copies it.
    let overlay2 = d.path().join("vm2.qcow2");
    create_overlay(&flat, &overlay2).unwrap();
    let flat2 = d.path().join("image2.raw");
    flatten_format(&overlay2, Format::Qcow2, &flat2).unwrap();
    assert!(std::fs::read(&flat2).unwrap() == expected);
    let flat3 = d.path().join("image3.raw");
    flatten(&flat2, &flat3).unwrap();
    assert!(std::fs::read(&flat3).unwrap() == expected);
}

#[test]
fn create_and_flatten_refuse_cleanly_and_leave_nothing_behind() {
    let d = dir();
    let base = write_base(d.path());
    let overlay = d.path().join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    let before = std::fs::read(&overlay).unwrap();

    let e = create_overlay(&base, &overlay).unwrap_err().to_string();
    assert!(e.contains("will not replace it"), "{e}");
    assert!(
        std::fs::read(&overlay).unwrap() == before,
        "the old overlay is untouched"
    );
    let e = flatten(&overlay, &base).unwrap_err().to_string();
    assert!(e.contains("will not replace it"), "{e}");

    let e = create_overlay(&d.path().join("nope.raw"), &d.path().join("x.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.raw: no such file"), "{e}");
    let odd = d.path().join("odd.raw");
    std::fs::write(&odd, [1u8; 1000]).unwrap();
    let e = create_overlay(&odd, &d.path().join("x.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a positive whole number of 512-byte sectors"),
        "{e}"
    );
    let e = create_overlay(d.path(), &d.path().join("x.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("directory"), "{e}");
    let e = create_overlay(&base, &d.path().join("no/such/dir/x.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot create a temporary file"), "{e}");
    // A flatten whose source cannot be read leaves no output.
    let broken = d.path().join("broken.qcow2");
    std::fs::write(&broken, b"QFI\xfb\0\0\0\x03garbage").unwrap();
    assert!(flatten(&broken, &d.path().join("out.raw")).is_err());
    assert_eq!(
        names(d.path()),
        ["base.raw", "broken.qcow2", "odd.raw", "vm.qcow2"]
    );
}

#[test]
fn detect_format_reads_the_magic() {
    let d = dir();
    let p = d.path().join("f");
    for (bytes, want) in [
        (&b""[..], Format::Raw),
        (b"QFI", Format::Raw),
        (b"QFI\xfb", Format::Qcow2),
        (b"\0\0\0\0\0\0\0\0", Format::Raw),
    ] {
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(detect_format(&p).unwrap(), want, "{bytes:?}");
    }
    let e = detect_format(&d.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such file"), "{e}");
    assert_eq!("raw".parse::<Format>().unwrap(), Format::Raw);
    assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
    let e = "vmdk".parse::<Format>().unwrap_err().to_string();
    assert_eq!(e, "unknown image format \"vmdk\": use raw or qcow2");
}

/// An overlay of a 4 MiB base, to be damaged.
fn fresh_overlay(d: &Path) -> (PathBuf, Vec<u8>) {
    let base = write_base(d);
    let overlay = d.join("vm.qcow2");
    create_overlay(&base, &overlay).unwrap();
    {
        let disk = open(&overlay, Format::Qcow2, false, false).unwrap();
        write_at(&*disk, &[0x77; 4096], MIB as u64);
    }
    let bytes = std::fs::read(&overlay).unwrap();
    (overlay, bytes)
}

fn open_err(path: &Path) -> String {
    open(path, Format::Qcow2, false, false)
        .unwrap_err()
        .to_string()
}

fn put_be(bytes: &mut [u8], off: usize, v: &[u8]) {
    bytes[off..off + v.len()].copy_from_slice(v);
}

#[test]
fn hostile_headers_are_refused_with_a_clear_error() {
    let d = dir();
    let (overlay, good) = fresh_overlay(d.path());
    let cases: &[(&str, usize, &[u8], &str)] = &[
        ("bad magic", 0, b"QFI\x00", "Not a qcow2 file"),
        ("version 1", 4, &1u32.to_be_bytes(), "v1 is not supported"),
        ("cluster bits 40", 20, &40u32.to_be_bytes(), "cluster size"),
        (
            "size 2^60",
            24,
            &(1u64 << 60).to_be_bytes(),
            "more than the 64 TiB",
        ),
        ("l1 size 2^31", 36, &(1u32 << 31).to_be_bytes(), "L1"),
        ("unaligned L1 table", 40, &0x10001u64.to_be_bytes(), "L1"),
        (
            "external data file",
            72,
            &4u64.to_be_bytes(),
            "external data file",
        ),
        (
            "unknown incompatible feature",
            72,
            &(1u64 << 40).to_be_bytes(),
            "incompatible",
        ),
        ("encrypted", 32, &1u32.to_be_bytes(), "ncrypt"),
    ];
    for (what, off, value, want) in cases {
        let mut bytes = good.clone();
        put_be(&mut bytes, *off, value);
        std::fs::write(&overlay, &bytes).unwrap();
        let e = match open(&overlay, Format::Qcow2, false, false) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("vm.qcow2") && e.to_lowercase().contains(&want.to_lowercase()),
            "{what}: {e}"
        );
        assert!(!e.contains('\n'), "{what}: one line: {e}");
    }
    // A raw file taken as qcow2 by the caller's word.
    let raw = d.path().join("base.raw");
    let e = open(&raw, Format::Qcow2, true, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Not a qcow2 file"), "{e}");
    // Direct I/O is for raw images.
    let overlay = d.path().join("vm.qcow2");
    let e = open(&overlay, Format::Qcow2, false, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("direct I/O is for raw images"), "{e}");
}

#[test]
fn backing_chains_that_loop_run_deep_or_hide_their_format_are_refused() {
    let d = dir();
    let p = |n: &str| d.path().join(n);
    let mk = |name: &str, backing: &str, fmt: &str| {
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            backing,
            "-F",
            fmt,
            s(&p(name)),
            "4M",
        ]);
    };
    // A names itself; B and C name each other (relative names, resolved beside the image).
    mk("self.qcow2", "self.qcow2", "qcow2");
    mk("b.qcow2", "c.qcow2", "qcow2");
    mk("c.qcow2", "b.qcow2", "qcow2");
    let e = open_err(&p("self.qcow2"));
    assert!(e.contains("backing chain comes back to"), "{e}");
    let e = open_err(&p("b.qcow2"));
    assert!(
        e.contains("backing chain comes back to") && e.contains("b.qcow2"),
        "{e}"
    );
    // A loop through a symbolic link is the same file.
    std::os::unix::fs::symlink(p("l1.qcow2"), p("link.qcow2")).unwrap();
    mk("l1.qcow2", "link.qcow2", "qcow2");
    assert!(open_err(&p("l1.qcow2")).contains("comes back to"));

    // MAX_CHAIN images are fine, one more is not.
    write_base(d.path());
    let mut below = "base.raw".to_string();
    let mut fmt = "raw";
    for i in 1..=MAX_CHAIN {
        let name = format!("layer{i}.qcow2");
        mk(&name, &below, fmt);
        below = name;
        fmt = "qcow2";
    }
    let top = p(&format!("layer{}.qcow2", MAX_CHAIN - 1));
    let disk = open(&top, Format::Qcow2, true, false).unwrap();
    assert!(
        read_all(&*disk) == base_bytes(),
        "a deep legal chain reads its base"
    );
    drop(disk);
    let e = open_err(&p(&below));
    assert!(
        e.contains(&format!("longer than {MAX_CHAIN} images")),
        "{e}"
    );

    // A missing backing file, and a backing format that is neither raw nor qcow2.
    mk("orphan.qcow2", "gone.raw", "raw");
    let e = open_err(&p("orphan.qcow2"));
    assert!(e.contains("gone.raw: no such file"), "{e}");
    mk("vmdk.qcow2", "base.raw", "vmdk");
    let e = open_err(&p("vmdk.qcow2"));
    assert!(e.contains("has format \"vmdk\""), "{e}");

    // No backing format: rename the header extension that holds it (type 0xe2792aca) to a
    // type no one knows, which readers skip.
    std::fs::create_dir(p("nofmt")).unwrap();
    let (_, mut bytes) = fresh_overlay(&p("nofmt"));
    let at = bytes
        .windows(4)
        .position(|w| w == 0xe279_2acau32.to_be_bytes())
        .expect("the overlay has a backing format extension");
    put_be(&mut bytes, at, &0x1234_5678u32.to_be_bytes());
    let nofmt = p("nofmt.qcow2");
    std::fs::write(&nofmt, &bytes).unwrap();
    let e = open_err(&nofmt);
    assert!(e.contains("has no format in the header"), "{e}");
}

/// Each of the first 512 bytes of a used overlay (header, extensions, backing name) set to a
/// few values, then the L1 table's and the refcount table's first entries: opening, reading
/// and writing must fail cleanly or work, never panic or hang.
#[test]
fn damaged_images_never_panic() {
    let d = dir();
    std::fs::create_dir(d.path().join("img")).unwrap();
    let (overlay, good) = fresh_overlay(&d.path().join("img"));
    let try_image = |bytes: &[u8]| {
        std::fs::write(&overlay, bytes).unwrap();
        if let Ok(disk) = open(&overlay, Format::Qcow2, false, false) {
            if disk.size() > 2 * MIB as u64 {
                let mut buf = vec![0u8; 128 * 1024];
                let _ = disk.read(&[buf.as_mut_slice().into()], MIB as u64 - 64 * 1024);
                let _ = disk.write(&[buf.as_mut_slice().into()], 0);
                let _ = disk.discard(MIB as u64, 64 * 1024);
                let _ = disk.flush();
            }
        }
    };
    for off in 0..512 {
        for v in [0x00u8, 0x01, 0xff] {
            if good[off] == v {
                continue;
            }
            let mut bytes = good.clone();
            bytes[off] = v;
            try_image(&bytes);
        }
    }
    let be64 = |at: usize| u64::from_be_bytes(good[at..at + 8].try_into().unwrap()) as usize;
    let (l1, reftable) = (be64(40), be64(48));
    for table in [l1, reftable] {
        for bad in [0u64, 1, 0x200, 1 << 62, u64::MAX, 0x8000_0000_0001_0000] {
            let mut bytes = good.clone();
            put_be(&mut bytes, table, &bad.to_be_bytes());
            try_image(&bytes);
        }
    }
}

#[test]
fn a_batch_on_a_raw_file_moves_each_transfer_and_fails_only_the_bad_ones() {
    let d = dir();
    let base = write_base(d.path());
    let disk = open(&base, Format::Raw, false, false).unwrap();
    let want = base_bytes();
    // Reads of 4 KiB at scattered offsets (each into two buffers), writes between them, one
    // read past the end.
    let mut bufs: Vec<[u8; 2048]> = vec![[0; 2048]; 16];
    let mut data: Vec<Vec<u8>> = (0..4).map(|i| vec![0xc0 + i as u8; 4096]).collect();
    let offsets: Vec<u64> = (0..8).map(|i| (i * 467 % 1000) as u64 * 4096).collect();
    let mut ops = Vec::new();
    let (reads, _) = bufs.split_at_mut(16);
    let mut read_bufs: Vec<Vec<Buffer<'_>>> = reads
        .chunks_mut(2)
        .map(|c| {
            let (a, b) = c.split_at_mut(1);
            vec![a[0].as_mut_slice().into(), b[0].as_mut_slice().into()]
        })
        .collect();
    let write_bufs: Vec<Vec<Buffer<'_>>> = data
        .iter_mut()
        .map(|d| vec![d.as_mut_slice().into()])
        .collect();
    for (i, b) in read_bufs.iter_mut().enumerate() {
        ops.push(Transfer {
            bufs: b,
            offset: offsets[i],
            write: false,
        });
    }
    for (i, b) in write_bufs.iter().enumerate() {
        ops.push(Transfer {
            bufs: b,
            offset: (2000 + 8 * i as u64) * 512,
            write: true,
        });
    }
    let mut spare = vec![0u8; 4096];
    let spare_buf: Vec<Buffer<'_>> = vec![spare.as_mut_slice().into()];
    ops.push(Transfer {
        bufs: &spare_buf,
        offset: disk.size() - 512,
        write: false,
    });
    let results = disk.transfer_batch(&ops);
    assert_eq!(results.len(), ops.len());
    assert!(results[..12].iter().all(|r| r.is_ok()), "{results:?}");
    assert!(results[12].is_err(), "a read past the end fails");
    drop(ops);
    drop(read_bufs);
    for (i, off) in offsets.iter().enumerate() {
        let got = [bufs[2 * i], bufs[2 * i + 1]].concat();
        assert_eq!(got, want[*off as usize..*off as usize + 4096], "read {i}");
    }
    let after = read_all(&*disk);
    for i in 0..4 {
        let at = (2000 + 8 * i) * 512;
        assert!(
            after[at..at + 4096].iter().all(|b| *b == 0xc0 + i as u8),
            "write {i}"
        );
    }
    assert_eq!(after[..2000 * 512], want[..2000 * 512]);

    // A read-only image refuses the batch's writes and serves its reads.
    let ro = open(&base, Format::Raw, true, false).unwrap();
    let mut buf = vec![0u8; 512];
    let rbuf: Vec<Buffer<'_>> = vec![buf.as_mut_slice().into()];
    let wbuf: Vec<Buffer<'_>> = vec![data[0].as_mut_slice().into()];
    let r = ro.transfer_batch(&[
        Transfer {
            bufs: &wbuf,
            offset: 0,
            write: true,
        },
        Transfer {
            bufs: &rbuf,
            offset: 512,
            write: false,
        },
    ]);
    assert_eq!(r[0].as_ref().unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert!(r[1].is_ok());
    drop(rbuf);
    assert_eq!(buf, after[512..1024]);
}

#[test]
fn a_null_disk_checks_like_its_image_and_moves_nothing() {
    let d = dir();
    let base = write_base(d.path());
    let image = open(&base, Format::Raw, false, false).unwrap();
    let null = NullDisk::standing_in_for(&*image);
    assert_eq!(
        (null.size(), null.format(), null.read_only()),
        (image.size(), Format::Raw, false)
    );
    // A read leaves the buffer as it was; a write, a discard and write-zeroes reach nothing.
    let mut buf = vec![0xa5u8; 4096];
    null.read(&[buf.as_mut_slice().into()], 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xa5));
    null.write(&[buf.as_mut_slice().into()], 4096).unwrap();
    null.discard(0, 4096).unwrap();
    null.write_zeroes(MIB as u64, 4096, true).unwrap();
    null.flush().unwrap();
    let mut other = vec![0u8; 512];
    let (a, b): ([Buffer<'_>; 1], [Buffer<'_>; 1]) =
        ([buf.as_mut_slice().into()], [other.as_mut_slice().into()]);
    let results = null.transfer_batch(&[
        Transfer {
            bufs: &a,
            offset: 0,
            write: true,
        },
        Transfer {
            bufs: &b,
            offset: null.size(),
            write: false,
        },
    ]);
    assert!(results[0].is_ok() && results[1].is_err());
    assert!(
        std::fs::read(&base).unwrap() == base_bytes(),
        "the image is untouched"
    );
    // The same refusals as the image: past the end, and writes when read-only.
    let end = null.size();
    assert!(null.read(&[buf.as_mut_slice().into()], end - 512).is_err());
    assert!(null
        .write(&[buf.as_mut_slice().into()], u64::MAX - 10)
        .is_err());
    assert!(null.discard(end, 512).is_err());
    let ro = NullDisk::standing_in_for(&*open(&base, Format::Raw, true, false).unwrap());
    assert!(ro.read_only());
    assert!(ro.write(&[buf.as_mut_slice().into()], 0).is_err());
    assert!(ro.discard(0, 512).is_err());
    assert!(ro.write_zeroes(0, 512, false).is_err());
    ro.read(&[buf.as_mut_slice().into()], 0).unwrap();
}
