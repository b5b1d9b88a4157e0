//! Builds a machine from a [`VmConfig`] and runs it until the guest powers off, resets or
//! faults.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::legacy::{EventFdTrigger, Serial, SerialOutput, I8042};
use devices::rate_limiter::LimiterHandle;
use devices::virtio::balloon::{Balloon, BalloonControl};
use devices::virtio::block::{Block, BlockOptions, Drive, IoEngine, Stats as BlockStats};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Limits as NetLimits, MacAddr, Net, NetCounters, Tap};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockHost};
use devices::virtio::{self, EventLoop, EventLoopHandle, Interrupt, VirtioDevice};
use devices::{power, AcpiPowerDevice, Bus, PowerAction, PowerSink};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, IoEventAddress};
use vireo_storage::Format;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::layout::{self, *};
use crate::arch::{acpi, boot, cpuid, gdt, smbios};
use crate::config::{
    host_memory_mib, ConfigError, DriveFormat, DriveIoEngine, SerialConfig, VmConfig,
};
use crate::handle::{ControlServer, Kicker, MachineHandle};
use crate::memory::{Backing, GuestMemoryMmap, GuestRam};
use crate::vstate::control::{ExitCounts, RunControl, StopReason};
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError, VcpuHandle};

use crate::vstate::vm::{Vm, VmError};

