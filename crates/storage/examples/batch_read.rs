//! What io_engine=io_uring buys on a given disk: 4 KiB random direct reads from a raw image,
//! N at a time, one after the other (io_engine=sync) and as one batch (io_engine=io_uring),
//! 3 seconds each, for N = 1, 4 and 16.
//!
//!   cargo run --release -p vireo-storage --example batch_read -- IMAGE
//!
//! IMAGE: a raw file (at least a few MiB, written, not sparse) on a file system that takes
//! O_DIRECT; it is only read.

use std::time::{Duration, Instant};

use vireo_storage::{open, Buffer, Format, Transfer};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: batch_read IMAGE");
        std::process::exit(2);
    };
    let disk = match open(path.as_ref(), Format::Raw, true, true) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("batch_read: {e}");
            std::process::exit(1);
        }
    };
    let blocks = disk.size() / 4096;
    if blocks == 0 {
        eprintln!("batch_read: {path} is smaller than 4 KiB");
        std::process::exit(1);
    }
    // Direct I/O wants page-aligned buffers.
    let mut mem = vec![0u8; 17 * 4096];
    let skip = mem.as_ptr().align_offset(4096);
    let aligned = &mut mem[skip..skip + 16 * 4096];
    // xorshift64: offsets spread over the whole image.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut offset = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 4096
    };
    for depth in [1usize, 4, 16] {
        for batch in [false, true] {
            let start = Instant::now();
            let mut reads = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                let bufs: Vec<Vec<Buffer<'_>>> = aligned[..depth * 4096]
                    .chunks_mut(4096)
                    .map(|c| vec![c.into()])
                    .collect();
                let ops: Vec<Transfer<'_, '_>> = bufs
                    .iter()
                    .map(|b| Transfer {
                        bufs: b,
                        offset: offset(),
                        write: false,
                    })
                    .collect();
                let results = match batch {
                    true => disk.transfer_batch(&ops),
                    false => ops.iter().map(|op| disk.read(op.bufs, op.offset)).collect(),
                };
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    eprintln!("batch_read: {e}");
                    std::process::exit(1);
                }
                reads += depth as u64;
            }
            let engine = if batch { "io_uring" } else { "sync" };
            let iops = reads as f64 / start.elapsed().as_secs_f64();
            println!("{depth:>2} at a time, io_engine={engine:<8} {iops:>9.0} IOPS");
        }
    }
}
