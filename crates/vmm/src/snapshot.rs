//! Snapshots: a paused machine's whole state in a directory, and a machine started from one.
//!
//! A snapshot directory holds two files:
//!
//! - `state`: a 64-byte header (magic `VIREOSNP`, format version, the state's length and
//!   checksum, the memory file's length and checksum, the header's own checksum; XXH64, see
//!   [`crate::checksum`]) followed by the machine state ([`encode_state`]: [`MachineState`], the VM's
//!   configuration, KVM's VM and vCPU state, every device's state);
//! - `memory`: guest RAM, its regions one after the other, as a sparse file (pages that are all
//!   zero are holes).
//!
//! A restore maps `memory` copy-on-write (MAP_PRIVATE), so its cost does not grow with the
//! guest's size; the guest reads the file's pages on first touch. Everything read is checked
//! before anything is created: the header's magic, version and checksums, the state's
//! consistency (regions, vCPU count, device order) and its CPU against this host's KVM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::legacy::{EventFdTrigger, Serial, SerialSnapshot};
use devices::virtio::mmio::{MmioTransport, TransportState};
use devices::virtio::EventLoopHandle;
use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::{cpuid, layout};
use crate::checksum;
use crate::config::{host_memory_mib, VmConfig};
use crate::handle::Kicker;
use crate::machine::{self, Error, Launch, MemorySource, Parts, RunOptions, RunReport, Shell};
use crate::memory::{is_zero_page, GuestMemoryMmap, PAGE_SIZE};
use crate::vstate::control::RunControl;
use crate::vstate::vcpu::{VcpuHandle, VcpuState};
use crate::vstate::vm::{Vm, VmState};

pub const MAGIC: &[u8; 8] = b"VIREOSNP";
/// The format version this build writes and reads. Bump it whenever [`MachineState`] or the
/// layout of the files changes.
pub const VERSION: u32 = 4;
pub const HEADER_LEN: usize = 64;
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// A state larger than this is not ours (a real one is a few hundred KiB at most).
pub const MAX_STATE_LEN: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("snapshot {0}: not a vireo snapshot (bad magic)")]
    Magic(String),
    #[error("snapshot {path}: format version {found}, this vireo-vmm reads version {VERSION}")]
    Version { path: String, found: u32 },
    #[error("snapshot {path}: {what} checksum mismatch (the snapshot is damaged)")]
    Checksum { path: String, what: &'static str },
    #[error("snapshot {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("snapshot does not fit this host: {0}")]
    Mismatch(String),
    #[error("the VM must be paused (PUT /vm/pause) before a snapshot")]
    NotPaused,
    #[error("cannot take a snapshot: {0}")]
    Save(String),
    /// A state file whose machine state does not decode.
    #[error("snapshot {path}: state: {source}")]
    Decode {
        path: String,
        #[source]
        source: StateError,
    },
    /// A state file whose machine state contradicts itself ([`check_consistent`]).
    #[error("snapshot {path}: {source}")]
    Inconsistent {
        path: String,
        #[source]
        source: StateError,
    },
}

/// A machine state that cannot be encoded, does not decode, or contradicts itself, as a
/// snapshot's state file and a migration's STATE frame carry it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot encode the machine state: {0}")]
    Encode(#[source] postcard::Error),
    /// postcard's reason, e.g. a truncated or trailing byte.
    #[error("{0}")]
    Decode(#[source] postcard::Error),
    #[error("configuration without vCPUs or memory")]
    Empty,
    #[error("memory regions {regions:?} do not match {memory_mib} MiB of RAM")]
    Regions {
        regions: Vec<(u64, u64)>,
        memory_mib: u64,
    },
    #[error("{states} vCPU states for {vcpus} vCPUs")]
    VcpuCount { states: usize, vcpus: u8 },
    #[error("vCPU states out of order")]
    VcpuOrder,
    #[error("too many CPUID entries")]
    Cpuid,
    #[error("{states} device states for {devices} devices")]
    DeviceCount { states: usize, devices: usize },
}

/// What this host looked like when the snapshot was taken (checked again on restore).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// CPUID leaf 0 vendor string of the vCPUs.
    pub cpu_vendor: String,
    pub kvm_api_version: i32,
    /// The feature leaves of the CPUID this host's KVM gives a new vCPU, as
    /// (function, index, eax, ebx, ecx, edx). What KVM_GET_CPUID2 returns for a running vCPU
    /// can hold more than KVM_GET_SUPPORTED_CPUID (KVM-PVM adds bits), so hosts are compared
    /// by this, like for like.
    pub cpu_features: Vec<[u32; 6]>,
    /// The rate of the vCPUs' TSC in kHz (`KVM_GET_TSC_KHZ`; 0 where KVM cannot say). A guest
    /// calibrated its clocks to it, so a restore runs the vCPUs at this rate.
    pub tsc_khz: u32,
}