/// Everything that can keep a machine from being built or run, each with a message a user can
/// act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Smbios(#[from] smbios::SmbiosError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
    /// A drive or network device configured out of what it supports.
    #[error(transparent)]
    Device(#[from] crate::config::DeviceError),
    /// A snapshot's serial-port state that the UART refuses.
    #[error(transparent)]
    SerialState(#[from] devices::legacy::SerialStateError),
    /// A drive's image file that cannot be opened or used.
    #[error(transparent)]
    Drive(#[from] devices::virtio::block::BlockError),
    /// A TAP interface that cannot be opened.
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::TapError),
    /// A vsock CID out of range or a socket that cannot be listened on.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// Something the host did not give: a thread, an eventfd, the console, `/proc/meminfo`.
    #[error("{what}: {source}")]
    Os {
        /// What the VMM could not do, as the user reads it (`cannot create an eventfd`).
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A KVM ioctl outside a VM or vCPU (those are [`VmError`] and [`VcpuError`]).
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More virtio devices than the layout has MMIO slots and interrupts for.
    #[error("{count} virtio devices asked for; at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDevices { count: usize },
    /// A virtio device whose queues cannot be made (its maximum queue sizes are invalid).
    #[error("virtio device set-up: {0}")]
    VirtioSetup(#[source] virtio_queue::Error),
    /// Two devices at overlapping addresses (a bug in the layout, never the user's doing).
    #[error("device layout: {0}")]
    Layout(#[from] devices::BusError),
    /// The boot GDT and IDT that cannot be written into guest memory.
    #[error("cannot write the boot GDT: {0}")]
    BootTables(#[source] vm_memory::GuestMemoryError),
    /// The signal handler that interrupts KVM_RUN.
    #[error("cannot install the vCPU kick handler: {0}")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// The system-call filters that cannot be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The control server (the API) that cannot start.
    #[error(transparent)]
    Serve(#[from] crate::handle::ServeError),
    /// A snapshot refused or unreadable, before its machine was built.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A machine state that does not encode, decode or hold together.
    #[error(transparent)]
    State(#[from] crate::snapshot::StateError),
    /// A saved machine whose device states do not match the devices its configuration
    /// builds.
    #[error("{built} devices built for {saved} device states")]
    DeviceStates { built: usize, saved: usize },
    /// A device's saved state that its device refuses.
    #[error("device state: {0}")]
    DeviceState(#[source] devices::virtio::mmio::RestoreError),
    /// A migration's destination that failed before or while its machine was received.
    #[error("migration: {0}")]
    Migration(#[from] crate::migration::MigrationError),
}

impl Error {
    /// An error of the host's own (an `io::Error`) while doing `what`.
    pub(crate) fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Os { what, source }
    }
}

/// How to run a machine beyond what the guest is made of.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Feed the VMM's standard input to the serial console.
    pub console_input: bool,
    /// What serves the machine's control interface once it runs (the binary gives the HTTP
    /// API); the engine hands it a [`MachineHandle`] and knows nothing of its protocol.
    pub control: Option<Arc<dyn ControlServer>>,
    /// When the API asked for the snapshot this machine was restored from (the
    /// `vireo_timing` log line reports the time from there to running vCPUs).
    pub restore_requested: Option<std::time::Instant>,
    /// The system-call filters installed before the guest runs (crate::seccomp).
    pub seccomp: crate::seccomp::SeccompMode,
}

/// How a run ended and what the vCPUs did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub reason: StopReason,
    /// VM exits of each vCPU, by reason.
    pub exits: Vec<ExitCounts>,
}

impl RunReport {
    pub fn total_exits(&self) -> ExitCounts {
        self.exits
            .iter()
            .copied()
            .fold(ExitCounts::default(), |a, b| a + b)
    }
}

fn open_file(what: &'static str, path: &Path) -> Result<File, Error> {
    let fail = |reason: String| Error::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let f = File::open(path).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        })
    })?;
    let meta = f.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    Ok(f)
}

/// Opens every drive's file, so that a missing or unreadable one fails before the VM is built.
fn open_drives(config: &VmConfig) -> Result<Vec<Drive>, Error> {
    config
        .drives
        .iter()
        .map(|d| {
            let (ops_limit, bytes_limit) = d.rate_limiter.clone().unwrap_or_default().buckets();
            Drive::open(BlockOptions {
                path: d.path.clone(),
                format: d.format.map(|f| match f {
                    DriveFormat::Raw => Format::Raw,
                    DriveFormat::Qcow2 => Format::Qcow2,
                }),
                read_only: d.read_only,
                direct: d.direct,
                serial: d.serial.clone(),
                ops_limit,
                bytes_limit,
                queues: d.queues,
                poll_us: d.poll_us,
                io_engine: match d.io_engine {
                    DriveIoEngine::Sync => IoEngine::Sync,
                    DriveIoEngine::IoUring => IoEngine::IoUring,
                    DriveIoEngine::Null => IoEngine::Null,
                },
            })
            .map_err(Error::from)
        })
        .collect()
}

/// A TAP opened for a virtio-net device, with the device's settings.
struct OpenTap {
    tap: Arc<Tap>,
    mac: Option<MacAddr>,
    rx: NetLimits,
    tx: NetLimits,
}

/// Opens every net device's TAP, so that a missing, busy or forbidden one fails before the VM
/// is built, with a message naming it.
fn open_taps(config: &VmConfig) -> Result<Vec<OpenTap>, Error> {
    let limits = |l: &Option<crate::config::RateLimiterConfig>| {
        let (ops, bytes) = l.clone().unwrap_or_default().buckets();
        NetLimits { ops, bytes }
    };
    config
        .net
        .iter()
        .map(|n| {
            n.check()?;
            let mac = n
                .mac
                .as_deref()
                .map(str::parse::<MacAddr>)
                .transpose()
                .map_err(|source| crate::config::DeviceError::Mac {
                    tap: n.tap.clone(),
                    source,
                })?;
            let tap = match n.tap_fd {
                Some(fd) => {
                    if config.net.iter().filter(|m| m.tap_fd == Some(fd)).count() > 1 {
                        return Err(devices::virtio::net::TapError::BadFd(fd).into());
                    }
                    // SAFETY: F_GETFD only reads the fd's flags; no memory is passed.
                    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                        return Err(devices::virtio::net::TapError::BadFd(fd).into());
                    }
                    // SAFETY: the fd is open (checked above), was handed to this process for
                    // this one device (`tap-fd=`, checked unique above) and nothing else in the
                    // VMM owns it, so the Tap may own and close it.
                    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                    Tap::from_fd(owned)?
                }
                None => Tap::open(&n.tap)?,
            };
            Ok(OpenTap {
                tap: Arc::new(tap),
                mac,
                rx: limits(&n.rx_rate_limiter),
                tx: limits(&n.tx_rate_limiter),
            })
        })
        .collect()
}

/// Checks the vsock CID and listens on its Unix socket, before the VM is built.
fn open_vsock(config: &VmConfig) -> Result<Option<VsockHost>, Error> {
    config
        .vsock
        .as_ref()
        .map(|v| VsockHost::bind(v.guest_cid, &v.uds_path))
        .transpose()
        .map_err(Error::from)
}

fn vsock_device(io: &EventLoopHandle, host: Option<VsockHost>) -> Option<Box<dyn VirtioDevice>> {
    host.map(|h| -> Box<dyn VirtioDevice> { Box::new(Vsock::new(h, io.clone())) })
}

fn net_devices(
    io: &EventLoopHandle,
    taps: Vec<OpenTap>,
    controls: &mut DeviceControls,
) -> Vec<Box<dyn VirtioDevice>> {
    taps.into_iter()
        .map(|t| -> Box<dyn VirtioDevice> {
            let net = Net::new(io.clone(), t.tap, t.mac, t.rx, t.tx);
            controls.net.push(net.limits());
            controls.net_stats.push(net.counters());
            Box::new(net)
        })
        .collect()
}

pub(crate) fn serial_output(cfg: &SerialConfig) -> Result<SerialOutput, Error> {
    match cfg {
        SerialConfig::Stdout => std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(SerialOutput::Fd)
            .map_err(Error::os("cannot use stdout for the console")),
        SerialConfig::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| SerialOutput::Fd(f.into()))
            .map_err(|e| Error::File {
                what: "cannot open console file",
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        SerialConfig::None => Ok(SerialOutput::Sink),
    }
}

static PROCESS_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Records when the process started, for the `vireo_timing` log line (see [`launch`]).
pub fn mark_process_start() {
    PROCESS_START.get_or_init(std::time::Instant::now);
}

/// Where a machine's guest memory comes from.
pub(crate) enum MemorySource<'a> {
    /// Fresh zeroed memory (a boot, or a migration's destination).
    Anonymous,
    /// A snapshot's memory file, mapped copy-on-write.
    File(&'a File),
}

/// A machine built but not yet running: the KVM VM, its memory, vCPUs and devices.
/// Fields drop in declaration order: everything that holds guest memory comes before `ram`,
/// which unmaps it only when nothing else holds it.
pub(crate) struct Parts {
    pub vm: Arc<Vm>,
    pub config: VmConfig,
    pub vcpus: Vec<Vcpu>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub virtio_slots: Vec<acpi::VirtioMmioSlot>,
    pub serial: Arc<Mutex<Serial>>,
    pub serial_irq: EventFd,
    /// The device I/O thread, already running: a restored device starts (and registers its
    /// handler with the thread) before any vCPU runs.
    pub io_thread: IoThread,
    pub io: EventLoopHandle,
    pub controls: DeviceControls,
    pub control: Arc<RunControl>,
    pub supported_cpuid: kvm_bindings::CpuId,
    pub cpuid_opts: cpuid::CpuidOptions,
    /// Started with the shell, waiting to run vCPU 0 (see [`SpareThread`]).
    pub vcpu0_thread: Option<SpareThread>,
    pub mem: Arc<GuestMemoryMmap>,
    pub ram: GuestRam,
}

/// A thread started before it has work: it waits for one closure, runs it and ends. Starting a
/// thread (its stack, its TLS, the clone) costs ~4 ms where the host itself is emulated (the
/// lab), which a restore would otherwise pay between loading the state and running the vCPU.
/// Dropped unused, it ends at once.
pub(crate) struct SpareThread {
    name: String,
    work: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    thread: JoinHandle<()>,
}

impl SpareThread {
    pub(crate) fn spawn(name: &str) -> std::io::Result<SpareThread> {
        let (work, next) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Ok(f) = next.recv() {
                    f();
                }
            })?;
        Ok(SpareThread {
            name: name.into(),
            work,
            thread,
        })
    }

    /// Runs `f` on the thread (on a new one, should the spare be gone).
    fn run(self, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
        match self.work.send(Box::new(f)) {
            Ok(()) => Ok(self.thread),
            Err(std::sync::mpsc::SendError(f)) => {
                std::thread::Builder::new().name(self.name).spawn(f)
            }
        }
    }
}

