//! virtio-blk against crafted queues: what a well-behaved driver asks for, and what a hostile
//! one can put in the ring.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

use super::io::{DiskFile, Segment};
use super::request::MAX_DATA;
use super::*;
use crate::rate_limiter::{BucketConfig, RateLimiter};

const MEM_SIZE: usize = 32 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
/// Sectors in the test disk (1 MiB).
const DISK_SECTORS: u64 = 2048;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// Each of this process's descriptors open on `path` with its access mode (O_RDONLY, O_WRONLY,
/// O_RDWR), from /proc/self/fdinfo.
fn access_modes(path: &std::path::Path) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let fd = e.file_name().to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        if let Some(flags) = info.lines().find_map(|l| l.strip_prefix("flags:")) {
            out.push((
                fd,
                i32::from_str_radix(flags.trim(), 8).unwrap() & libc::O_ACCMODE,
            ));
        }
    }
    out
}

fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

struct Fixture {
    mem: Arc<GuestMemory>,
    file: TempFile,
    /// A qcow2 overlay of `file` that handlers use instead of it, in its own directory.
    overlay: Option<(TempDir, std::path::PathBuf)>,
}

impl Fixture {
    fn new() -> Self {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let file = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..(DISK_SECTORS * 512) as usize).map(pattern).collect();
        std::fs::write(file.as_path(), bytes).unwrap();
        Self {
            mem,
            file,
            overlay: None,
        }
    }

    /// The fixture with handlers on a qcow2 overlay whose base is the fixture's file.
    fn with_overlay() -> Self {
        let mut f = Self::new();
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("overlay.qcow2");
        vireo_storage::create_overlay(f.file.as_path(), &path).unwrap();
        f.overlay = Some((dir, path));
        f
    }

    fn disk(&self, read_only: bool) -> DiskFile {
        match &self.overlay {
            Some((_, p)) => DiskFile::open_image(p, vireo_storage::Format::Qcow2, read_only, false),
            None => DiskFile::open(self.file.as_path(), read_only),
        }
        .unwrap()
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(self.file.as_path()).unwrap()
    }

    fn handler(&self, read_only: bool, limits: Option<BucketConfig>) -> BlockHandler {
        self.handler_with_queue(read_only, limits, &MockSplitQueue::new(&*self.mem, 16))
    }

    fn handler_with_queue(
        &self,
        read_only: bool,
        limits: Option<BucketConfig>,
        vq: &MockSplitQueue<'_, GuestMemory>,
    ) -> BlockHandler {
        BlockHandler::new(
            self.mem.clone(),
            Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            vec![RequestQueue {
                queue: vq.create_queue::<Queue>().unwrap(),
                event: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }],
            Arc::new(self.disk(read_only)),
            b"vireo-serial-1".to_vec(),
            RateLimiter::new(limits, None).unwrap(),
            Default::default(),
        )
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn hdr_desc() -> RawDescriptor {
    desc(HDR, 16, 0)
}

fn status_desc() -> RawDescriptor {
    desc(STATUS, 1, W)
}

/// The used ring's entries so far as (head, len).
fn used(vq: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// Puts a read of sector 0 (512 bytes) in the available ring at descriptor `3 * i`.
fn queue_read(vq: &MockSplitQueue<'_, GuestMemory>, i: u16) {
    let n = VRING_DESC_F_NEXT as u16;
    let chain = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 3 * i + 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, W | n, 3 * i + 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W, 0)),
    ];
    vq.add_desc_chains(&chain, 3 * i).unwrap();
}

/// Runs one chain of `descs` (linked in order) through a fresh handler; returns the used length.
fn run_chain(f: &Fixture, read_only: bool, descs: &[RawDescriptor]) -> u32 {
    let vq = MockSplitQueue::new(&*f.mem, 16);
    vq.build_desc_chain(descs).unwrap();
    let mut h = f.handler_with_queue(read_only, None, &vq);
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.run(None);
    assert!(!h.broken);
    let u = used(&vq);
    assert_eq!(u.len(), 1, "the request was completed");
    u[0].1
}

#[test]
fn read_fills_the_guest_buffers_from_the_file() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 3);
    // Data split over two descriptors of odd sizes.
    let len = run_chain(
        &f,
        false,
        &[
            hdr_desc(),
            desc(DATA, 700, W),
            desc(DATA + 4096, 324, W),
            status_desc(),
        ],
    );
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(len, 1024 + 1);
    let mut got = vec![0u8; 1024];
    f.mem
        .read_slice(&mut got[..700], GuestAddress(DATA))
        .unwrap();
    f.mem
        .read_slice(&mut got[700..], GuestAddress(DATA + 4096))
        .unwrap();
    let want: Vec<u8> = (3 * 512..5 * 512).map(pattern).collect();
    assert_eq!(got, want);
}

