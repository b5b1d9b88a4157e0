//! A vCPU: its initial state and the loop that runs it on its own thread.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::Bus;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use super::pod::{fpu_bytes, pod_bytes, pod_vec};

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
    /// Locked by the vCPU thread around each KVM_RUN and free while it is parked, so that the
    /// VMM can read and write a paused vCPU's state from another thread (snapshots).
    fd: Arc<Mutex<VcpuFd>>,
    ctx: VcpuContext,
    counters: Arc<ExitCounters>,
}

/// Everything KVM keeps about one vCPU that a snapshot needs to bring it back.
#[derive(Default, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    #[serde(with = "pod_vec")]
    pub cpuid: Vec<kvm_cpuid_entry2>,
    #[serde(with = "pod_bytes")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "pod_bytes")]
    pub regs: kvm_regs,
    #[serde(with = "pod_bytes")]
    pub sregs: kvm_sregs,
    #[serde(with = "fpu_bytes")]
    pub fpu: kvm_fpu,
    #[serde(with = "pod_bytes")]
    pub xsave: kvm_xsave,
    #[serde(with = "pod_bytes")]
    pub xcrs: kvm_xcrs,
    #[serde(with = "pod_bytes")]
    pub debugregs: kvm_debugregs,
    #[serde(with = "pod_bytes")]
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM lets us read, kvmclock's included.
    #[serde(with = "pod_vec")]
    pub msrs: Vec<kvm_msr_entry>,
    #[serde(with = "pod_bytes")]
    pub events: kvm_vcpu_events,
}

/// Access to a vCPU's KVM state from outside its thread; use only while the vCPU is parked
/// (or before its thread starts), when nothing else holds its lock.
#[derive(Clone)]
pub struct VcpuHandle {
    pub id: u8,
    fd: Arc<Mutex<VcpuFd>>,
}

impl VcpuHandle {
    /// A handle on a vCPU that has no thread yet.
    pub fn new(id: u8, fd: VcpuFd) -> Self {
        Self {
            id,
            fd: Arc::new(Mutex::new(fd)),
        }
    }