/// The running device I/O thread. Dropped while it still owns the thread (a machine that
/// failed before it ran), it stops and joins it, so that the devices it holds, and their guest
/// memory, are gone before the memory is unmapped.
pub(crate) struct IoThread {
    thread: Option<JoinHandle<()>>,
    control: Arc<RunControl>,
    io: EventLoopHandle,
}

impl IoThread {
    fn take(mut self) -> Option<JoinHandle<()>> {
        self.thread.take()
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.request_stop(StopReason::Host);
            self.io.kick();
            let _ = t.join();
        }
    }
}

/// Builds the machine described by `config` and runs it to its end.
pub fn run(config: &VmConfig, opts: RunOptions) -> Result<RunReport, Error> {
    // Cheap checks first, so that bad input fails before anything is created.
    tracing::debug!("start");
    let kvm = Vm::open_kvm()?;
    let host_mib = host_memory_mib().map_err(Error::os("cannot read the host's memory size"))?;
    config.check_limits(kvm.get_max_vcpus() as u64, host_mib)?;
    let mut kernel_file = open_file("cannot open kernel", &config.kernel)?;
    let mut initrd_file = config
        .initrd
        .as_deref()
        .map(|p| open_file("cannot open initrd", p))
        .transpose()?;
    let parts = build(Shell::create(kvm)?, config, MemorySource::Anonymous)?;
    let mem = parts.mem.clone();
    let mem_size = config.memory_bytes();

    let kernel_path = config.kernel.display().to_string();
    let kernel = boot::load_kernel(&mem, &mut kernel_file, &kernel_path)?;
    tracing::debug!("kernel loaded ({:?} entry)", kernel.mode);
    let initrd = match (initrd_file.as_mut(), config.initrd.as_deref()) {
        (Some(f), Some(p)) => Some(boot::load_initrd(
            &mem,
            mem_size,
            &kernel,
            f,
            &p.display().to_string(),
        )?),
        _ => None,
    };
    tracing::debug!("initrd loaded");
    let cmdline = guest_cmdline(&config.cmdline);
    boot::load_command_line(&mem, &cmdline)?;
    let rsdp = acpi::setup_acpi(&mem, config.vcpus, &parts.virtio_slots)?;
    smbios::setup_smbios(
        &mem,
        &smbios::Machine {
            identity: &config.smbios,
            vcpus: config.vcpus,
            mem_size,
            cpu: smbios::CpuInfo::from_cpuid(&parts.supported_cpuid),
        },
    )?;
    write_descriptor_tables(&mem)?;
    boot::write_reset_vector(&mem)?;
    boot::write_boot_structures(
        &mem,
        &kernel,
        &boot::BootLayout {
            mem_size,
            cmdline_len: cmdline.len(),
            initrd,
            rsdp,
        },
    )?;
    for vcpu in &parts.vcpus {
        vcpu.configure(&parts.supported_cpuid, parts.cpuid_opts)?;
    }
    if let Some(v) = parts.vcpus.first() {
        v.set_boot_state(kernel.mode, kernel.entry.0)?;
    }
    // Guest memory is unmapped at the end of `launch` only if nothing else holds it.
    drop(mem);
    launch(parts, opts, Launch::Running, None)
}