#[test]
fn write_then_flush_lands_in_the_file() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_OUT, 10);
    f.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    f.mem
        .write_slice(&[0xa5; 512], GuestAddress(DATA + 8192))
        .unwrap();
    let len = run_chain(
        &f,
        false,
        &[
            hdr_desc(),
            desc(DATA, 512, 0),
            desc(DATA + 8192, 512, 0),
            status_desc(),
        ],
    );
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    let len = run_chain(&f, false, &[hdr_desc(), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    let c = f.contents();
    assert!(c[10 * 512..11 * 512].iter().all(|&b| b == 0x5a));
    assert!(c[11 * 512..12 * 512].iter().all(|&b| b == 0xa5));
    assert_eq!(c[10 * 512 - 1], pattern(10 * 512 - 1), "nothing before");
    assert_eq!(c[12 * 512], pattern(12 * 512), "nothing after");
    assert_eq!(c.len() as u64, DISK_SECTORS * 512, "the size is unchanged");
}

/// The same requests on a qcow2 overlay: reads see the base, writes, discards and
/// write-zeroes land in the overlay only, flush succeeds, and the base file never changes.
#[test]
fn qcow2_overlay_serves_requests_and_leaves_its_base_alone() {
    let f = Fixture::with_overlay();
    let base = f.contents();
    f.header(VIRTIO_BLK_T_IN, 3);
    let len = run_chain(&f, false, &[hdr_desc(), desc(DATA, 1024, W), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1025));
    let mut got = vec![0u8; 1024];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, base[3 * 512..5 * 512]);

    f.header(VIRTIO_BLK_T_OUT, 10);
    f.mem
        .write_slice(&[0x5a; 1024], GuestAddress(DATA))
        .unwrap();
    let len = run_chain(&f, false, &[hdr_desc(), desc(DATA, 1024, 0), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    // Write-zeroes (sectors 100..108) and discard (sectors 1024..1152, whole clusters).
    for (kind, sector, num) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 100u64, 8u32),
        (VIRTIO_BLK_T_DISCARD, 1024, 128),
    ] {
        f.header(kind, 0);
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&num.to_le_bytes());
        f.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        run_chain(&f, false, &[hdr_desc(), desc(DATA, 16, 0), status_desc()]);
        assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8, "request {kind}");
    }
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    run_chain(&f, false, &[hdr_desc(), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);

    assert_eq!(f.contents(), base, "the base file is unchanged");
    let disk = f.disk(true);
    assert_eq!(disk.sectors(), DISK_SECTORS);
    let mut want = base.clone();
    want[10 * 512..12 * 512].fill(0x5a);
    want[100 * 512..108 * 512].fill(0);
    want[1024 * 512..1152 * 512].fill(0);
    drop(disk);
    // Read the whole disk back through the device.
    f.header(VIRTIO_BLK_T_IN, 0);
    let n = want.len() as u32;
    let len = run_chain(&f, false, &[hdr_desc(), desc(DATA, n, W), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, n + 1));
    let mut all = vec![0u8; want.len()];
    f.mem.read_slice(&mut all, GuestAddress(DATA)).unwrap();
    assert!(all == want, "the overlay holds the writes");
}

#[test]
fn header_and_data_may_share_a_descriptor() {
    let f = Fixture::new();
    // ANY_LAYOUT: header and 512 bytes of data in one readable descriptor.
    f.header(VIRTIO_BLK_T_OUT, 1);
    f.mem
        .write_slice(&[0x11; 512], GuestAddress(HDR + 16))
        .unwrap();
    let len = run_chain(&f, false, &[desc(HDR, 16 + 512, 0), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    assert!(f.contents()[512..1024].iter().all(|&b| b == 0x11));
}

#[test]
fn get_id_returns_the_serial_padded_to_20_bytes() {
    let f = Fixture::new();
    f.mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    f.header(VIRTIO_BLK_T_GET_ID, 0);
    let len = run_chain(&f, false, &[hdr_desc(), desc(DATA, 32, W), status_desc()]);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 21));
    let mut id = [0u8; 32];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    let mut want = [0u8; 20].to_vec();
    want[..14].copy_from_slice(b"vireo-serial-1");
    assert_eq!(&id[..20], &want[..]);
    assert!(id[20..].iter().all(|&b| b == 0xee), "nothing past 20 bytes");
}

fn discard_req(f: &Fixture, kind: u32, sector: u64, num: u32, flags: u32) -> u32 {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    f.mem.write_slice(&s, GuestAddress(DATA)).unwrap();
    f.header(kind, 0);
    run_chain(f, false, &[hdr_desc(), desc(DATA, 16, 0), status_desc()])
}

