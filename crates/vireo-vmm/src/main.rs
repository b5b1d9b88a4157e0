//! `vireo-vmm`: one process per virtual machine.
//!
//! Exit status: 0 the guest powered off; 3 the guest asked for a reboot; 4 the guest failed
//! (triple fault, emulation failure, crash); 1 the VM could not be built or run; 2 bad usage;
//! 159 a VMM thread made a system call its seccomp filter forbids.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use vireo_vmm_api::{ExitCounts, ExitSummary, Stop};
use vmm::config::{parse_memory_mib, SerialConfig};
use vmm::seccomp::SeccompMode;
use vmm::{RunOptions, StopReason, VmConfig};

const EXIT_POWEROFF: u8 = 0;
const EXIT_ERROR: u8 = 1;
const EXIT_REBOOT: u8 = 3;
const EXIT_GUEST_FAULT: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "vireo-vmm",
    version,
    about = "Run one KVM virtual machine: boot a Linux kernel with a serial console",
    after_help = "Exit status: 0 guest powered off, 3 guest rebooted, 4 guest fault \
                  (triple fault, emulation failure), 1 error, 2 usage, 159 forbidden system \
                  call (seccomp).\n\
                  Flags override the values of --config."
)]
struct Args {
    /// VM configuration as JSON ({"kernel", "initrd", "cmdline", "vcpus", "memory_mib", "serial"}).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 panic=-1"].
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// Guest memory: MiB, or a size such as 512M or 16G [default: 256M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Serial console output: stdout, none, or file:PATH [default: stdout].
    #[arg(long, value_name = "WHERE")]
    serial: Option<String>,
    /// Add a virtio-blk drive (repeatable; /dev/vda, /dev/vdb, ... in order, after those of
    /// --config): path=FILE[,ro][,serial=S][,iops=N][,bps=N].
    #[arg(long, value_name = "SPEC")]
    drive: Vec<String>,
    /// Add a virtio-net device on an existing TAP (repeatable; after those of --config):
    /// tap=NAME[,mac=MAC][,rx_pps=N][,rx_bps=N][,tx_pps=N][,tx_bps=N].
    #[arg(long, value_name = "SPEC")]
    net: Vec<String>,
    /// Add a virtio-balloon: target=MIB[,stats=SECONDS][,deflate-on-oom].
    #[arg(long, value_name = "SPEC")]
    balloon: Option<String>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Add a virtio-vsock device: cid=N,uds=PATH (host processes connect to PATH and write
    /// "CONNECT <port>\n"; guest connections to host port P go to PATH_P).
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    /// What the guest's SMBIOS (DMI) tables say about the machine:
    /// uuid=UUID,serial=S,asset-tag=S,manufacturer=S,product=S,version=S,sku=S,family=S (each
    /// optional; strings 1-64 bytes, no commas; see docs/vmm.md).
    #[arg(long, value_name = "SPEC")]
    smbios: Option<String>,
    /// Back guest RAM with 4 KiB pages only (default: transparent huge pages where available).
    #[arg(long)]
    no_huge_pages: bool,
    /// Serve the control API (HTTP/JSON) on this Unix socket; see docs/api.md. Given alone
    /// (with --serial and --summary-json at most), the VMM waits on it for a snapshot to
    /// load: PUT /vm/snapshot/load {"path": DIR, "resume": true|false}.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Start from the snapshot in DIR (written by PUT /vm/snapshot) instead of booting; only
    /// --api-sock, --serial, --resume, --no-verify-memory and --summary-json apply.
    #[arg(long, value_name = "DIR", conflicts_with = "incoming")]
    restore: Option<PathBuf>,
    /// With --restore: run the guest at once (default: paused until PUT /vm/resume).
    #[arg(long, requires = "restore")]
    resume: bool,
    /// With --restore: check only the state's checksum, not the memory file's (which reads
    /// all of the memory file's data).
    #[arg(long, requires = "restore")]
    no_verify_memory: bool,
    /// Wait on ADDR:PORT (TCP) for one live migration (PUT /vm/migrate on the source), then
    /// run the migrated guest; only --api-sock, --serial, --summary-json and --config (the
    /// drives, TAPs and vsock socket the source may bring) apply.
    #[arg(long, value_name = "ADDR:PORT")]
    incoming: Option<String>,
    /// System-call filters while the guest runs: on (a forbidden call stops the VMM with
    /// status 159), log (the kernel logs forbidden calls, which go through) or off; see
    /// docs/security.md.
    #[arg(long, value_name = "MODE", default_value = "on", value_parser = parse_seccomp)]
    seccomp: SeccompMode,
    /// After the VM ends, write how it ended and its VM exits by reason as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
}

fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    s.parse()
}