/// The parts of a machine that do not depend on its configuration: the KVM VM with its
/// interrupt controllers and PIT, vCPU 0, the device I/O thread, and the interrupt lines of the
/// serial port and the i8042. Where KVM is nested, creating them costs more than the rest of a
/// restore together (~25 ms of ~50 in the lab: `KVM_CREATE_VM` with its irqchip and PIT above
/// all), so a VMM that waits for a snapshot to load makes them while it waits.
pub(crate) struct Shell {
    vm: Vm,
    /// Every machine has a vCPU 0; the others are created once their number is known.
    vcpu0: VcpuHandle,
    vcpu0_thread: SpareThread,
    supported_cpuid: kvm_bindings::CpuId,
    tsc_deadline: bool,
    io: EventLoopHandle,
    io_thread: IoThread,
    control: Arc<RunControl>,
    serial_irq: EventFd,
    keyboard_irq: EventFd,
}

impl Shell {
    pub(crate) fn create(kvm: kvm_ioctls::Kvm) -> Result<Shell, Error> {
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| Error::Kvm {
                what: "cannot read KVM's supported CPUID",
                source,
            })?;
        let vm = Vm::new(kvm)?;
        tracing::debug!("VM created");
        let vcpu0 = vm.fd.create_vcpu(0).map_err(|error| VcpuError {
            vcpu: 0,
            what: "create",
            error,
        })?;
        let vcpu0 = VcpuHandle::new(0, vcpu0);
        let vcpu0_thread =
            SpareThread::spawn("vcpu0").map_err(Error::os("cannot start a vCPU thread"))?;
        let eventfd = || {
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(Error::os("cannot create an eventfd"))
        };
        let serial_irq = eventfd()?;
        vm.fd
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(|error| VmError::Setup {
                what: "serial irqfd",
                error,
            })?;
        let keyboard_irq = eventfd()?;
        vm.fd
            .register_irqfd(&keyboard_irq, KEYBOARD_IRQ)
            .map_err(|error| VmError::Setup {
                what: "keyboard irqfd",
                error,
            })?;
        let mut event_loop =
            EventLoop::new().map_err(Error::os("cannot create the device I/O loop"))?;
        let io = event_loop.handle();
        let control = Arc::new(RunControl::new().map_err(Error::os("cannot create an eventfd"))?);
        // Devices register their handlers with the running thread as they are activated.
        let io_thread = {
            let stop = control.clone();
            let thread = std::thread::Builder::new()
                .name("io".into())
                .spawn(move || event_loop.run_until(|| stop.should_stop()))
                .map_err(Error::os("cannot start the device I/O thread"))?;
            IoThread {
                thread: Some(thread),
                control: control.clone(),
                io: io.clone(),
            }
        };
        tracing::debug!("VM shell ready");
        Ok(Shell {
            vm,
            vcpu0,
            vcpu0_thread,
            supported_cpuid,
            tsc_deadline,
            io,
            io_thread,
            control,
            serial_irq,
            keyboard_irq,
        })
    }

    /// KVM's facts about this host for a VM of `nr_vcpus`, as a snapshot records them.
    pub(crate) fn host_info(&self, nr_vcpus: u8) -> crate::snapshot::HostInfo {
        crate::snapshot::host_info_from(
            &self.supported_cpuid,
            self.tsc_deadline,
            self.vm.kvm.get_api_version(),
            nr_vcpus,
            self.vcpu0.tsc_khz(),
        )
    }

    pub(crate) fn kvm(&self) -> &kvm_ioctls::Kvm {
        &self.vm.kvm
    }

    pub(crate) fn vm(&self) -> &Vm {
        &self.vm
    }

    /// vCPU 0, which has no thread yet.
    pub(crate) fn vcpu0(&self) -> &VcpuHandle {
        &self.vcpu0
    }
}