#[test]
fn discard_and_write_zeroes_zero_the_range_only() {
    let f = Fixture::new();
    let len = discard_req(&f, VIRTIO_BLK_T_DISCARD, 64, 64, 0);
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    let c = f.contents();
    assert!(c[64 * 512..128 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[64 * 512 - 1], pattern(64 * 512 - 1));
    assert_eq!(c[128 * 512], pattern(128 * 512));
    assert_eq!(c.len() as u64, DISK_SECTORS * 512, "KEEP_SIZE");

    for flags in [0, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP] {
        let len = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, 300, 3, flags);
        assert_eq!((f.status(), len), (VIRTIO_BLK_S_OK as u8, 1));
    }
    let c = f.contents();
    assert!(c[300 * 512..303 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[303 * 512], pattern(303 * 512));

    // Past the end, or reserved flags: refused, nothing touched.
    let before = f.contents();
    discard_req(&f, VIRTIO_BLK_T_DISCARD, DISK_SECTORS - 1, 2, 0);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    discard_req(&f, VIRTIO_BLK_T_DISCARD, u64::MAX, 2, 0);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, 0, 2, 0x8);
    assert_eq!(f.status(), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(f.contents(), before);
}

#[test]
fn read_only_drive_refuses_writes_and_never_opens_the_file_writable() {
    let f = Fixture::new();
    let before = f.contents();
    f.header(VIRTIO_BLK_T_OUT, 0);
    f.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    run_chain(&f, true, &[hdr_desc(), desc(DATA, 512, 0), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        f.header(kind, 0);
        let mut s = [0u8; 16];
        s[8..12].copy_from_slice(&8u32.to_le_bytes());
        f.mem.write_slice(&s, GuestAddress(DATA)).unwrap();
        run_chain(&f, true, &[hdr_desc(), desc(DATA, 16, 0), status_desc()]);
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    }
    assert_eq!(f.contents(), before);
    // Reads still work.
    f.header(VIRTIO_BLK_T_IN, 0);
    run_chain(&f, true, &[hdr_desc(), desc(DATA, 512, W), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);

    // Every descriptor the drive opens on the image (this one and the handler's) is
    // read-only; the fixture's own one is not counted.
    let fixture_fds = access_modes(f.file.as_path());
    let disk = DiskFile::open(f.file.as_path(), true).unwrap();
    assert!(disk.read_only());
    let h = f.handler(true, None);
    let opened: Vec<_> = access_modes(f.file.as_path())
        .into_iter()
        .filter(|fd| !fixture_fds.contains(fd))
        .collect();
    assert_eq!(opened.len(), 2, "{opened:?}");
    assert!(
        opened.iter().all(|(_, m)| *m == libc::O_RDONLY),
        "{opened:?}"
    );
    drop(h);

    let dev = Block::new(
        handle(),
        Drive {
            disk,
            opts: opts(true),
        },
    );
    let feats = dev.features();
    assert_ne!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(feats & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(feats & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
}

fn handle() -> EventLoopHandle {
    crate::virtio::EventLoop::new().unwrap().handle()
}

fn opts(read_only: bool) -> BlockOptions {
    BlockOptions {
        path: "/unused".into(),
        format: None,
        read_only,
        direct: false,
        serial: None,
        ops_limit: None,
        bytes_limit: None,
        queues: 1,
        poll_us: 0,
        io_engine: IoEngine::Sync,
    }
}

#[test]
fn sector_ranges_past_the_end_fail() {
    let f = Fixture::new();
    for (sector, len) in [
        (DISK_SECTORS, 512),
        (DISK_SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512 + 1, 512),
    ] {
        f.header(VIRTIO_BLK_T_IN, sector);
        let used = run_chain(&f, false, &[hdr_desc(), desc(DATA, len, W), status_desc()]);
        assert_eq!(
            (f.status(), used),
            (VIRTIO_BLK_S_IOERR as u8, 1),
            "sector {sector}"
        );
        f.header(VIRTIO_BLK_T_OUT, sector);
        run_chain(&f, false, &[hdr_desc(), desc(DATA, len, 0), status_desc()]);
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
    }
    // The last sector itself is fine; a length that is not whole sectors is not.
    f.header(VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
    run_chain(&f, false, &[hdr_desc(), desc(DATA, 512, W), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);
    f.header(VIRTIO_BLK_T_IN, 0);
    run_chain(&f, false, &[hdr_desc(), desc(DATA, 100, W), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn oversize_requests_fail_without_io() {
    let f = Fixture::new();
    // A sparse disk big enough that only the size bound can refuse the request.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(f.file.as_path())
        .unwrap();
    file.set_len(1 << 30).unwrap();
    // Three aliased 6 MiB buffers: 18 MiB > MAX_DATA.
    let chunk = 6 << 20;
    assert!(3 * chunk as u64 > MAX_DATA);
    f.header(VIRTIO_BLK_T_IN, 0);
    let len = run_chain(
        &f,
        false,
        &[
            hdr_desc(),
            desc(DATA, chunk, W),
            desc(DATA, chunk, W),
            desc(DATA, chunk, W),
            status_desc(),
        ],
    );
    assert_eq!((f.status(), len), (VIRTIO_BLK_S_IOERR as u8, 1));
}

#[test]
fn unknown_request_types_are_unsupported() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_SCSI_CMD, 0);
    run_chain(&f, false, &[hdr_desc(), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn malformed_chains_fail_the_request_only() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 0);
    // Write-only header: nothing readable to parse.
    run_chain(
        &f,
        false,
        &[desc(HDR, 16, W), desc(DATA, 512, W), status_desc()],
    );
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    // Short header.
    run_chain(
        &f,
        false,
        &[desc(HDR, 8, 0), desc(DATA, 512, W), status_desc()],
    );
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    // Header outside guest memory.
    run_chain(
        &f,
        false,
        &[desc(MEM_SIZE as u64 + 4096, 16, 0), status_desc()],
    );
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    // Data outside guest memory, or straddling its end: IOERR, and nothing read into it.
    for addr in [MEM_SIZE as u64 + 4096, MEM_SIZE as u64 - 256, u64::MAX - 10] {
        run_chain(&f, false, &[hdr_desc(), desc(addr, 512, W), status_desc()]);
        assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8, "{addr:#x}");
    }
    // A readable descriptor after a writable one.
    f.header(VIRTIO_BLK_T_OUT, 0);
    run_chain(
        &f,
        false,
        &[
            hdr_desc(),
            desc(DATA, 512, W),
            desc(DATA, 512, 0),
            status_desc(),
        ],
    );
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    // Data in the wrong direction: an IN with readable data, an OUT with writable data.
    run_chain(&f, false, &[hdr_desc(), desc(DATA, 512, W), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
    f.header(VIRTIO_BLK_T_IN, 0);
    run_chain(&f, false, &[hdr_desc(), desc(DATA, 512, 0), status_desc()]);
    assert_eq!(f.status(), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn chains_without_a_usable_status_byte_complete_with_nothing_written() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 0);
    let before = f.contents();
    // Last descriptor readable: no status byte.
    assert_eq!(run_chain(&f, false, &[hdr_desc(), desc(STATUS, 1, 0)]), 0);
    assert_eq!(f.status(), 0xff, "status untouched");
    // Status byte outside guest memory.
    assert_eq!(
        run_chain(&f, false, &[hdr_desc(), desc(MEM_SIZE as u64, 1, W)]),
        0
    );
    // A zero-length last descriptor.
    assert_eq!(run_chain(&f, false, &[hdr_desc(), desc(STATUS, 0, W)]), 0);
    // Only a header.
    assert_eq!(run_chain(&f, false, &[hdr_desc()]), 0);
    f.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run_chain(&f, false, &[hdr_desc(), desc(DATA, 512, 0)]), 0);
    assert_eq!(f.contents(), before, "no write without a status byte");
}

#[test]
fn looping_chains_fail_and_the_queue_goes_on() {
    let f = Fixture::new();
    let vq = MockSplitQueue::new(&*f.mem, 16);
    f.header(VIRTIO_BLK_T_IN, 0);
    let n = VRING_DESC_F_NEXT as u16;
    // 0 -> 1 -> 2 -> 1 -> ...: the status descriptor points back.
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, W | n, 2)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | n, 1)),
    ];
    vq.add_desc_chains(&looped, 0).unwrap();
    // A next index outside the table.
    let wild = [RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 200))];
    vq.add_desc_chains(&wild, 3).unwrap();
    // Then a good request.
    let good = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 5)),
        RawDescriptor::from(SplitDescriptor::new(DATA + 4096, 512, W | n, 6)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W, 0)),
    ];
    vq.add_desc_chains(&good, 4).unwrap();
    let mut h = f.handler_with_queue(false, None, &vq);
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.run(None);
    assert!(!h.broken);
    assert_eq!(used(&vq), vec![(0, 0), (3, 0), (4, 513)]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);
    let mut got = [0u8; 512];
    f.mem
        .read_slice(&mut got, GuestAddress(DATA + 4096))
        .unwrap();
    assert_eq!(got[..], (0..512).map(pattern).collect::<Vec<_>>()[..]);
}