/// The feature leaves compared between hosts: (function, index).
const FEATURE_LEAVES: [(u32, u32); 4] = [(1, 0), (7, 0), (0xd, 1), (0x8000_0001, 0)];

/// This host's [`HostInfo`] for a VM of `nr_vcpus` whose vCPUs' TSC runs at `tsc_khz`, from
/// KVM's supported CPUID and facts already read.
pub(crate) fn host_info_from(
    supported: &kvm_bindings::CpuId,
    tsc_deadline: bool,
    kvm_api_version: i32,
    nr_vcpus: u8,
    tsc_khz: u32,
) -> HostInfo {
    let opts = cpuid::CpuidOptions {
        nr_vcpus,
        tsc_deadline,
    };
    let template = cpuid::vcpu_cpuid(supported, 0, opts);
    let entries = template.as_slice();
    HostInfo {
        cpu_vendor: cpu_vendor(entries),
        kvm_api_version,
        tsc_khz,
        cpu_features: FEATURE_LEAVES
            .iter()
            .filter_map(|&(f, i)| {
                entries
                    .iter()
                    .find(|e| e.function == f && e.index == i)
                    .map(|e| [f, i, e.eax, e.ebx, e.ecx, e.edx])
            })
            .collect(),
    }
}

/// Everything but guest memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub host: HostInfo,
    /// The configuration the machine was built from; device backends are opened again by the
    /// paths in it.
    pub config: VmConfig,
    /// Guest RAM regions (guest address, size), in memory-file order.
    pub regions: Vec<(u64, u64)>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    /// One per virtio-mmio slot, in slot order.
    pub transports: Vec<TransportState>,
    pub serial: SerialSnapshot,
}

/// What the API needs to snapshot or migrate a running machine.
pub struct MachineAccess {
    pub vm: Arc<Vm>,
    pub mem: Arc<GuestMemoryMmap>,
    /// What backs guest memory: which pages need reading.
    pub backed: crate::memory::Backed,
    pub config: VmConfig,
    pub vcpus: Vec<VcpuHandle>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub serial: Arc<Mutex<Serial>>,
    pub io: EventLoopHandle,
    pub control: Arc<RunControl>,
    pub kick_vcpus: Kicker,
    /// This host's facts as a snapshot or a migration's HELLO records them, read once before
    /// the vCPUs ran: a running vCPU holds its descriptor (a halted one, for as long as it
    /// halts), and nothing in them changes while the machine runs.
    pub host: HostInfo,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The vendor string of a CPUID (leaf 0: EBX, EDX, ECX).
fn cpu_vendor(entries: &[kvm_cpuid_entry2]) -> String {
    entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| {
            let mut b = Vec::with_capacity(12);
            for r in [e.ebx, e.edx, e.ecx] {
                b.extend_from_slice(&r.to_le_bytes());
            }
            String::from_utf8_lossy(&b).into_owned()
        })
        .unwrap_or_default()
}

