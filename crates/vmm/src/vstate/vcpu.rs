//! A vCPU: its initial state and the loop that runs it on its own thread.

use std::path::Path;
use std::sync::Arc;

use devices::Bus;
use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::control::{ExitCounters, GuestFault, RunControl, StopReason};
use crate::arch::{cpuid, msr, regs};

#[derive(Debug, thiserror::Error)]
#[error("cannot set up vCPU {vcpu} ({what}): {error}")]
pub struct VcpuError {
    pub vcpu: u8,
    pub what: &'static str,
    pub error: kvm_ioctls::Error,
}

/// The shared things every vCPU thread uses.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<RunControl>,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    ctx: VcpuContext,
    counters: Arc<ExitCounters>,
}

impl Vcpu {
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        Self {
            id,
            fd,
            ctx,
            counters: Arc::new(ExitCounters::default()),
        }
    }

    pub fn counters(&self) -> Arc<ExitCounters> {
        self.counters.clone()
    }

    /// CPUID, MSRs, FPU and LAPIC: what every vCPU needs before it first runs.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        opts: cpuid::CpuidOptions,
    ) -> Result<(), VcpuError> {
        let err = |what| {
            let vcpu = self.id;
            move |error| VcpuError { vcpu, what, error }
        };
        self.fd
            .set_cpuid2(&cpuid::vcpu_cpuid(supported_cpuid, self.id, opts))
            .map_err(err("CPUID"))?;
        let msrs = msr::boot_msrs();
        let set = self.fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if set != msrs.as_slice().len() {
            // KVM stops at the first MSR it does not know; the rest keep their reset values,
            // which a guest kernel initialises itself.
            tracing::debug!(
                "vCPU {}: KVM accepted {set} of {} boot MSRs",
                self.id,
                msrs.as_slice().len()
            );
        }
        regs::setup_fpu(&self.fd).map_err(err("FPU"))?;
        regs::setup_lapic(&self.fd).map_err(err("LAPIC"))?;
        Ok(())
    }

    /// Puts the boot vCPU at the kernel's entry point. The others stay in wait-for-SIPI until
    /// the guest starts them.
    pub fn set_boot_state(&self, mode: regs::EntryMode, entry: u64) -> Result<(), VcpuError> {
        let err = |what| {
            let vcpu = self.id;
            move |error| VcpuError { vcpu, what, error }
        };
        regs::setup_sregs(&self.fd, mode).map_err(err("special registers"))?;
        regs::setup_regs(&self.fd, mode, entry).map_err(err("registers"))
    }

    /// Runs the vCPU until the machine stops. A guest-caused failure stops the whole machine.
    pub fn run(mut self) {
        while !self.ctx.control.should_stop() {
            if self.ctx.control.pause_requested() {
                self.ctx.control.park();
                continue;
            }
            if let Some(reason) = self.run_once() {
                self.ctx.control.request_stop(reason);
            }
        }
    }

    fn run_once(&mut self) -> Option<StopReason> {
        let id = self.id;
        let c = &self.counters;
        let fault = |f| Some(StopReason::Fault(f));
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    ExitCounters::bump(&c.io_in);
                    if !self.ctx.pio.read(u64::from(port), data) {
                        // Nothing there: an ISA bus floats high.
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    ExitCounters::bump(&c.io_out);
                    self.ctx.pio.write(u64::from(port), data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    ExitCounters::bump(&c.mmio_read);
                    if !self.ctx.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    ExitCounters::bump(&c.mmio_write);
                    self.ctx.mmio.write(addr, data);
                    None
                }
                VcpuExit::Hlt => {
                    // With the in-kernel LAPIC, KVM handles HLT itself; an exit here means
                    // the vCPU halted with interrupts it can never receive.
                    ExitCounters::bump(&c.hlt);
                    None
                }
                VcpuExit::Shutdown => fault(GuestFault::TripleFault { vcpu: id }),
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(StopReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Some(StopReason::Reset),
                    KVM_SYSTEM_EVENT_CRASH => fault(GuestFault::Crash { vcpu: id }),
                    other => fault(GuestFault::UnexpectedExit {
                        vcpu: id,
                        exit: format!("system event {other}"),
                    }),
                },
                VcpuExit::FailEntry(reason, _) => {
                    fault(GuestFault::EntryFailure { vcpu: id, reason })
                }
                VcpuExit::InternalError => {
                    ExitCounters::bump(&c.other);
                    Some(StopReason::Fault(self.internal_error()))
                }
                VcpuExit::IrqWindowOpen | VcpuExit::Intr => {
                    ExitCounters::bump(&c.interrupted);
                    None
                }
                other => {
                    ExitCounters::bump(&c.other);
                    fault(GuestFault::UnexpectedExit {
                        vcpu: id,
                        exit: format!("{other:?}"),
                    })
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked by the VMM (a stop request) or a signal: clear the request to leave
                // KVM_RUN at once and look at the stop flag again.
                ExitCounters::bump(&c.interrupted);
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => fault(GuestFault::RunFailed {
                vcpu: id,
                error: e.to_string(),
            }),
        }
    }

    fn internal_error(&mut self) -> GuestFault {
        let vcpu = self.id;
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
        // member KVM filled in.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return GuestFault::InternalError { vcpu, suberror };
        }
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        if host_kvm_is_pvm() {
            GuestFault::PvmEmulationFailure { vcpu, rip }
        } else {
            GuestFault::EmulationFailure { vcpu, rip }
        }
    }
}

/// PVM ("Pagetable-based Virtual Machine") runs guest kernel mode through KVM's instruction
/// emulator, so a stock kernel fails there with emulation errors.
pub fn host_kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}