#[test]
fn broken_rings_stop_the_device_without_panicking() {
    let f = Fixture::new();
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let mut h = f.handler_with_queue(false, None, &vq);
    // Move the used ring outside guest memory once a request is there to complete.
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    vq.build_desc_chain(&[hdr_desc(), status_desc()]).unwrap();
    h.queues[0]
        .queue
        .set_used_ring_address(Some(MEM_SIZE as u32 + 0x1000), Some(0));
    h.run(None);
    assert!(h.broken);
    h.run(None);
}

#[test]
fn the_ops_limit_holds_requests_until_tokens_return() {
    let f = Fixture::new();
    let vq = MockSplitQueue::new(&*f.mem, 16);
    f.header(VIRTIO_BLK_T_IN, 0);
    for i in 0..3u16 {
        queue_read(&vq, i);
    }
    let limit = BucketConfig {
        size: 2,
        one_time_burst: 0,
        refill_time_ms: 3_600_000,
    };
    let mut h = f.handler_with_queue(false, Some(limit), &vq);
    h.run(None);
    assert_eq!(used(&vq).len(), 2, "two tokens, two requests");
    assert!(h.limiter.is_blocked());
    // A queue notification while blocked serves nothing.
    h.run(None);
    assert_eq!(used(&vq).len(), 2);
    // Lifting the limit lets the held request through on the timer.
    h.limiter.update(None, None);
    h.limiter.on_timer();
    h.run(None);
    assert_eq!(used(&vq), vec![(0, 513), (3, 513), (6, 513)]);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let f = Fixture::new();
    let disk = DiskFile::open(f.file.as_path(), false).unwrap();
    let dev = Block::new(
        handle(),
        Drive {
            disk,
            opts: opts(false),
        },
    );
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut b = [0u8; 4];
    dev.read_config(offset_of!(virtio_blk_config, seg_max) as u64, &mut b);
    assert_eq!(u32::from_le_bytes(b), request::SEG_MAX);
    dev.read_config(offset_of!(virtio_blk_config, blk_size) as u64, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512);
    dev.read_config(
        offset_of!(virtio_blk_config, max_discard_seg) as u64,
        &mut b,
    );
    assert_eq!(u32::from_le_bytes(b), 1);
    let mut far = [0xffu8; 8];
    dev.read_config(4096, &mut far);
    assert_eq!(far, [0; 8]);
    dev.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 8]);
    let feats = dev.features();
    for b in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(feats & (1 << b), 0, "feature {b}");
    }
    assert_eq!(feats & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(feats & features::RING_EVENT_IDX, 0);
}

