//! Virtio devices, apart from their transport.
//!
//! A device model implements [`VirtioDevice`]: what it offers (type, features, queues, config
//! space) and what it does once the driver is ready ([`VirtioDevice::activate`]). The transport
//! ([`mmio::MmioTransport`]) owns everything the guest programs through registers and hands the
//! device its queues, their notification eventfds and an [`Interrupt`] at activation. Device
//! work then runs on the VMM's I/O thread ([`EventLoop`]): a vCPU's queue notification is an
//! ioeventfd write that KVM completes without leaving the guest, and the device's interrupt is
//! an irqfd write, so vCPUs never wait on a disk or a socket.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, MutEventSubscriber, RemoteEndpoint, SubscriberId};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it. Every write through vm-memory marks its page in the
/// region's dirty bitmap, so that live migration also resends pages the devices wrote (KVM's
/// dirty log sees only the vCPUs' writes).
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Device IDs (virtio 1.2, 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const VSOCK: u32 = 19;
}

/// Feature bits common to every device.
pub mod features {
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Why a device raises its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    UsedBuffer = 1,
    ConfigChange = 2,
}

/// A device's interrupt line with its interrupt-status register.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    pub fn trigger(&self, kind: InterruptKind) {
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("cannot signal a virtio interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the status bits to those of a snapshot, without raising the interrupt.
    pub fn restore(&self, bits: u32) {
        self.status.store(bits & 3, Ordering::SeqCst);
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

/// Serves a driver's read of `data.len()` bytes at `offset` in a device's configuration space
/// `config`: any offset and length are accepted, and bytes beyond the space read as zero.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: Arc<GuestMemory>,
    pub interrupt: Arc<Interrupt>,
    /// The negotiated features.
    pub features: u64,
    /// Every queue the device declared, as the driver configured it.
    pub queues: Vec<Queue>,
    /// The eventfd KVM signals when the driver notifies each queue.
    pub queue_events: Vec<EventFd>,
    /// The device ran before a snapshot or a migration and starts again from its saved state;
    /// what lived only in the old VMM process (a vsock device's connections) is gone.
    pub restored: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or not valid")]
    BadQueue(usize),
    #[error("cannot start the device's I/O handler: {0}")]
    Handler(String),
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The maximum size of each queue the device has.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; the default ignores writes.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver is ready: start serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving the queues and forget the session.
    fn reset(&mut self);
    /// Takes back what the driver and the host had put in the configuration space, from the
    /// bytes a snapshot read from it (hostile input: check it). Default: nothing to take back.
    fn restore_config(&mut self, _config: &[u8]) {}
}

/// The subscriber type the I/O thread runs.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device handler that can serve its queues without waiting for the guest's notification.
/// While it says it is busy the I/O thread calls it between rounds of events instead of
/// sleeping (busy polling): the guest's requests then cost it no VM exit, at the price of a
/// host CPU spent looking at the rings.
pub trait Poller: Send {
    /// Serves whatever the guest has queued; returns whether to be called again without
    /// waiting for an event (false: the handler stopped polling and turned the guest's
    /// notifications back on).
    fn poll(&mut self, now: Instant) -> bool;
}

type Pollers = Arc<Mutex<Vec<(SubscriberId, Arc<Mutex<dyn Poller>>)>>>;

/// The VMM's device I/O thread: an epoll loop that runs every active device's handler, and
/// polls the handlers that poll.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    pollers: Pollers,
}

impl EventLoop {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            manager: EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?,
            pollers: Pollers::default(),
        })
    }

    /// A handle through which other threads add and remove device handlers.
    pub fn handle(&self) -> EventLoopHandle {
        EventLoopHandle {
            remote: self.manager.remote_endpoint(),
            pollers: self.pollers.clone(),
        }
    }

    /// Runs until `stop` returns true after a wake-up. While a handler polls, epoll does not
    /// sleep, so the other devices' events (and freeze requests) are still served.
    pub fn run_until(&mut self, stop: impl Fn() -> bool) {
        let mut polling = false;
        while !stop() {
            let timeout_ms = if polling { 0 } else { 100 };
            if let Err(e) = self.manager.run_with_timeout(timeout_ms) {
                tracing::error!("device I/O loop: {e:?}");
            }
            polling = self.poll();
        }
    }

    /// Calls every polling handler once; true if one of them wants to go on.
    fn poll(&self) -> bool {
        let pollers = self.pollers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut busy = false;
        for (_, p) in pollers.iter() {
            busy |= p.lock().unwrap_or_else(|e| e.into_inner()).poll(now);
        }
        busy
    }
}

/// Adds and removes device handlers on the I/O thread from any other thread.
#[derive(Clone)]
pub struct EventLoopHandle {
    remote: RemoteEndpoint<Subscriber>,
    pollers: Pollers,
}

impl EventLoopHandle {
    pub fn add(&self, s: Subscriber) -> Result<SubscriberId, ActivateError> {
        self.remote
            .call_blocking(move |ops| -> Result<SubscriberId, event_manager::Error> {
                Ok(ops.add_subscriber(s))
            })
            .map_err(|e| ActivateError::Handler(format!("{e:?}")))
    }

    /// Adds a handler that the I/O thread also polls (see [`Poller`]).
    pub fn add_polled<H>(&self, h: Arc<Mutex<H>>) -> Result<SubscriberId, ActivateError>
    where
        H: MutEventSubscriber + Poller + Send + 'static,
    {
        let id = self.add(h.clone())?;
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, h));
        Ok(id)
    }

    pub fn remove(&self, id: SubscriberId) {
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
        let r = self
            .remote
            .call_blocking(move |ops| ops.remove_subscriber(id).map(|_| ()));
        if let Err(e) = r {
            tracing::warn!("cannot remove a device handler: {e:?}");
        }
    }

    /// Stops the I/O thread until the returned guard is dropped: no device touches guest
    /// memory or its queues meanwhile (snapshots, the last round of a migration).
    pub fn freeze(&self) -> Result<IoFreeze, ActivateError> {
        self.request_freeze()?.wait()
    }

    /// Asks the I/O thread to stop without waiting for it (the caller does other work, then
    /// waits on the returned request).
    pub fn request_freeze(&self) -> Result<PendingFreeze, ActivateError> {
        let (parked_tx, parked_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        self.remote
            .fire(move |_| {
                let _ = parked_tx.send(());
                // Returns when the guard (the sender) is dropped.
                let _ = release_rx.recv();
            })
            .map_err(|e| ActivateError::Handler(format!("{e:?}")))?;
        Ok(PendingFreeze {
            parked: parked_rx,
            release: release_tx,
        })
    }

    pub fn kick(&self) {
        let _ = self.remote.kick();
    }
}

/// A freeze asked for and perhaps not yet in effect.
pub struct PendingFreeze {
    parked: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

impl PendingFreeze {
    /// Waits (10 s at most) until the I/O thread has stopped.
    pub fn wait(self) -> Result<IoFreeze, ActivateError> {
        self.parked
            .recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| ActivateError::Handler("the device I/O thread did not stop".into()))?;
        Ok(IoFreeze(self.release))
    }
}

/// While this lives, the I/O thread is stopped (see [`EventLoopHandle::freeze`]).
pub struct IoFreeze(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

#[cfg(test)]
mod tests {
    use super::read_config_space;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config_space(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        read_config_space(&config, 4, &mut d);
        assert_eq!(d, [0, 0, 0]);
        read_config_space(&config, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0]);
        let mut one = [0u8; 1];
        read_config_space(&config, 0, &mut one);
        assert_eq!(one, [1]);
    }
}