/// Opens every file and device backend `config` names, then completes `shell` into the
/// machine: its memory, its other vCPUs (not yet configured) and its devices. Nothing runs yet
/// but the I/O thread.
pub(crate) fn build(
    shell: Shell,
    config: &VmConfig,
    memory: MemorySource<'_>,
) -> Result<Parts, Error> {
    let serial_out = serial_output(&config.serial)?;
    let drives = open_drives(config)?;
    let taps = open_taps(config)?;
    let vsock = open_vsock(config)?;
    tracing::debug!("files opened");
    let Shell {
        vm,
        vcpu0,
        vcpu0_thread,
        supported_cpuid,
        tsc_deadline,
        io,
        io_thread,
        control,
        serial_irq,
        keyboard_irq,
    } = shell;

    let mem_size = config.memory_bytes();
    let regions = layout::ram_regions(mem_size);
    let ram = match memory {
        MemorySource::Anonymous => GuestRam::new(&regions, config.huge_pages),
        MemorySource::File(f) => GuestRam::with_backing(&regions, false, Backing::File(f.as_fd())),
    }
    .map_err(|e| Error::Memory {
        mib: config.memory_mib,
        reason: e.to_string(),
    })?;
    let mem = ram.memory().clone();
    vm.register_memory(&mem)?;
    tracing::debug!("guest memory mapped");

    let mut mmio = Bus::new();
    let mut controls = DeviceControls::default();
    let mut devices = virtio_devices(config, &io, &mut controls, drives);
    devices.extend(net_devices(&io, taps, &mut controls));
    devices.extend(vsock_device(&io, vsock));
    let (virtio_slots, transports) = attach_virtio_devices(&vm, &mem, devices, &mut mmio)?;
    tracing::debug!("virtio devices attached");

    let sink: PowerSink = {
        let control = control.clone();
        Arc::new(move |action| {
            control.request_stop(match action {
                PowerAction::PowerOff => StopReason::PowerOff,
                PowerAction::Reset => StopReason::Reset,
            })
        })
    };
    let serial_trigger = serial_irq
        .try_clone()
        .map_err(Error::os("cannot create an eventfd"))?;
    let serial = Arc::new(Mutex::new(Serial::new(
        EventFdTrigger::new(serial_trigger),
        serial_out,
    )));
    let mut pio = Bus::new();
    pio.insert(SERIAL_PORT, 8, serial.clone())?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        sink.clone(),
        EventFdTrigger::new(keyboard_irq),
    )));
    controls.keyboard = Some(i8042.clone());
    pio.insert(I8042::BASE, I8042::LEN, i8042)?;
    pio.insert(
        ACPI_PM_PORT,
        power::LEN,
        Arc::new(Mutex::new(AcpiPowerDevice::new(sink))),
    )?;
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        control: control.clone(),
    };

    let cpuid_opts = cpuid::CpuidOptions {
        nr_vcpus: config.vcpus,
        tsc_deadline,
    };
    let mut vcpus = Vec::with_capacity(config.vcpus.into());
    vcpus.push(Vcpu::from_handle(vcpu0, ctx.clone()));
    for id in 1..config.vcpus {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|error| VcpuError {
                vcpu: id,
                what: "create",
                error,
            })?;
        vcpus.push(Vcpu::new(id, fd, ctx.clone()));
    }
    tracing::debug!("vCPUs created");
    Ok(Parts {
        vm: Arc::new(vm),
        ram,
        mem,
        config: config.clone(),
        vcpus,
        transports,
        virtio_slots,
        serial,
        serial_irq,
        io_thread,
        io,
        controls,
        control,
        supported_cpuid,
        cpuid_opts,
        vcpu0_thread: Some(vcpu0_thread),
    })
}

/// How the vCPUs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Launch {
    Running,
    /// Parked until `PUT /vm/resume` (a restored snapshot without --resume).
    Paused,
}

/// Called once every thread runs (a migration's destination tells its source); an error
/// stops the machine.
pub(crate) type OnStarted = Box<dyn FnOnce() -> Result<(), Error>>;