#[test]
fn missing_files_and_long_serials_are_refused() {
    let mut o = opts(false);
    o.path = "/nonexistent/vireo-disk.img".into();
    let e = Drive::open(o.clone()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "drive: cannot open /nonexistent/vireo-disk.img: no such file"
    );
    let f = Fixture::new();
    o.path = f.file.as_path().to_path_buf();
    o.serial = Some("x".repeat(21));
    assert!(Drive::open(o.clone()).is_err());
    o.serial = Some("x".repeat(20));
    assert!(Drive::open(o).is_ok());
}

#[test]
fn stats_count_operations_bytes_errors_and_latency() {
    let f = Fixture::new();
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let n = VRING_DESC_F_NEXT as u16;
    // (type, sector, data length, device-writable data): a 1 KiB read, a 512-byte write, a
    // flush, and a read past the end of the disk (an error moving nothing).
    let reqs = [
        (VIRTIO_BLK_T_IN, 0, 1024, true),
        (VIRTIO_BLK_T_OUT, 4, 512, false),
        (VIRTIO_BLK_T_FLUSH, 0, 0, false),
        (VIRTIO_BLK_T_IN, DISK_SECTORS, 512, true),
    ];
    let mut first = 0u16;
    for (i, &(kind, sector, len, writable)) in reqs.iter().enumerate() {
        let hdr = HDR + 0x100 * i as u64;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        f.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let status = STATUS + i as u64;
        let mut chain = vec![RawDescriptor::from(SplitDescriptor::new(
            hdr,
            16,
            n,
            first + 1,
        ))];
        if len > 0 {
            let flags = if writable { W | n } else { n };
            let data = DATA + 0x1_0000 * i as u64;
            chain.push(RawDescriptor::from(SplitDescriptor::new(
                data,
                len,
                flags,
                first + 2,
            )));
        }
        chain.push(RawDescriptor::from(SplitDescriptor::new(status, 1, W, 0)));
        vq.add_desc_chains(&chain, first).unwrap();
        first += chain.len() as u16;
    }
    let mut h = f.handler_with_queue(false, None, &vq);
    h.run(None);
    assert_eq!(used(&vq).len(), 4);
    let s = &h.stats;
    assert_eq!(
        (
            s.reads.get(),
            s.writes.get(),
            s.flushes.get(),
            s.discards.get()
        ),
        (2, 1, 1, 0)
    );
    assert_eq!((s.read_bytes.get(), s.written_bytes.get()), (1024, 512));
    assert_eq!(s.errors.get(), 1, "the read past the end");
    assert_eq!(s.requests.get(), 4);
    let l = s.latency.snapshot();
    assert_eq!(l.count, 4);
    assert!(l.sum_seconds > 0.0);
}

