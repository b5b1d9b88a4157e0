//! virtio-balloon: inflate, deflate and (optionally) statistics queues made from the input,
//! then a sequence of queue notifications and statistics-timer expiries from the input.
#![no_main]

use devices::virtio::balloon::fuzz::{run, Event};
use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let opts = input.u8();
    let mem = guest_memory();
    let Some((inflate, l0)) = build_queue(&mut input, &mem, 0, 256) else {
        return;
    };
    let Some((deflate, l1)) = build_queue(&mut input, &mem, 1, 256) else {
        return;
    };
    let (stats, l2) = if opts & 1 != 0 {
        let Some((q, l)) = build_queue(&mut input, &mem, 2, 256) else {
            return;
        };
        (Some(q), Some(l))
    } else {
        (None, None)
    };
    let n = usize::from(input.u8() % 16);
    let events: Vec<Event> = input
        .bytes(n)
        .iter()
        .map(|b| match b % 4 {
            0 => Event::Inflate,
            1 => Event::Deflate,
            2 => Event::Stats,
            _ => Event::StatsTimer,
        })
        .collect();
    fill_data(&mem, &mut input);
    let (queues, status) = run(mem.clone(), inflate, deflate, stats, &events);
    // Inflating releases pages (MADV_DONTNEED): rings in them read back as zeros, so the used
    // rings are only checked when nothing was released.
    if status.inflated_pages == 0 {
        let layouts: Vec<QueueLayout> = [Some(l0), Some(l1), l2].into_iter().flatten().collect();
        let pairs: Vec<_> = layouts.iter().zip(queues.iter()).collect();
        check_all_used(&mem, &pairs);
    }
});