/// Starts the I/O thread, the vCPU threads and the API, and waits for the machine to stop.
pub(crate) fn launch(
    parts: Parts,
    opts: RunOptions,
    start: Launch,
    on_started: Option<OnStarted>,
) -> Result<RunReport, Error> {
    let Parts {
        vm,
        ram,
        mem,
        config,
        vcpus,
        transports,
        serial,
        io_thread: io_thread_guard,
        io: io_handle,
        controls,
        control,
        supported_cpuid,
        cpuid_opts,
        mut vcpu0_thread,
        ..
    } = parts;
    // From here on the thread is stopped and joined explicitly, after the vCPUs.
    let io_thread = io_thread_guard.take();

    install_kick_handler()?;
    if start == Launch::Paused {
        control.request_pause();
    }
    let counters: Vec<_> = vcpus.iter().map(|v| v.counters()).collect();
    let handles: Vec<_> = vcpus.iter().map(|v| v.handle()).collect();
    let host = crate::snapshot::host_info_from(
        &supported_cpuid,
        cpuid_opts.tsc_deadline,
        vm.kvm.get_api_version(),
        config.vcpus,
        handles.first().map_or(0, |h| h.tsc_khz()),
    );
    // Everything the machine needs is open and mapped: from here on, each thread keeps to
    // the system calls it needs while the guest runs.
    let seccomp = opts.seccomp;
    let io_uring = config
        .drives
        .iter()
        .any(|d| d.io_engine == crate::config::DriveIoEngine::IoUring);
    if let Err(e) = crate::seccomp::install_process_filter(seccomp, io_uring) {
        control.request_stop(StopReason::Host);
        io_handle.kick();
        if let Some(t) = io_thread {
            let _ = t.join();
        }
        return Err(e.into());
    }
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let spawned = match vcpu0_thread.take() {
            Some(spare) if id == 0 => spare.run(move || vcpu.run(seccomp)),
            _ => std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu.run(seccomp)),
        };
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.request_stop(StopReason::Host);
                stop_vcpus(threads);
                return Err(Error::os("cannot start a vCPU thread")(e));
            }
        }
    }
    // The guest runs from here; the timing lines below measure to this point.
    let running_at = std::time::Instant::now();
    // A migration's source waits for this before it lets go: it comes before anything that is
    // not needed for the guest to run (console input, the API).
    let mut result = Ok(());
    if let Some(f) = on_started {
        tracing::debug!("telling the migration source that the vCPUs run");
        if let Err(e) = f() {
            control.request_stop(StopReason::Host);
            result = Err(e);
        }
    }
    if opts.console_input {
        spawn_console_input(serial.clone(), control.clone());
    }
    let machine = Arc::new(crate::snapshot::MachineAccess {
        vm: vm.clone(),
        mem: mem.clone(),
        backed: ram.backed().clone(),
        config: config.clone(),
        vcpus: handles,
        transports,
        serial,
        io: io_handle.clone(),
        control: control.clone(),
        kick_vcpus: vcpu_kicker(&threads),
        host,
    });
    let api_thread = match &opts.control {
        Some(server) => {
            let handle = MachineHandle::new(
                threads.len(),
                controls.clone(),
                counters.clone(),
                machine.clone(),
            );
            match server.serve(handle) {
                Ok(t) => Some(t),
                Err(e) => {
                    control.request_stop(StopReason::Host);
                    stop_vcpus(threads);
                    io_handle.kick();
                    if let Some(t) = io_thread {
                        let _ = t.join();
                    }
                    return Err(e.into());
                }
            }
        }
        None => None,
    };

    tracing::debug!("{} vCPU threads started", threads.len());
    // `VIREO_LOG=vireo_timing=info` shows how long a start (a restore above all) took to
    // running vCPU threads: from exec, and from the API's load request.
    let ms = |t0: std::time::Instant| (running_at - t0).as_secs_f64() * 1000.0;
    if let Some(t0) = opts.restore_requested {
        tracing::info!(
            target: "vireo_timing",
            "vCPUs running {:.3} ms after the snapshot load request",
            ms(t0)
        );
    }
    if let Some(&t0) = PROCESS_START.get() {
        tracing::info!(
            target: "vireo_timing",
            "vCPUs running {:.3} ms after process start",
            ms(t0)
        );
    }
    let reason = control.wait();
    // The control server may kick vCPU threads, so it ends before they are joined.
    if let Some(t) = api_thread {
        let _ = t.join();
    }
    stop_vcpus(threads);
    io_handle.kick();
    if let Some(t) = io_thread {
        let _ = t.join();
    }
    drop(machine);
    drop(vm);
    drop(mem);
    drop(ram);
    result?;
    Ok(RunReport {
        reason,
        exits: counters.iter().map(|c| c.snapshot()).collect(),
    })
}