/// The used ring's flags word, where the device asks the driver not to notify it.
fn used_flags(f: &Fixture, vq: &MockSplitQueue<'_, GuestMemory>) -> u16 {
    f.mem.read_obj(vq.used_addr()).unwrap()
}

const NO_NOTIFY: u16 = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

#[test]
fn a_polling_drive_serves_unnotified_requests_then_turns_notifications_back_on() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 0);
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let mut h = f.handler_with_queue(false, None, &vq);
    h.poll_window = Duration::from_millis(50);
    queue_read(&vq, 0);
    h.run(Some(0));
    assert_eq!(used(&vq).len(), 1);
    // The guest is told not to notify while the drive polls.
    assert_eq!(used_flags(&f, &vq), NO_NOTIFY);
    let start = h.polling_until.expect("polling") - h.poll_window;

    // A request the guest queued without notifying is served by the next poll.
    queue_read(&vq, 1);
    assert!(h.poll(start + Duration::from_millis(10)));
    assert_eq!(used(&vq).len(), 2);
    assert_eq!(used_flags(&f, &vq), NO_NOTIFY);
    // Nothing to do within the window: go on polling.
    assert!(h.poll(start + Duration::from_millis(20)));
    // The window (from the last request) passes: notifications are on again.
    assert!(!h.poll(start + Duration::from_millis(61)));
    assert_eq!(used_flags(&f, &vq), 0);
    assert_eq!(h.polling_until, None);
    assert!(
        !h.poll(start + Duration::from_millis(100)),
        "idle until notified"
    );
}

/// A device I/O thread for a test; stopped and joined by `stop`.
struct TestIoThread {
    io: EventLoopHandle,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl TestIoThread {
    fn start() -> Self {
        let mut event_loop = crate::virtio::EventLoop::new().unwrap();
        let io = event_loop.handle();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || event_loop.run_until(|| stop.load(Ordering::SeqCst)))
        };
        Self { io, stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.io.kick();
        self.thread.join().unwrap();
    }
}