impl MachineAccess {
    pub fn regions(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    /// Reads every piece of state but memory. The vCPUs must be parked and the I/O thread
    /// frozen.
    pub fn save_state(&self) -> Result<MachineState, SnapshotError> {
        let save = |e: String| SnapshotError::Save(e);
        let msrs = self.vm.msrs_to_save().map_err(|e| save(e.to_string()))?;
        let vcpus = self
            .vcpus
            .iter()
            .map(|v| v.save(&msrs))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| save(e.to_string()))?;
        let vm = self.vm.save_state().map_err(|e| save(e.to_string()))?;
        let transports: Vec<TransportState> = self
            .transports
            .iter()
            .map(|t| lock(t).save_state())
            .collect();
        let mut config = self.config.clone();
        // A net device without a configured MAC got a random one, which the guest now uses:
        // keep it (the first 6 bytes of a net device's configuration space).
        let macs = transports
            .iter()
            .filter(|t| t.device_type == devices::virtio::device_type::NET)
            .map(|t| {
                t.config[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            });
        for (n, mac) in config.net.iter_mut().zip(macs) {
            n.mac = Some(mac);
        }
        if let (Some(b), Some(t)) = (
            config.balloon.as_mut(),
            transports
                .iter()
                .find(|t| t.device_type == devices::virtio::device_type::BALLOON),
        ) {
            let pages = u32::from_le_bytes([t.config[0], t.config[1], t.config[2], t.config[3]]);
            b.target_mib = pages / ((1 << 20) / PAGE_SIZE as u32);
        }
        Ok(MachineState {
            host: self.host.clone(),
            config,
            regions: self.regions(),
            vm,
            vcpus,
            transports,
            serial: lock(&self.serial).snapshot(),
        })
    }

    /// Encodes a state shaped like this machine's (its configuration, devices and VM-wide KVM
    /// state, which can be read while the vCPUs run; their own state zeroed) and throws it
    /// away. A migration's source does this before it begins, so that the code is warm when it
    /// saves and encodes the real state inside the downtime (see [`warm_up`] for why that
    /// matters: ~5 ms in the lab).
    pub fn warm_up_save(&self) {
        let _ = self.vm.msrs_to_save();
        let state = MachineState {
            host: self.host.clone(),
            config: self.config.clone(),
            regions: self.regions(),
            vm: self.vm.save_state().unwrap_or_default(),
            vcpus: self
                .vcpus
                .iter()
                .map(|v| VcpuState {
                    id: v.id,
                    ..Default::default()
                })
                .collect(),
            transports: self
                .transports
                .iter()
                .map(|t| lock(t).save_state())
                .collect(),
            serial: lock(&self.serial).snapshot(),
        };
        let _ = encode_state(&state).map(|e| checksum::of(&e));
    }

    /// Writes a snapshot of the paused machine to `dir` (created if missing).
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotStats, SnapshotError> {
        if !self.control.pause_requested() {
            return Err(SnapshotError::NotPaused);
        }
        let t0 = std::time::Instant::now();
        let _frozen = self
            .io
            .freeze()
            .map_err(|e| SnapshotError::Save(e.to_string()))?;
        let state = self.save_state()?;
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |e: std::io::Error| SnapshotError::Io {
                path: path.clone(),
                reason: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The memory file is written under another name and renamed: the directory may hold
        // the very snapshot this VM was restored from, whose memory file is mapped here and
        // must not be truncated under the guest (its inode lives on until unmapped).
        let mem_path = dir.join(MEMORY_FILE);
        let mem_tmp = dir.join("memory.tmp");
        let (mem_len, mem_sum, data_bytes) =
            write_memory(&self.mem, &self.backed, &mem_tmp).map_err(io_err(&mem_tmp))?;
        let state_path = dir.join(STATE_FILE);
        write_state(&state_path, &state, mem_len, mem_sum).map_err(io_err(&state_path))?;
        std::fs::rename(&mem_tmp, &mem_path).map_err(io_err(&mem_path))?;
        Ok(SnapshotStats {
            memory_bytes: mem_len,
            memory_data_bytes: data_bytes,
            millis: t0.elapsed().as_millis() as u64,
        })
    }
}

/// What a snapshot cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SnapshotStats {
    pub memory_bytes: u64,
    /// Bytes of pages that are not all zero (what the sparse file really holds).
    pub memory_data_bytes: u64,
    pub millis: u64,
}

/// Accumulates the memory checksum: an XXH64 over (page number, page) of every page that is
/// not all zero, in address order, so that a sparse file and a migration stream agree on it.
#[derive(Default)]
pub struct MemoryDigest(crate::checksum::Digest);

impl MemoryDigest {
    pub fn page(&mut self, page_number: u64, page: &[u8]) {
        if !is_zero_page(page) {
            self.0.write(&page_number.to_le_bytes());
            self.0.write(page);
        }
    }
    pub fn sum(&self) -> u64 {
        self.0.sum64()
    }
}

/// Copies guest memory out, at most `CHUNK` bytes at a time, through vm-memory (so that a
/// concurrent guest write is a torn copy, not undefined behaviour), calling
/// `f(file offset, bytes)`. Pages that cannot hold anything but zeros (never touched, and not
/// in the memory file behind them) are skipped unread.
pub fn for_each_chunk(
    mem: &GuestMemoryMmap,
    backed: &crate::memory::Backed,
    mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut file_off = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let runs = backed.runs(host, len as usize, file_off);
        let runs = runs.unwrap_or_else(|| vec![(0, len as usize)]);
        for (start, run_len) in runs {
            let (start, end) = (start as u64, (start + run_len) as u64);
            let mut off = start;
            while off < end {
                let n = (end - off).min(CHUNK as u64) as usize;
                mem.read_slice(&mut buf[..n], GuestAddress(region.start_addr().0 + off))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                f(file_off + off, &buf[..n])?;
                off += n as u64;
            }
        }
        file_off += len;
    }
    Ok(())
}