/// Why the command line or a file it names cannot be used, or a summary cannot be written.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read config {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {}: {source}", path.display())]
    InvalidConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no kernel: give --kernel FILE or --config FILE")]
    NoKernel,
    #[error("invalid --serial {0:?}: use stdout, none or file:PATH")]
    Serial(String),
    /// `--memory` that does not parse.
    #[error(transparent)]
    Memory(#[from] vmm::config::ConfigError),
    /// `--drive`, `--net`, `--balloon` or `--vsock` that does not parse.
    #[error(transparent)]
    DeviceOption(#[from] vmm::config::OptionError),
    /// `--smbios` that does not parse.
    #[error(transparent)]
    Smbios(#[from] vireo_vmm_api::smbios::FlagError),
    #[error(
        "--restore and --incoming take the VM's configuration from the snapshot or the \
             source; only --api-sock, --serial and --summary-json apply"
    )]
    BootFlagsWithRestore,
    #[error("cannot write summary {}: {source}", path.display())]
    WriteSummary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn parse_serial(s: &str) -> Result<SerialConfig, CliError> {
    match s {
        "stdout" => Ok(SerialConfig::Stdout),
        "none" => Ok(SerialConfig::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
            _ => Err(CliError::Serial(s.to_string())),
        },
    }
}

/// The VM configuration file at `path` (`--config`).
fn read_config(path: &std::path::Path) -> Result<VmConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CliError::InvalidConfig {
        path: path.to_path_buf(),
        source,
    })
}

fn build_config(args: &Args) -> Result<VmConfig, CliError> {
    let mut config = match &args.config {
        Some(path) => {
            let mut c = read_config(path)?;
            if let Some(k) = &args.kernel {
                c.kernel = k.clone();
            }
            c
        }
        None => match &args.kernel {
            Some(k) => VmConfig::new(k.clone()),
            None => return Err(CliError::NoKernel),
        },
    };
    if let Some(i) = &args.initrd {
        config.initrd = Some(i.clone());
    }
    if let Some(c) = &args.cmdline {
        config.cmdline = c.clone();
    }
    if let Some(n) = args.vcpus {
        config.vcpus = n;
    }
    if let Some(m) = &args.memory {
        config.memory_mib = parse_memory_mib(m)?;
    }
    for d in &args.drive {
        config.drives.push(vmm::config::DriveConfig::parse(d)?);
    }
    for n in &args.net {
        config.net.push(vmm::config::NetConfig::parse(n)?);
    }
    if let Some(b) = &args.balloon {
        config.balloon = Some(vmm::config::BalloonConfig::parse(b)?);
    }
    if args.rng {
        config.rng = true;
    }
    if let Some(v) = &args.vsock {
        config.vsock = Some(vmm::config::VsockConfig::parse(v)?);
    }
    if let Some(s) = &args.smbios {
        config.smbios = vmm::config::Smbios::parse_flag(s)?;
    }
    if args.no_huge_pages {
        config.huge_pages = false;
    }
    if let Some(s) = &args.serial {
        config.serial = parse_serial(s)?;
    }
    Ok(config)
}

