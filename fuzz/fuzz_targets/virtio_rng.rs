//! virtio-rng: one request queue made from the input, served as a notification does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_memory();
    let Some((queue, layout)) = build_queue(&mut input, &mem, 0, 256) else {
        return;
    };
    fill_data(&mem, &mut input);
    let (queue, _result) = devices::virtio::rng::fuzz::process_queue(mem.clone(), queue);
    check_used(&mem, &layout, &queue);
});