/// Writes guest memory to `path` as a sparse file; returns (length, checksum, data bytes).
fn write_memory(
    mem: &GuestMemoryMmap,
    backed: &crate::memory::Backed,
    path: &Path,
) -> std::io::Result<(u64, u64, u64)> {
    let file = File::create(path)?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut digest = MemoryDigest::default();
    let mut data = 0u64;
    for_each_chunk(mem, backed, |off, bytes| {
        // Runs of non-zero pages are written with one call each.
        let mut run_start: Option<usize> = None;
        for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
            let zero = is_zero_page(page);
            if !zero {
                digest.page((off / PAGE_SIZE as u64) + i as u64, page);
            }
            match (zero, run_start) {
                (false, None) => run_start = Some(i),
                (true, Some(s)) => {
                    file.write_all_at(
                        &bytes[s * PAGE_SIZE..i * PAGE_SIZE],
                        off + (s * PAGE_SIZE) as u64,
                    )?;
                    data += ((i - s) * PAGE_SIZE) as u64;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            file.write_all_at(&bytes[s * PAGE_SIZE..], off + (s * PAGE_SIZE) as u64)?;
            data += (bytes.len() - s * PAGE_SIZE) as u64;
        }
        Ok(())
    })?;
    file.sync_all()?;
    Ok((total, digest.sum(), data))
}

/// Encodes the 64-byte header.
pub fn header(state_len: u64, state_sum: u64, mem_len: u64, mem_sum: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&state_len.to_le_bytes());
    h[24..32].copy_from_slice(&state_sum.to_le_bytes());
    h[32..40].copy_from_slice(&mem_len.to_le_bytes());
    h[40..48].copy_from_slice(&mem_sum.to_le_bytes());
    let sum = checksum::of(&h[..56]);
    h[56..64].copy_from_slice(&sum.to_le_bytes());
    h
}

fn write_state(
    path: &Path,
    state: &MachineState,
    mem_len: u64,
    mem_sum: u64,
) -> std::io::Result<()> {
    let encoded = encode_state(state).map_err(std::io::Error::other)?;
    // Written beside and renamed, so that a crash never leaves a half-written state file
    // under the final name.
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&header(
        encoded.len() as u64,
        checksum::of(&encoded),
        mem_len,
        mem_sum,
    ))?;
    f.write_all(&encoded)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The machine state as a snapshot's state file and a migration's STATE frame carry it:
/// postcard, a compact binary serde format, in which KVM's structures are raw bytes (JSON took
/// 10-20 ms to decode in the lab, during a restore or a migration's downtime).
pub fn encode_state(state: &MachineState) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(state).map_err(StateError::Encode)
}

/// The machine state in `bytes` ([`encode_state`]); the error says what did not decode.
pub fn decode_state(bytes: &[u8]) -> Result<MachineState, StateError> {
    postcard::from_bytes(bytes).map_err(StateError::Decode)
}

/// A parsed and checked state file, with the memory file opened.
pub struct Loaded {
    pub state: MachineState,
    pub memory: File,
}

