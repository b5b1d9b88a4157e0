//! virtio-blk: one request queue made from the input (headers, data, discard segments and
//! status bytes all from the fuzzer), served on a 1 MiB scratch disk, writable or read-only.
#![no_main]

use std::sync::{Arc, OnceLock};

use devices::virtio::block::io::DiskFile;
use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;

/// A writable and a read-only view of one sparse 1 MiB file, unlinked once open.
fn disks() -> &'static [Arc<DiskFile>; 2] {
    static DISKS: OnceLock<[Arc<DiskFile>; 2]> = OnceLock::new();
    DISKS.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vireo-fuzz-blk-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .expect("scratch disk");
        let rw = Arc::new(DiskFile::open(&path, false).expect("open rw"));
        let ro = Arc::new(DiskFile::open(&path, true).expect("open ro"));
        let _ = std::fs::remove_file(&path);
        [rw, ro]
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let opts = input.u8();
    let disk = disks()[usize::from(opts & 1)].clone();
    let serial: &[u8] = if opts & 2 != 0 {
        b"vireo-fuzz-serial-20"
    } else {
        b""
    };
    let mem = guest_memory();
    let Some((queue, layout)) = build_queue(&mut input, &mem, 0, 256) else {
        return;
    };
    fill_data(&mem, &mut input);
    let (queue, _broken) =
        devices::virtio::block::fuzz::process_queue(mem.clone(), queue, disk, serial);
    check_used(&mem, &layout, &queue);
});