/// The command line the guest gets: the configured one, plus `pci=off` because the machine
/// has no PCI bus (telling the kernel spares it probing for one) unless the configuration says
/// something about `pci=` itself.
pub fn guest_cmdline(configured: &str) -> String {
    if configured.split_whitespace().any(|w| w.starts_with("pci=")) {
        configured.to_string()
    } else if configured.trim().is_empty() {
        "pci=off".to_string()
    } else {
        format!("{} pci=off", configured.trim_end())
    }
}

/// Handles through which a running machine's devices are changed (the control API).
#[derive(Default, Clone)]
pub struct DeviceControls {
    pub balloon: Option<BalloonControl>,
    /// Each drive's rate limits, in drive order.
    pub drives: Vec<LimiterHandle>,
    /// Each net device's (rx, tx) rate limits, in device order.
    pub net: Vec<(LimiterHandle, LimiterHandle)>,
    /// Each drive's counters, in drive order (`GET /metrics`).
    pub drive_stats: Vec<Arc<BlockStats>>,
    /// Each net device's counters, in device order.
    pub net_stats: Vec<Arc<NetCounters>>,
    /// The i8042, whose keyboard presses Ctrl-Alt-Del for a graceful shutdown.
    pub keyboard: Option<Arc<Mutex<I8042>>>,
}

/// The virtio devices `config` asks for, in the order they get MMIO slots.
fn virtio_devices(
    config: &VmConfig,
    io: &EventLoopHandle,
    controls: &mut DeviceControls,
    drives: Vec<Drive>,
) -> Vec<Box<dyn VirtioDevice>> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in drives {
        let block = Block::new(io.clone(), d);
        controls.drives.push(block.limits());
        controls.drive_stats.push(block.stats());
        devices.push(Box::new(block));
    }
    if config.rng {
        devices.push(Box::new(Rng::new(io.clone())));
    }
    if let Some(b) = &config.balloon {
        let balloon = Balloon::new(
            io.clone(),
            b.target_mib,
            b.deflate_on_oom,
            b.stats_interval_s,
        );
        controls.balloon = Some(balloon.control());
        devices.push(Box::new(balloon));
    }
    devices
}

/// Gives each device a virtio-mmio slot: registers, an irqfd for its interrupt and an
/// ioeventfd per queue, so that neither notification direction stops a vCPU.
type Attached = (Vec<acpi::VirtioMmioSlot>, Vec<Arc<Mutex<MmioTransport>>>);

fn attach_virtio_devices(
    vm: &Vm,
    mem: &Arc<GuestMemoryMmap>,
    devices: Vec<Box<dyn VirtioDevice>>,
    mmio: &mut Bus,
) -> Result<Attached, Error> {
    if devices.len() > MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices {
            count: devices.len(),
        });
    }
    let evt = || {
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(Error::os("cannot create an eventfd"))
    };
    let mut slots = Vec::new();
    let mut transports = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SLOT;
        let gsi = VIRTIO_GSI_BASE + i as u32;
        let irq = evt()?;
        vm.fd
            .register_irqfd(&irq, gsi)
            .map_err(|error| VmError::Setup {
                what: "virtio irqfd",
                error,
            })?;
        let mut queue_events = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let e = evt()?;
            vm.fd
                .register_ioevent(
                    &e,
                    &IoEventAddress::Mmio(base + virtio::mmio::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(|error| VmError::Setup {
                    what: "virtio ioeventfd",
                    error,
                })?;
            queue_events.push(e);
        }
        let transport = MmioTransport::new(
            device,
            mem.clone(),
            Arc::new(Interrupt::new(irq)),
            queue_events,
        )
        .map_err(Error::VirtioSetup)?;
        let transport = Arc::new(Mutex::new(transport));
        transports.push(transport.clone());
        mmio.insert(base, virtio::mmio::MMIO_LEN, transport)?;
        slots.push(acpi::VirtioMmioSlot {
            base,
            len: virtio::mmio::MMIO_LEN,
            gsi,
        });
    }
    Ok((slots, transports))
}

fn write_descriptor_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let gdt: Vec<u8> = gdt::boot_gdt()
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    mem.write_slice(&gdt, GuestAddress(GDT_START))
        .and_then(|_| mem.write_obj(0u64, GuestAddress(IDT_START)))
        .map_err(Error::BootTables)
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// vCPU threads are kicked out of KVM_RUN with a real-time signal whose handler does nothing:
/// its only job is to make the ioctl return EINTR.
fn install_kick_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(SIGRTMIN(), kick_handler).map_err(Error::KickHandler);
    });
    result
}