fn u64_at(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads and checks `dir`: header, state checksum and consistency, the memory file's length
/// and (with `verify_memory`) its checksum.
pub fn load(dir: &Path, verify_memory: bool) -> Result<Loaded, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let sp = state_path.display().to_string();
    let io = |path: &str| {
        let path = path.to_string();
        move |e: std::io::Error| SnapshotError::Io {
            path: path.clone(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".into(),
                _ => e.to_string(),
            },
        }
    };
    let mut f = File::open(&state_path).map_err(io(&sp))?;
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h).map_err(|_| SnapshotError::Invalid {
        path: sp.clone(),
        reason: "shorter than its header".into(),
    })?;
    if &h[..8] != MAGIC {
        return Err(SnapshotError::Magic(sp));
    }
    if checksum::of(&h[..56]) != u64_at(&h, 56) {
        return Err(SnapshotError::Checksum {
            path: sp,
            what: "header",
        });
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: sp,
            found: version,
        });
    }
    let (state_len, state_sum, mem_len, mem_sum) = (
        u64_at(&h, 16),
        u64_at(&h, 24),
        u64_at(&h, 32),
        u64_at(&h, 40),
    );
    if state_len > MAX_STATE_LEN {
        return Err(SnapshotError::Invalid {
            path: sp,
            reason: format!("state of {state_len} bytes (at most {MAX_STATE_LEN})"),
        });
    }
    let mut encoded = Vec::with_capacity(state_len as usize);
    f.take(state_len + 1)
        .read_to_end(&mut encoded)
        .map_err(io(&sp))?;
    if encoded.len() as u64 != state_len {
        return Err(SnapshotError::Invalid {
            path: sp,
            reason: format!(
                "state is {} bytes, the header says {state_len}",
                encoded.len()
            ),
        });
    }
    tracing::debug!("state read ({} bytes)", encoded.len());
    if checksum::of(&encoded) != state_sum {
        return Err(SnapshotError::Checksum {
            path: sp,
            what: "state",
        });
    }
    let state = decode_state(&encoded).map_err(|source| SnapshotError::Decode {
        path: sp.clone(),
        source,
    })?;
    tracing::debug!("state decoded");
    check_consistent(&state).map_err(|source| SnapshotError::Inconsistent { path: sp, source })?;

    let mem_path = dir.join(MEMORY_FILE);
    let mp = mem_path.display().to_string();
    let memory = File::open(&mem_path).map_err(io(&mp))?;
    let len = memory.metadata().map_err(io(&mp))?.len();
    let expected: u64 = state.regions.iter().map(|r| r.1).sum();
    if len != mem_len || len != expected {
        return Err(SnapshotError::Invalid {
            path: mp,
            reason: format!("{len} bytes, the snapshot's RAM is {expected}"),
        });
    }
    if verify_memory && memory_file_digest(&memory).map_err(io(&mp))? != mem_sum {
        return Err(SnapshotError::Checksum {
            path: mp,
            what: "memory",
        });
    }
    Ok(Loaded { state, memory })
}

/// The checksum of a memory file, reading only its data (holes are zero pages, which the
/// checksum skips).
fn memory_file_digest(f: &File) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut digest = MemoryDigest::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: u64 = 0;
    while pos < len {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // Only a hole is left.
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Page-align the extent (a filesystem block may be smaller than a page).
        let mut at = (data as u64) / PAGE_SIZE as u64 * PAGE_SIZE as u64;
        let end = (hole as u64).min(len);
        while at < end {
            let n = ((end - at) as usize)
                .min(buf.len())
                .next_multiple_of(PAGE_SIZE);
            let n = n.min((len - at) as usize);
            f.read_exact_at(&mut buf[..n], at)?;
            for (i, page) in buf[..n].chunks(PAGE_SIZE).enumerate() {
                digest.page(at / PAGE_SIZE as u64 + i as u64, page);
            }
            at += n as u64;
        }
        pos = at.max(end);
    }
    Ok(digest.sum())
}

/// Checks what a state says about itself: the regions are the ones its memory size gives,
/// one vCPU state per vCPU in order, a sane configuration.
pub fn check_consistent(s: &MachineState) -> Result<(), StateError> {
    let c = &s.config;
    if c.vcpus == 0 || c.memory_mib == 0 {
        return Err(StateError::Empty);
    }
    let regions: Vec<(u64, u64)> = layout::ram_regions(c.memory_bytes())
        .iter()
        .map(|(a, l)| (a.0, *l))
        .collect();
    if s.regions != regions {
        return Err(StateError::Regions {
            regions: s.regions.clone(),
            memory_mib: c.memory_mib,
        });
    }
    if s.vcpus.len() != usize::from(c.vcpus) {
        return Err(StateError::VcpuCount {
            states: s.vcpus.len(),
            vcpus: c.vcpus,
        });
    }
    if s.vcpus
        .iter()
        .enumerate()
        .any(|(i, v)| usize::from(v.id) != i)
    {
        return Err(StateError::VcpuOrder);
    }
    if s.vcpus
        .iter()
        .any(|v| v.cpuid.len() > KVM_MAX_CPUID_ENTRIES)
    {
        return Err(StateError::Cpuid);
    }
    let expected = c.drives.len()
        + usize::from(c.rng)
        + usize::from(c.balloon.is_some())
        + c.net.len()
        + usize::from(c.vsock.is_some());
    if s.transports.len() != expected {
        return Err(StateError::DeviceCount {
            states: s.transports.len(),
            devices: expected,
        });
    }
    Ok(())
}