#[test]
fn a_polling_drive_is_served_by_the_io_thread_without_notifications() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 0);
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let mut h = f.handler_with_queue(false, None, &vq);
    h.poll_window = Duration::from_secs(5);
    h.polling_until = Some(Instant::now() + h.poll_window);
    let t = TestIoThread::start();
    let h = Arc::new(Mutex::new(h));
    let id = t.io.add_polled(h.clone()).unwrap();
    // No eventfd write: only polling can find these.
    for i in 0..3 {
        queue_read(&vq, i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while used(&vq).len() < usize::from(i) + 1 {
            assert!(
                Instant::now() < deadline,
                "request {i} not served by polling"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(h.lock().unwrap().stats.notifications.get(), 0);
    t.io.remove(id);
    t.stop();
}

#[test]
fn every_ready_queue_is_served_and_a_bad_one_stops_the_drive() {
    let f = Fixture::new();
    f.header(VIRTIO_BLK_T_IN, 0);
    let vq0 = MockSplitQueue::new(&*f.mem, 16);
    let vq1 = MockSplitQueue::create(&*f.mem, GuestAddress(0x40_0000), 16);
    let mut h = f.handler_with_queue(false, None, &vq0);
    h.queues.push(RequestQueue {
        queue: vq1.create_queue::<Queue>().unwrap(),
        event: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    });
    queue_read(&vq1, 0);
    let kick1 = h.queues[1].event.try_clone().unwrap();
    let stats = h.stats.clone();
    let h = Arc::new(Mutex::new(h));
    let t = TestIoThread::start();
    let id = t.io.add(h.clone()).unwrap();
    // A notification of queue 1 serves queue 1 and interrupts the guest.
    kick1.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.interrupts.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "queue 1's notification not served"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t.io.remove(id);
    t.stop();
    assert_eq!((used(&vq0).len(), used(&vq1).len()), (0, 1));
    assert_eq!((stats.interrupts.get(), stats.notifications.get()), (1, 1));
    let mut h = h.lock().unwrap();
    // The rate limiter's timer serves them all.
    queue_read(&vq0, 0);
    queue_read(&vq1, 1);
    h.run(None);
    assert_eq!((used(&vq0).len(), used(&vq1).len()), (1, 2));
    // Queue 1's avail index jumps more than a queue ahead: the drive stops.
    vq1.avail().idx().store(100);
    h.run(None);
    assert!(h.broken);
}

#[test]
fn queues_poll_us_and_io_engine_are_checked_when_the_drive_opens() {
    let f = Fixture::new();
    for (queues, poll_us, want) in [
        (0, 0, "queues=0 is out of range (1 to 16)"),
        (17, 0, "queues=17 is out of range (1 to 16)"),
        (1, 10_001, "poll_us=10001 is out of range (0 to 10000)"),
    ] {
        let o = BlockOptions {
            path: f.file.as_path().to_path_buf(),
            queues,
            poll_us,
            ..opts(false)
        };
        let e = Drive::open(o).unwrap_err().to_string();
        assert!(e.ends_with(want), "{e}");
    }
    let overlay = Fixture::with_overlay();
    let o = BlockOptions {
        path: overlay.overlay.as_ref().unwrap().1.clone(),
        io_engine: IoEngine::IoUring,
        ..opts(false)
    };
    let e = Drive::open(o).unwrap_err().to_string();
    assert!(
        e.ends_with("io_engine=io_uring is for raw images, not qcow2"),
        "{e}"
    );
    let o = BlockOptions {
        path: f.file.as_path().to_path_buf(),
        queues: 4,
        ..opts(false)
    };
    let b = Block::new(handle(), Drive::open(o).unwrap());
    assert_eq!(b.queue_max_sizes(), &[256; 4]);
    assert_ne!(b.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    let mut n = [0u8; 2];
    b.read_config(offset_of!(virtio_blk_config, num_queues) as u64, &mut n);
    assert_eq!(u16::from_le_bytes(n), 4);
    let one = Block::new(
        handle(),
        Drive::open(BlockOptions {
            path: f.file.as_path().to_path_buf(),
            ..opts(false)
        })
        .unwrap(),
    );
    assert_eq!(one.features() & (1 << VIRTIO_BLK_F_MQ), 0);
}

/// A machine restored from a snapshot taken while its drive polled has the guest's
/// notifications off in guest memory: the drive turns them back on as it starts, or a guest
/// that then goes idle would never be heard again.
#[test]
fn a_polling_drive_turns_notifications_back_on_when_it_starts() {
    let f = Fixture::new();
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_ready(true);
    f.mem.write_obj(NO_NOTIFY, vq.used_addr()).unwrap();
    let t = TestIoThread::start();
    let drive = Drive::open(BlockOptions {
        path: f.file.as_path().to_path_buf(),
        poll_us: 1000,
        ..opts(false)
    })
    .unwrap();
    let mut b = Block::new(t.io.clone(), drive);
    b.activate(ActivateContext {
        mem: f.mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        features: 0,
        queues: vec![queue],
        queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        restored: true,
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_flags(&f, &vq) != 0 {
        assert!(Instant::now() < deadline, "notifications stayed off");
        std::thread::sleep(Duration::from_millis(1));
    }
    b.reset();
    t.stop();
}

/// Reads, writes, a flush and bad requests queued together: each request gets its own status
/// and length, in the order queued, with io_engine=io_uring on a raw image (the reads and
/// writes between the others go to the disk as one io_uring batch) and one request after the
/// other (raw image, qcow2 overlay).
#[test]
fn requests_queued_together_each_complete_with_their_own_status() {
    for (f, batching) in [
        (Fixture::new(), true),
        (Fixture::new(), false),
        (Fixture::with_overlay(), false),
    ] {
        let vq = MockSplitQueue::new(&*f.mem, 64);
        let n = VRING_DESC_F_NEXT as u16;
        let mut next = 0u16;
        let mut want = Vec::new();
        for i in 0..12u64 {
            let (hdr, mut data, status) = (HDR + 16 * i, DATA + 4096 * i, STATUS + i);
            let (kind, sector, len, flags) = match i {
                3 => (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 4096, W), // past the end
                // Into a buffer that runs past the end of guest memory.
                8 => {
                    data = MEM_SIZE as u64 - 2048;
                    (VIRTIO_BLK_T_IN, 0, 4096, W)
                }
                6 => (VIRTIO_BLK_T_FLUSH, 0, 0, 0),
                i if i % 2 == 0 => (VIRTIO_BLK_T_IN, 8 * i, 4096, W),
                i => (VIRTIO_BLK_T_OUT, 1000 + 8 * i, 4096, 0),
            };
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            f.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            f.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
            if kind == VIRTIO_BLK_T_OUT {
                f.mem
                    .write_slice(&[0x10 + i as u8; 4096], GuestAddress(data))
                    .unwrap();
            }
            let mut chain = vec![RawDescriptor::from(SplitDescriptor::new(
                hdr,
                16,
                n,
                next + 1,
            ))];
            if len > 0 {
                chain.push(RawDescriptor::from(SplitDescriptor::new(
                    data,
                    len,
                    flags | n,
                    next + 2,
                )));
            }
            chain.push(RawDescriptor::from(SplitDescriptor::new(status, 1, W, 0)));
            vq.add_desc_chains(&chain, next).unwrap();
            let (st, used_len) = match (i, kind) {
                (3 | 8, _) => (VIRTIO_BLK_S_IOERR, 1),
                (_, VIRTIO_BLK_T_IN) => (VIRTIO_BLK_S_OK, 4097),
                _ => (VIRTIO_BLK_S_OK, 1),
            };
            want.push((u32::from(next), used_len, st as u8));
            next += chain.len() as u16;
        }
        let mut h = f.handler_with_queue(false, None, &vq);
        h.batching = batching;
        h.run(None);
        assert!(!h.broken);
        let got: Vec<(u32, u32, u8)> = used(&vq)
            .into_iter()
            .zip(0..)
            .map(|((head, len), i)| (head, len, f.mem.read_obj(GuestAddress(STATUS + i)).unwrap()))
            .collect();
        assert_eq!(got, want);
        let disk = f.disk(true);
        let mut sector = vec![0u8; 4096];
        for i in 0..12u64 {
            let data = GuestAddress(DATA + 4096 * i);
            match i {
                3 | 6 | 8 => {}
                i if i % 2 == 0 => {
                    f.mem.read_slice(&mut sector, data).unwrap();
                    let at = (8 * i * 512) as usize;
                    let want: Vec<u8> = (at..at + 4096).map(pattern).collect();
                    assert_eq!(sector, want, "read {i}");
                }
                i => {
                    f.mem.write_slice(&[0u8; 4096], data).unwrap();
                    disk.read_to_guest(
                        &f.mem,
                        &[Segment {
                            addr: data,
                            len: 4096,
                        }],
                        (1000 + 8 * i) * 512,
                    )
                    .unwrap();
                    f.mem.read_slice(&mut sector, data).unwrap();
                    assert!(sector.iter().all(|b| *b == 0x10 + i as u8), "write {i}");
                }
            }
        }
        assert_eq!(h.stats.reads.get(), 6);
        assert_eq!(h.stats.writes.get(), 5);
        assert_eq!(h.stats.errors.get(), 2);
        // Batched: 0-2 (before the read past the end), 4-5 (before the flush), 7-11.
        let batches = (h.stats.batches.get(), h.stats.batched.get());
        assert_eq!(batches, if batching { (3, 10) } else { (0, 0) });
    }
}

#[test]
fn a_null_engine_drive_completes_requests_without_touching_the_file_or_the_buffers() {
    let f = Fixture::new();
    let drive = Drive::open(BlockOptions {
        path: f.file.as_path().to_path_buf(),
        io_engine: IoEngine::Null,
        ..opts(false)
    })
    .unwrap();
    assert_eq!(drive.disk.sectors(), DISK_SECTORS, "the file's size");
    let vq = MockSplitQueue::new(&*f.mem, 16);
    let mut h = BlockHandler::new(
        f.mem.clone(),
        Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        vec![RequestQueue {
            queue: vq.create_queue::<Queue>().unwrap(),
            event: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }],
        Arc::new(drive.disk),
        b"null".to_vec(),
        RateLimiter::new(None, None).unwrap(),
        Default::default(),
    );
    // A read of sector 0 completes with its length, and the buffer keeps what it held.
    f.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    f.header(VIRTIO_BLK_T_IN, 0);
    queue_read(&vq, 0);
    h.run(None);
    assert_eq!(used(&vq), vec![(0, 513)]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);
    let mut got = [0u8; 512];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0xee; 512]);
    // A write completes, and the file stays as it was.
    f.header(VIRTIO_BLK_T_OUT, 0);
    let n = VRING_DESC_F_NEXT as u16;
    vq.add_desc_chains(
        &[
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, n, 4)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, n, 5)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W, 0)),
        ],
        3,
    )
    .unwrap();
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.run(None);
    assert_eq!(used(&vq), vec![(0, 513), (3, 1)]);
    assert_eq!(f.status(), VIRTIO_BLK_S_OK as u8);
    let want: Vec<u8> = (0..(DISK_SECTORS * 512) as usize).map(pattern).collect();
    assert!(f.contents() == want, "the file is untouched");
}