/// Interrupts KVM_RUN on every vCPU thread (for pause).
fn vcpu_kicker(threads: &[JoinHandle<()>]) -> Kicker {
    use std::os::unix::thread::JoinHandleExt;
    let ids: Vec<libc::pthread_t> = threads.iter().map(|t| t.as_pthread_t()).collect();
    Arc::new(move || {
        for &id in &ids {
            // SAFETY: the vCPU threads are joined only after the control server's thread (the
            // only user of this closure, through the machine handle) has ended, so every id
            // names a live thread.
            unsafe { libc::pthread_kill(id, SIGRTMIN()) };
        }
    })
}

/// Kicks every vCPU thread until it has seen the stop flag, then joins it. A kick can land just
/// before a thread enters KVM_RUN, so it is repeated until the thread is gone.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = t.join();
    }
}

/// Copies standard input to the serial console's receive FIFO. The thread ends at EOF or when
/// the machine stops; it is detached because a read of a terminal cannot be interrupted.
fn spawn_console_input(serial: Arc<Mutex<Serial>>, control: Arc<RunControl>) {
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    if control.should_stop() {
                        return;
                    }
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained the FIFO yet.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::{guest_cmdline, Error, SpareThread};
    use crate::handle::ServeError;
    use crate::migration::MigrationError;
    use crate::snapshot::{SnapshotError, StateError};

    /// The typed errors keep the one-line messages users (and the tests that run the binary)
    /// read, and hand their cause on as `source()`.
    #[test]
    fn errors_keep_their_lines_and_their_sources() {
        let e =
            Error::os("cannot create an eventfd")(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(
            e.to_string()
                .starts_with("cannot create an eventfd: Too many open files"),
            "{e}"
        );
        let io = e
            .source()
            .unwrap()
            .downcast_ref::<std::io::Error>()
            .unwrap();
        assert_eq!(io.raw_os_error(), Some(libc::EMFILE));

        let e = Error::Kvm {
            what: "cannot read KVM's supported CPUID",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        };
        assert!(matches!(&e, Error::Kvm { source, .. } if source.errno() == libc::E2BIG));
        assert!(e.source().unwrap().is::<kvm_ioctls::Error>());

        let e = Error::TooManyDevices { count: 40 };
        assert_eq!(
            e.to_string(),
            format!(
                "40 virtio devices asked for; at most {} fit",
                crate::arch::layout::MAX_VIRTIO_DEVICES
            )
        );
        assert!(e.source().is_none());

        let e: Error = ServeError::Start {
            socket: "/run/vm.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        }
        .into();
        assert!(matches!(e, Error::Serve(ServeError::Start { .. })));
        assert!(
            e.to_string()
                .starts_with("cannot serve the API on /run/vm.sock: "),
            "{e}"
        );

        let e: Error = SnapshotError::Inconsistent {
            path: "/s/state".into(),
            source: StateError::VcpuCount {
                states: 1,
                vcpus: 2,
            },
        }
        .into();
        assert_eq!(
            e.to_string(),
            "snapshot /s/state: 1 vCPU states for 2 vCPUs"
        );
        // Transparent: the snapshot error's own source is the next one down.
        let state = e.source().unwrap().downcast_ref::<StateError>().unwrap();
        assert!(matches!(
            state,
            StateError::VcpuCount {
                states: 1,
                vcpus: 2
            }
        ));

        let e: Error = MigrationError::Listen {
            addr: "10.0.0.2:20000".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        }
        .into();
        assert!(
            e.to_string()
                .starts_with("migration: cannot listen on 10.0.0.2:20000: "),
            "{e}"
        );
        assert!(e.source().unwrap().is::<MigrationError>());
    }

    #[test]
    fn a_spare_thread_runs_its_work_under_its_name_and_an_unused_one_ends() {
        let spare = SpareThread::spawn("vcpu0").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spare
            .run(move || {
                let name = std::thread::current().name().map(str::to_string);
                tx.send(name).unwrap();
            })
            .unwrap();
        assert_eq!(handle.thread().name(), Some("vcpu0"));
        assert_eq!(rx.recv().unwrap().as_deref(), Some("vcpu0"));
        handle.join().unwrap();

        // Without work (its sender dropped, as when a shell goes unused) the thread ends.
        let SpareThread { work, thread, .. } = SpareThread::spawn("vcpu0").unwrap();
        drop(work);
        thread.join().unwrap();
    }

    #[test]
    fn no_pci_bus_is_stated_unless_the_user_says_otherwise() {
        assert_eq!(
            guest_cmdline("console=ttyS0 quiet"),
            "console=ttyS0 quiet pci=off"
        );
        assert_eq!(guest_cmdline("pci=noacpi quiet"), "pci=noacpi quiet");
        assert_eq!(guest_cmdline(""), "pci=off");
    }
}