    fn fd(&self) -> MutexGuard<'_, VcpuFd> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let vcpu = self.id;
        move |error| VcpuError { vcpu, what, error }
    }

    /// The rate of the vCPU's TSC in kHz; 0 where KVM cannot say. Waits for the vCPU's
    /// descriptor, which its thread holds while the vCPU runs: call it before or while parked.
    pub fn tsc_khz(&self) -> u32 {
        self.fd().get_tsc_khz().unwrap_or(0)
    }

    /// Runs the vCPU's TSC at `khz` (KVM scales it; needs `KVM_CAP_TSC_CONTROL`).
    pub fn set_tsc_khz(&self, khz: u32) -> Result<(), VcpuError> {
        self.fd()
            .set_tsc_khz(khz)
            .map_err(self.err("set the TSC frequency"))
    }

    /// Reads the vCPU's state; `msr_list` names the MSRs to save.
    pub fn save(&self, msr_list: &[u32]) -> Result<VcpuState, VcpuError> {
        let fd = self.fd();
        let fpu = fd.get_fpu().map_err(self.err("get FPU"))?;
        Ok(VcpuState {
            id: self.id,
            cpuid: fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(self.err("get CPUID"))?
                .as_slice()
                .to_vec(),
            mp_state: fd.get_mp_state().map_err(self.err("get MP state"))?,
            regs: fd.get_regs().map_err(self.err("get registers"))?,
            sregs: fd.get_sregs().map_err(self.err("get special registers"))?,
            fpu,
            xsave: fd.get_xsave().map_err(self.err("get XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(self.err("get XCRs"))?,
            debugregs: fd
                .get_debug_regs()
                .map_err(self.err("get debug registers"))?,
            lapic: fd.get_lapic().map_err(self.err("get LAPIC"))?,
            msrs: get_msrs(&fd, msr_list).map_err(self.err("get MSRs"))?,
            events: fd.get_vcpu_events().map_err(self.err("get vCPU events"))?,
        })
    }

    /// Loads `state` into the vCPU, in the order KVM needs: CPUID before anything that depends
    /// on it, the LAPIC before the MSRs (the TSC deadline lives in the LAPIC), events last.
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuError> {
        let fd = self.fd();
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError {
            vcpu: self.id,
            what: "set CPUID",
            error: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(self.err("set CPUID"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(self.err("set MP state"))?;
        fd.set_regs(&state.regs)
            .map_err(self.err("set registers"))?;
        fd.set_sregs(&state.sregs)
            .map_err(self.err("set special registers"))?;
        fd.set_fpu(&state.fpu).map_err(self.err("set FPU"))?;
        // SAFETY: `kvm_xsave` is the legacy 4 KiB area that KVM_GET_XSAVE filled on the
        // source; KVM reads no more than that from it.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(self.err("set XSAVE"))?;
        fd.set_xcrs(&state.xcrs).map_err(self.err("set XCRs"))?;
        fd.set_debug_regs(&state.debugregs)
            .map_err(self.err("set debug registers"))?;
        fd.set_lapic(&state.lapic).map_err(self.err("set LAPIC"))?;
        set_msrs(&fd, &state.msrs).map_err(self.err("set MSRs"))?;
        fd.set_vcpu_events(&state.events)
            .map_err(self.err("set vCPU events"))?;
        Ok(())
    }
}

/// Reads the MSRs in `list`. KVM stops at the first one it cannot read: that one is skipped
/// and the rest are read in the next call.
fn get_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(list.len());
    let mut i = 0;
    while i < list.len() {
        let chunk = &list[i..list.len().min(i + 256)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let n = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        i += n;
        if n < chunk.len() {
            // chunk[n] cannot be read on this host: skip it.
            i += 1;
        }
    }
    Ok(out)
}

/// Writes `entries`, skipping (and logging) any this KVM refuses.
fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), kvm_ioctls::Error> {
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(256)];
        let msrs = Msrs::from_entries(chunk).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let n = fd.set_msrs(&msrs)?;
        if n < chunk.len() {
            tracing::debug!("KVM refused to set MSR {:#x}", chunk[n].index);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[n..];
        }
    }
    Ok(())
}

impl Vcpu {
    pub fn new(id: u8, fd: VcpuFd, ctx: VcpuContext) -> Self {
        Self::from_handle(VcpuHandle::new(id, fd), ctx)
    }

    /// The vCPU behind `handle`, which nothing else may use while this one runs.
    pub fn from_handle(handle: VcpuHandle, ctx: VcpuContext) -> Self {
        Self {
            id: handle.id,
            fd: handle.fd,
            ctx,
            counters: Arc::new(ExitCounters::default()),
        }
    }

    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle {
            id: self.id,
            fd: self.fd.clone(),
        }
    }

    fn fd(&self) -> MutexGuard<'_, VcpuFd> {
        self.fd.lock().unwrap_or_else(|e| e.into_inner())
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
        let fd = self.fd();
        let vcpu_cpuid = cpuid::vcpu_cpuid(supported_cpuid, self.id, opts);
        fd.set_cpuid2(&vcpu_cpuid).map_err(err("CPUID"))?;
        if let Some(xcr0) = cpuid::boot_xcr0(vcpu_cpuid.as_slice()) {
            // KVM's XCR0 for the vCPU set to the one the guest kernel will choose, so that
            // CPUID 0xD.0 EBX and the XCR0 KVM loads agree with the guest even where its
            // XSETBV never reaches KVM (an emulated host; see `boot_xcr0`).
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = xcr0;
            if let Err(e) = fd.set_xcrs(&xcrs) {
                // The guest sets XCR0 itself; only an emulated host that hides its XSETBV
                // from KVM needs this.
                tracing::debug!("vCPU {}: KVM refused XCR0 {xcr0:#x}: {e}", self.id);
            }
        }
        let msrs = msr::boot_msrs();
        let set = fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if set != msrs.as_slice().len() {
            // KVM stops at the first MSR it does not know; the rest keep their reset values,
            // which a guest kernel initialises itself.
            tracing::debug!(
                "vCPU {}: KVM accepted {set} of {} boot MSRs",
                self.id,
                msrs.as_slice().len()
            );
        }
        regs::setup_fpu(&fd).map_err(err("FPU"))?;
        regs::setup_lapic(&fd).map_err(err("LAPIC"))?;
        Ok(())
    }

    /// Puts the boot vCPU at the kernel's entry point. The others stay in wait-for-SIPI until
    /// the guest starts them.
    pub fn set_boot_state(&self, mode: regs::EntryMode, entry: u64) -> Result<(), VcpuError> {
        let err = |what| {
            let vcpu = self.id;
            move |error| VcpuError { vcpu, what, error }
        };
        let fd = self.fd();
        regs::setup_sregs(&fd, mode).map_err(err("special registers"))?;
        regs::setup_regs(&fd, mode, entry).map_err(err("registers"))
    }

    /// Runs the vCPU until the machine stops. A guest-caused failure stops the whole machine.
    /// The thread first narrows its system calls to `seccomp`'s vCPU filter.
    pub fn run(mut self, seccomp: crate::seccomp::SeccompMode) {
        self.counters.thread_started();
        host_kvm_is_pvm();
        if let Err(e) = crate::seccomp::install_vcpu_filter(seccomp) {
            // The process filter went in a moment ago, so this does not happen in practice;
            // a vCPU must not run the guest without its filter, and the exit status says
            // that the VMM failed.
            eprintln!("vireo-vmm: error: vCPU {}: {e}", self.id);
            std::process::exit(1);
        }
        self.run_loop();
        self.counters.thread_ending();
    }

    fn run_loop(&mut self) {
        while !self.ctx.control.should_stop() {
            if self.ctx.control.pause_requested() {
                self.settle();
                self.ctx.control.park();
                continue;
            }
            if let Some(reason) = self.run_once() {
                self.ctx.control.request_stop(reason);
            }
        }
    }

    /// Lets KVM finish the instruction behind the last I/O exit (an `in` gets its value, a
    /// string I/O its next iteration) without entering the guest: KVM_RUN with immediate_exit
    /// set does that and returns EINTR. Without it a snapshot taken now would lose the
    /// instruction's completion, which lives in KVM and in no state KVM can save.
    fn settle(&mut self) {
        let mut fd = self.fd();
        fd.set_kvm_immediate_exit(1);
        match fd.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => tracing::debug!("vCPU {}: settling before pause: {e}", self.id),
            Ok(exit) => tracing::debug!("vCPU {}: settling before pause: {exit:?}", self.id),
        }
        fd.set_kvm_immediate_exit(0);
    }

    fn run_once(&mut self) -> Option<StopReason> {
        let id = self.id;
        let fd = self.fd.clone();
        let mut fd = fd.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        let fault = |f| Some(StopReason::Fault(f));
        match fd.run() {
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
                VcpuExit::Shutdown => {
                    // What the vCPU looked like is all there is to go on afterwards; the
                    // error itself stays one line (`VIREO_LOG=debug` shows this).
                    tracing::debug!("vCPU {id} triple-faulted: {}", fault_context(&fd));
                    fault(GuestFault::TripleFault { vcpu: id })
                }
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
                    drop(fd);
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
                fd.set_kvm_immediate_exit(0);
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
        let mut fd = self.fd();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
        // member KVM filled in.
        let suberror = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return GuestFault::InternalError { vcpu, suberror };
        }
        let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
        if host_kvm_is_pvm() {
            GuestFault::PvmEmulationFailure { vcpu, rip }
        } else {
            GuestFault::EmulationFailure { vcpu, rip }
        }
    }
}