fn write_summary(path: &PathBuf, report: &vmm::RunReport) -> Result<(), CliError> {
    let stop = match &report.reason {
        StopReason::PowerOff => Stop::PowerOff,
        StopReason::Reset => Stop::Reboot,
        StopReason::Host => Stop::Host,
        StopReason::Migrated => Stop::Migrated,
        StopReason::Fault(f) => Stop::Fault(f.to_string()),
    };
    let counts = |c: vmm::ExitCounts| ExitCounts {
        hlt: c.hlt,
        interrupted: c.interrupted,
        io_in: c.io_in,
        io_out: c.io_out,
        mmio_read: c.mmio_read,
        mmio_write: c.mmio_write,
        other: c.other,
    };
    let summary = ExitSummary {
        exits_per_vcpu: report.exits.iter().copied().map(counts).collect(),
        exits_total: counts(report.total_exits()),
        stop,
    };
    std::fs::write(path, summary.to_file_text()).map_err(|source| CliError::WriteSummary {
        path: path.clone(),
        source,
    })
}

fn main() -> ExitCode {
    vmm::machine::mark_process_start();
    // Before any thread starts: see its docs (a vCPU thread must never open a file).
    vmm::seccomp::prepare_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let fail = |msg: &dyn std::fmt::Display| {
        eprintln!("vireo-vmm: error: {msg}");
        ExitCode::from(EXIT_ERROR)
    };
    let opts = RunOptions {
        console_input: true,
        control: args.api_sock.clone().map(|sock| {
            Arc::new(vmm::api::HttpApi::new(sock)) as Arc<dyn vmm::handle::ControlServer>
        }),
        restore_requested: None,
        seccomp: args.seccomp,
    };
    // Flags that describe a VM to boot. A destination may be given the VM's configuration
    // (--config): the devices the source may bring.
    let booting = (args.config.is_some() && args.incoming.is_none())
        || args.kernel.is_some()
        || args.initrd.is_some()
        || args.cmdline.is_some()
        || args.vcpus.is_some()
        || args.memory.is_some()
        || !args.drive.is_empty()
        || !args.net.is_empty()
        || args.balloon.is_some()
        || args.rng
        || args.vsock.is_some()
        || args.smbios.is_some();
    let result = if let (false, None, None, Some(sock)) =
        (booting, &args.restore, &args.incoming, &args.api_sock)
    {
        // Nothing to boot: wait for PUT /vm/snapshot/load on the API socket.
        let serial = match args.serial.as_deref().map(parse_serial).transpose() {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        vmm::api::restore_from_api(sock, serial, opts)
    } else if args.restore.is_some() || args.incoming.is_some() {
        if booting {
            return fail(&CliError::BootFlagsWithRestore);
        }
        let serial = match args.serial.as_deref().map(parse_serial).transpose() {
            Ok(s) => s,
            Err(e) => return fail(&e),
        };
        if let Some(dir) = &args.restore {
            vmm::snapshot::restore(
                &vmm::snapshot::RestoreOptions {
                    dir: dir.clone(),
                    resume: args.resume,
                    verify_memory: !args.no_verify_memory,
                    serial,
                },
                opts,
            )
        } else {
            let addr = args.incoming.as_deref().unwrap_or_default();
            let local = match args.config.as_deref().map(read_config).transpose() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            vmm::migration::incoming(
                addr,
                vmm::migration::IncomingOptions { serial, local },
                opts,
            )
        }
    } else {
        match build_config(&args) {
            Ok(c) => vmm::run(&c, opts),
            Err(e) => return fail(&e),
        }
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if let Some(path) = &args.summary_json {
        if let Err(e) = write_summary(path, &report) {
            return fail(&e);
        }
    }
    match report.reason {
        StopReason::PowerOff | StopReason::Host | StopReason::Migrated => {
            ExitCode::from(EXIT_POWEROFF)
        }
        StopReason::Reset => ExitCode::from(EXIT_REBOOT),
        StopReason::Fault(f) => {
            eprintln!("vireo-vmm: guest failed: {f}");
            ExitCode::from(EXIT_GUEST_FAULT)
        }
    }
}
