//! Entry point for the fuzzer (fuzz/fuzz_targets/virtio_balloon.rs): the device's real queue
//! processing, without the I/O thread around it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{BalloonControl, BalloonHandler, BalloonStatus, Shared, DEFLATE, INFLATE};
use crate::virtio::{GuestMemory, Interrupt};

/// What the I/O thread can ask of the balloon's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Inflate,
    Deflate,
    Stats,
    /// The statistics timer fired.
    StatsTimer,
}

/// Runs `events` on a handler serving `inflate`, `deflate` and, when given, `stats`; returns
/// the queues as the device left them and its status.
pub fn run(
    mem: Arc<GuestMemory>,
    inflate: Queue,
    deflate: Queue,
    stats: Option<Queue>,
    events: &[Event],
) -> (Vec<Queue>, BalloonStatus) {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let shared = BalloonControl(Arc::new(Mutex::new(Shared::default())));
    let mut h = BalloonHandler {
        mem,
        interrupt: Arc::new(Interrupt::new(evt())),
        inflate: (inflate, evt()),
        deflate: (deflate, evt()),
        stats: stats.map(|q| ((q, evt()), TimerFd::new().expect("timerfd"))),
        stats_head: None,
        stats_interval: Duration::from_nanos(1),
        shared: shared.clone(),
    };
    for e in events {
        let _ = match e {
            Event::Inflate => h.process_pfn_queue(INFLATE),
            Event::Deflate => h.process_pfn_queue(DEFLATE),
            Event::Stats => h.process_stats_queue(),
            Event::StatsTimer => {
                // The handler reads the timer only once epoll says it expired: make it so.
                if let Some((_, timer)) = &mut h.stats {
                    timer.reset(Duration::from_nanos(1), None).expect("timerfd");
                }
                h.request_stats()
            }
        };
    }
    let mut queues = vec![h.inflate.0, h.deflate.0];
    queues.extend(h.stats.map(|((q, _), _)| q));
    (queues, shared.status())
}