/// The registers that tell where a vCPU failed and in what mode, with any event KVM holds for
/// it, on one line.
fn fault_context(fd: &VcpuFd) -> String {
    let mut out = String::new();
    if let Ok(r) = fd.get_regs() {
        out += &format!(
            "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x}",
            r.rip, r.rsp, r.rflags, r.rax
        );
    }
    if let Ok(s) = fd.get_sregs() {
        out += &format!(
            " cs {:#x} ss {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{} gdt {:#x}/{} tr {:#x}@{:#x} gs.base {:#x}",
            s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base,
            s.idt.limit, s.gdt.base, s.gdt.limit, s.tr.selector, s.tr.base, s.gs.base
        );
    }
    if let Ok(e) = fd.get_vcpu_events() {
        out += &format!(
            " exception {}/{}/{}/{:#x} interrupt {}/{} nmi {}/{} shadow {}",
            e.exception.injected,
            e.exception.pending,
            e.exception.nr,
            e.exception.error_code,
            e.interrupt.injected,
            e.interrupt.nr,
            e.nmi.injected,
            e.nmi.pending,
            e.interrupt.shadow
        );
    }
    out
}

/// PVM ("Pagetable-based Virtual Machine") runs guest kernel mode through KVM's instruction
/// emulator, so a stock kernel fails there with emulation errors. Looked up once: a vCPU
/// thread asks after its system-call filter has taken away looking at files.
pub fn host_kvm_is_pvm() -> bool {
    static PVM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PVM.get_or_init(|| Path::new("/sys/module/kvm_pvm").exists())
}