/// CPUID bits that change at run time with the guest's control registers and MSRs, not with
/// the host: OSXSAVE and APIC (leaf 1), OSPKE (leaf 7).
fn dynamic_bits(function: u32, reg: usize) -> u32 {
    match (function, reg) {
        (1, 2) => 1 << 27,
        (1, 3) => 1 << 9,
        (7, 2) => 1 << 4,
        _ => 0,
    }
}

/// Checks that this host (whose KVM facts `shell` has read) can run a machine from the host
/// `host` with `config`: the same CPU vendor and KVM API, every CPU feature the guest was shown
/// one this host's KVM would show it too, and a TSC this host can run at the saved rate. A
/// restore checks the snapshot's; a migration's destination the source's HELLO, before any page
/// is sent.
pub(crate) fn check_on_shell(
    shell: &Shell,
    host: &HostInfo,
    config: &VmConfig,
) -> Result<(), SnapshotError> {
    check_against(shell.kvm(), &shell.host_info(config.vcpus), host, config)
}

/// Checks a machine from the host `host` with `config` against this host (`here`).
fn check_against(
    kvm: &kvm_ioctls::Kvm,
    here: &HostInfo,
    host: &HostInfo,
    config: &VmConfig,
) -> Result<(), SnapshotError> {
    let s = HostAndConfig { host, config };
    let mismatch = |m: String| SnapshotError::Mismatch(m);
    if kvm.get_api_version() != s.host.kvm_api_version {
        return Err(mismatch(format!(
            "KVM API version {} here, {} in the snapshot",
            kvm.get_api_version(),
            s.host.kvm_api_version
        )));
    }
    let max = kvm.get_max_vcpus() as u64;
    if u64::from(s.config.vcpus) > max {
        return Err(mismatch(format!(
            "{} vCPUs in the snapshot; this host's KVM allows at most {max}",
            s.config.vcpus
        )));
    }
    let host_mib = host_memory_mib().unwrap_or(u64::MAX);
    if s.config.memory_mib > host_mib {
        return Err(mismatch(format!(
            "{} MiB of guest memory; this host has only {host_mib} MiB",
            s.config.memory_mib
        )));
    }
    if here.cpu_vendor != s.host.cpu_vendor {
        return Err(mismatch(format!(
            "CPU vendor {} here, {} in the snapshot",
            here.cpu_vendor, s.host.cpu_vendor
        )));
    }
    let (saved, local) = (s.host.tsc_khz, here.tsc_khz);
    if saved != 0
        && local != 0
        && tsc_differs(saved, local)
        && !kvm.check_extension(kvm_ioctls::Cap::TscControl)
    {
        return Err(mismatch(format!(
            "the guest's TSC runs at {saved} kHz, this host's at {local} kHz, and its KVM cannot scale a TSC"
        )));
    }
    for old in &s.host.cpu_features {
        let (function, index) = (old[0], old[1]);
        let new = here
            .cpu_features
            .iter()
            .find(|e| e[0] == function && e[1] == index)
            .copied()
            .unwrap_or([function, index, 0, 0, 0, 0]);
        // Leaf 1 EAX/EBX are the signature and APIC ID, not features.
        let first_reg = if function == 1 { 2 } else { 0 };
        for reg in first_reg..4 {
            let missing = old[2 + reg] & !new[2 + reg] & !dynamic_bits(function, reg);
            if missing != 0 {
                return Err(mismatch(format!(
                    "the guest uses CPU features this host lacks (CPUID {function:#x}.{index} {} bits {missing:#x})",
                    ["eax", "ebx", "ecx", "edx"][reg]
                )));
            }
        }
    }
    Ok(())
}

struct HostAndConfig<'a> {
    host: &'a HostInfo,
    config: &'a VmConfig,
}

