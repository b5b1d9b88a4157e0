//! virtio-net: rx and tx queues made from the input, features from the input (within what the
//! device offers), frames from the input waiting on a stand-in TAP, then a sequence of tx
//! notifications, rx notifications and TAP wake-ups from the input.
#![no_main]

use std::collections::VecDeque;
use std::io::{Error, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::fuzz::Handler;
use devices::virtio::net::{Backend, HDR_LEN, MAX_FRAME_LEN, OFFERED_FEATURES};
use devices::virtio::{features, ActivateContext, Interrupt};
use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;
use vmm_sys_util::eventfd::EventFd;

/// A TAP that holds the frames it will hand out and takes anything written.
struct FakeTap {
    fd: EventFd,
    frames: Mutex<VecDeque<Vec<u8>>>,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Backend for FakeTap {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = self
            .frames
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| Error::from(ErrorKind::WouldBlock))?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        assert!(
            frame.len() <= HDR_LEN + MAX_FRAME_LEN,
            "oversize frame sent"
        );
        Ok(frame.len())
    }
    fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let features = (input.u64() & OFFERED_FEATURES) | features::VERSION_1;
    let mem = guest_memory();
    let Some((mut rx, lrx)) = build_queue(&mut input, &mem, 0, 256) else {
        return;
    };
    let Some((mut tx, ltx)) = build_queue(&mut input, &mem, 1, 256) else {
        return;
    };
    let event_idx = features & features::RING_EVENT_IDX != 0;
    use virtio_queue::QueueT;
    rx.set_event_idx(event_idx);
    tx.set_event_idx(event_idx);
    let mut frames = VecDeque::new();
    for _ in 0..input.u8() % 8 {
        let len = usize::from(input.u16()) * if input.u8() & 1 != 0 { 2 } else { 1 };
        let pattern = input.bytes(64);
        let frame: Vec<u8> = if pattern.is_empty() {
            vec![0; len]
        } else {
            pattern.iter().copied().cycle().take(len).collect()
        };
        frames.push_back(frame);
    }
    let nops = usize::from(input.u8() % 16);
    let ops = input.bytes(nops).to_vec();
    fill_data(&mem, &mut input);

    let tap = Arc::new(FakeTap {
        fd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        frames: Mutex::new(frames),
    });
    let ctx = ActivateContext {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        features,
        queues: vec![rx, tx],
        queue_events: vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ],
        restored: false,
    };
    let Ok(mut h) = Handler::new(ctx, tap) else {
        return;
    };
    for op in ops {
        match op % 3 {
            0 => h.process_tx(),
            1 => h.rx_notified(),
            _ => h.tap_edge(),
        }
    }
    check_all_used(&mem, &[(&lrx, h.rx()), (&ltx, h.tx())]);
});