/// Whether two TSC rates differ by more than what NTP corrects without a step (250 ppm; 500
/// is its limit): hosts of one model measure their TSC a few kHz apart, which a guest can live
/// with when the TSC cannot be scaled.
fn tsc_differs(a: u32, b: u32) -> bool {
    u64::from(a.abs_diff(b)) * 4000 > u64::from(a.max(b))
}

/// Runs a restore's steps once on `shell` before a real restore needs them: the state of the
/// shell's own VM and vCPU 0 is read, encoded, checksummed, decoded, checked and loaded back.
/// Nothing changes (a vCPU that never ran gets its own state back, and a restore overwrites all
/// of it), but the code is warm. Where KVM is nested under an emulator (the lab), code that runs
/// for the first time in a process is translated first: a restore's share of that is ~10 ms,
/// which a VMM waiting for a snapshot or a migration spends here, before the clock starts.
pub(crate) fn warm_up(shell: &Shell) {
    if let Err(e) = rehearse(shell) {
        // Only time is lost: the real restore reports what fails there.
        tracing::debug!("rehearsing a restore failed: {e}");
    }
}

/// [`warm_up`]'s steps; the error says which failed.
fn rehearse(shell: &Shell) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let (vm, vcpu0) = (shell.vm(), shell.vcpu0());
    let msrs = vm.msrs_to_save()?;
    let mut config = VmConfig::new(std::path::PathBuf::new());
    config.vcpus = 1;
    let state = MachineState {
        host: shell.host_info(1),
        regions: layout::ram_regions(config.memory_bytes())
            .iter()
            .map(|(a, l)| (a.0, *l))
            .collect(),
        config,
        vm: vm.save_state()?,
        vcpus: vec![vcpu0.save(&msrs)?],
        transports: Vec::new(),
        serial: SerialSnapshot::default(),
    };
    let encoded = encode_state(&state)?;
    // The header's and the state's checksums, as a load computes them; the values are not
    // needed.
    std::hint::black_box(header(encoded.len() as u64, checksum::of(&encoded), 0, 0));
    let decoded = decode_state(&encoded)?;
    check_consistent(&decoded)?;
    check_on_shell(shell, &decoded.host, &decoded.config)?;
    vm.restore_state(&decoded.vm)?;
    for v in &decoded.vcpus {
        vcpu0.restore(v)?;
    }
    tracing::debug!("restore rehearsed in {:?}", t0.elapsed());
    Ok(())
}

/// Loads a machine state into freshly built parts (memory already in place).
pub(crate) fn apply_state(parts: &Parts, state: &MachineState) -> Result<(), Error> {
    // The TSC rate first: the TSC's value (an MSR) is set against it.
    let want = state.host.tsc_khz;
    if want != 0 && parts.vm.kvm.check_extension(kvm_ioctls::Cap::TscControl) {
        for vcpu in &parts.vcpus {
            let h = vcpu.handle();
            if h.tsc_khz() != want {
                h.set_tsc_khz(want)?;
            }
        }
    }
    parts.vm.restore_state(&state.vm)?;
    for (vcpu, s) in parts.vcpus.iter().zip(&state.vcpus) {
        vcpu.handle().restore(s)?;
    }
    if parts.transports.len() != state.transports.len() {
        return Err(Error::DeviceStates {
            built: parts.transports.len(),
            saved: state.transports.len(),
        });
    }
    for (t, s) in parts.transports.iter().zip(&state.transports) {
        lock(t).restore_state(s).map_err(Error::DeviceState)?;
    }
    let trigger = parts
        .serial_irq
        .try_clone()
        .map_err(Error::os("cannot create an eventfd"))?;
    let out = machine::serial_output(&parts.config.serial)?;
    *lock(&parts.serial) = Serial::from_snapshot(EventFdTrigger::new(trigger), out, &state.serial)?;
    Ok(())
}

/// How to start from a snapshot.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dir: std::path::PathBuf,
    /// Run the vCPUs at once; otherwise they wait for `PUT /vm/resume`.
    pub resume: bool,
    /// Check the memory file's checksum (reads all its data: time grows with the guest's
    /// used memory). Off, only the state's checksum is checked.
    pub verify_memory: bool,
    /// Replaces the saved serial console setting.
    pub serial: Option<crate::config::SerialConfig>,
}

/// Starts machines from snapshots named once the process runs (a VMM started with only its
/// API socket: `crate::api::restore_from_api` serves the requests). It creates the machine's
/// shell ahead (the KVM VM, vCPU 0, the I/O thread: [`Shell`]), so that a load does only what
/// depends on the snapshot.
pub struct SnapshotLoader {
    spare: Option<Shell>,
}

/// A machine built from a snapshot, in its saved state, not yet running.
pub struct PreparedRestore {
    parts: Parts,
    resume: bool,
}

impl SnapshotLoader {
    /// Creates the shell and rehearses a restore on it; a host without KVM fails here.
    pub fn new() -> Result<Self, Error> {
        let shell = Shell::create(Vm::open_kvm()?)?;
        warm_up(&shell);
        Ok(Self { spare: Some(shell) })
    }

    /// Checks the snapshot `ropts` names and builds its machine. When that fails nothing of it
    /// is kept and the loader can be asked again.
    pub fn load(&mut self, ropts: &RestoreOptions) -> Result<PreparedRestore, Error> {
        // A load that failed after it began to build used its shell up: the next one makes a
        // new one.
        let shell = match self.spare.take() {
            Some(s) => s,
            None => Shell::create(Vm::open_kvm()?)?,
        };
        let parts = prepare(ropts, shell, &mut self.spare)?;
        Ok(PreparedRestore {
            parts,
            resume: ropts.resume,
        })
    }
}

impl PreparedRestore {
    /// Runs the machine to its end: at once, or paused until resumed, as the load asked.
    pub fn run(self, opts: RunOptions) -> Result<RunReport, Error> {
        let start = if self.resume {
            Launch::Running
        } else {
            Launch::Paused
        };
        machine::launch(self.parts, opts, start, None)
    }
}

/// Builds the machine a snapshot directory describes on `shell`, in its saved state, not yet
/// running. A snapshot refused before the build began hands the shell back in `unused`.
fn prepare(
    ropts: &RestoreOptions,
    shell: Shell,
    unused: &mut Option<Shell>,
) -> Result<Parts, Error> {
    let t0 = std::time::Instant::now();
    tracing::debug!("loading {}", ropts.dir.display());
    let checked = load(&ropts.dir, ropts.verify_memory).and_then(|loaded| {
        check_on_shell(&shell, &loaded.state.host, &loaded.state.config).map(|_| loaded)
    });
    let loaded = match checked {
        Ok(l) => l,
        Err(e) => {
            *unused = Some(shell);
            return Err(e.into());
        }
    };
    tracing::debug!("snapshot read and checked");
    let mut state = loaded.state;
    if let Some(s) = &ropts.serial {
        state.config.serial = s.clone();
    }
    let parts = machine::build(shell, &state.config, MemorySource::File(&loaded.memory))?;
    apply_state(&parts, &state)?;
    tracing::debug!("restored in {:?}", t0.elapsed());
    Ok(parts)
}

/// Starts a machine from a snapshot directory and runs it to its end.
pub fn restore(ropts: &RestoreOptions, opts: RunOptions) -> Result<RunReport, Error> {
    let shell = Shell::create(Vm::open_kvm()?)?;
    let parts = prepare(ropts, shell, &mut None)?;
    let start = if ropts.resume {
        Launch::Running
    } else {
        Launch::Paused
    };
    machine::launch(parts, opts, start, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting VMM rehearses a restore on its shell: it must succeed on this host's KVM (or
    /// the real restore stays cold) and leave vCPU 0 as it found it.
    #[test]
    fn a_restore_rehearsal_succeeds_and_leaves_the_vcpu_as_it_was() {
        let kvm = Vm::open_kvm().expect("this test needs /dev/kvm");
        let shell = Shell::create(kvm).expect("cannot create a VM shell");
        let msrs = shell.vm().msrs_to_save().unwrap();
        let before = shell.vcpu0().save(&msrs).unwrap();
        rehearse(&shell).expect("the rehearsal failed");
        let after = shell.vcpu0().save(&msrs).unwrap();
        assert_eq!(before.regs, after.regs);
        assert_eq!(before.sregs, after.sregs);
        assert_eq!(before.mp_state, after.mp_state);
        assert_eq!(before.lapic.regs, after.lapic.regs);
        assert_eq!(before.cpuid.len(), after.cpuid.len());
    }
}
