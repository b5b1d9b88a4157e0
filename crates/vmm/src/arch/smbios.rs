//! SMBIOS tables: what Linux reads as DMI (`/sys/class/dmi/id`, the `DMI:` line of its boot log,
//! `dmidecode`), and what cloud-init and systemd look at to tell which cloud and which kind of
//! machine they run on.
//!
//! A guest booted without EFI finds the tables the way Linux's `dmi_scan_machine` does on x86:
//! it scans 0xF0000-0xFFFFF on 16-byte boundaries for a 64-bit (`_SM3_`) entry point, then for a
//! 32-bit (`_SM_`) one. Both are written, at [`SMBIOS_START`] and 32 bytes above, and both point
//! at the same structure table that follows them, below the reset vector at the top of that
//! area (the ACPI tables are in the 64 KiB below it; see [`super::layout`]). The tables say
//! SMBIOS 3.0.0, so the UUID's first three fields are little-endian, as Linux expects of 2.6
//! and later.
//!
//! Structures, one each unless said: BIOS (0: no real BIOS, a virtual machine per
//! characteristics extension byte 2, bit 4, which systemd's `detect_vm_smbios` reads),
//! system (1, with the UUID), baseboard (2), chassis (3, with the asset tag), processor (4:
//! one package holding every vCPU as a core, as the CPUID topology says), physical memory
//! array (16), memory device (17: all of the VM's RAM), memory array mapped address (19: one per
//! RAM region, below the 32-bit hole and above 4 GiB), system boot information (32) and end of
//! table (127). The strings come from the VM's configuration ([`Smbios`]), with defaults.

use kvm_bindings::CpuId;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

use super::layout::{ram_regions, SMBIOS_END, SMBIOS_START};

pub use vireo_vmm_api::smbios::Smbios;
use vireo_vmm_api::smbios::SmbiosString;

/// Where the 32-bit entry point goes: the next 16-byte boundary past the 64-bit one.
pub const ENTRY32_OFFSET: u64 = 0x20;
/// Where the structure table starts.
pub const TABLE_OFFSET: u64 = 0x40;

const ENTRY64_LEN: u8 = 0x18;
const ENTRY32_LEN: u8 = 0x1f;
const VERSION: (u8, u8, u8) = (3, 0, 0);

/// What a VM says about itself when its configuration says nothing.
pub const DEFAULT_MANUFACTURER: &str = "Vireo";
pub const DEFAULT_PRODUCT: &str = "Vireo VM";
/// The "BIOS" version: this VMM's.
pub const BIOS_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The "BIOS" release date (mm/dd/yyyy, as SMBIOS wants it): when these tables took their
/// present form. Linux takes the BIOS year from it for some quirks; it must not be far past.
pub const BIOS_DATE: &str = "12/07/2026";

pub const TYPE_BIOS: u8 = 0;
pub const TYPE_SYSTEM: u8 = 1;
pub const TYPE_BASEBOARD: u8 = 2;
pub const TYPE_CHASSIS: u8 = 3;
pub const TYPE_PROCESSOR: u8 = 4;
pub const TYPE_MEMORY_ARRAY: u8 = 16;
pub const TYPE_MEMORY_DEVICE: u8 = 17;
pub const TYPE_MEMORY_ARRAY_MAPPED: u8 = 19;
pub const TYPE_BOOT_INFO: u8 = 32;
pub const TYPE_END: u8 = 127;

#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    #[error("SMBIOS tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(usize, u64),
    #[error("cannot write SMBIOS tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The processor as its CPUID describes it (what the guest's vCPUs see).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// Leaf 0's vendor id (`GenuineIntel`, `AuthenticAMD`), when it is printable.
    pub vendor: Option<String>,
    /// Leaves 0x8000_0002-4: the brand string, when there is one.
    pub brand: Option<String>,
    /// Leaf 1's EAX (family, model, stepping) and EDX (feature flags): SMBIOS's processor ID.
    pub signature: u32,
    pub features: u32,
}

impl CpuInfo {
    pub fn from_cpuid(cpuid: &CpuId) -> Self {
        let leaf = |f: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == 0)
        };
        let text = |bytes: Vec<u8>| {
            let s = String::from_utf8(bytes).ok()?;
            let s = s.trim_matches(|c: char| c == '\0' || c == ' ').to_string();
            (!s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')).then_some(s)
        };
        let vendor = leaf(0).and_then(|e| {
            text(
                [e.ebx, e.edx, e.ecx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes())
                    .collect(),
            )
        });
        let brand_leaves: Vec<_> = (0x8000_0002..=0x8000_0004).filter_map(leaf).collect();
        let brand = (brand_leaves.len() == 3)
            .then(|| {
                text(
                    brand_leaves
                        .iter()
                        .flat_map(|e| [e.eax, e.ebx, e.ecx, e.edx])
                        .flat_map(|r| r.to_le_bytes())
                        .collect(),
                )
            })
            .flatten();
        let (signature, features) = leaf(1).map_or((0, 0), |e| (e.eax, e.edx));
        Self {
            vendor,
            brand,
            signature,
            features,
        }
    }
}

/// Everything the tables describe.
pub struct Machine<'a> {
    pub identity: &'a Smbios,
    pub vcpus: u8,
    /// The VM's RAM in bytes.
    pub mem_size: u64,
    pub cpu: CpuInfo,
}

/// The bytes to place: the two entry points and the structure table.
#[derive(Debug)]
pub struct Tables {
    pub entry64: Vec<u8>,
    pub entry32: Vec<u8>,
    pub table: Vec<u8>,
}

/// One structure being built: its formatted area, then its strings.
struct Structure {
    formatted: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        let mut formatted = vec![kind, 0];
        formatted.extend_from_slice(&handle.to_le_bytes());
        Self {
            formatted,
            strings: Vec::new(),
        }
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.formatted.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.formatted.extend_from_slice(v);
        self
    }
    /// A string field: the string's number in the structure's set, or 0 for none.
    fn string(&mut self, s: Option<&str>) -> &mut Self {
        let index = match s {
            // Strings are checked non-empty and free of NULs where they are configured; the
            // processor's come from CPUID, filtered the same way.
            Some(s) if !s.is_empty() && !s.contains('\0') => {
                self.strings.push(s.to_string());
                self.strings.len() as u8
            }
            _ => 0,
        };
        self.u8(index)
    }
    /// Appends the structure to `out`: the formatted area with its length filled in, each
    /// string with its NUL, and the NUL that ends the set (two NULs when there are none).
    fn finish(mut self, out: &mut Vec<u8>) {
        self.formatted[1] = self.formatted.len() as u8;
        out.extend_from_slice(&self.formatted);
        for s in &self.strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
    }
}

/// SMBIOS's 8-bit checksum: the byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the tables of `m` for a structure table at `table_addr`.
pub fn build(m: &Machine, table_addr: u64) -> Tables {
    let id = m.identity;
    fn s(v: &Option<SmbiosString>) -> Option<&str> {
        v.as_ref().map(SmbiosString::as_str)
    }
    let manufacturer = s(&id.manufacturer).unwrap_or(DEFAULT_MANUFACTURER);
    let product = s(&id.product).unwrap_or(DEFAULT_PRODUCT);
    let mut table = Vec::new();
    let mut count: u16 = 0;
    let mut max_size = 0usize;
    let mut handle: u16 = 0;
    let mut next_handle = || {
        let h = handle;
        handle += 1;
        h
    };
    let mut push = |st: Structure, table: &mut Vec<u8>| {
        let before = table.len();
        st.finish(table);
        max_size = max_size.max(table.len() - before);
        count += 1;
    };

    // Type 0, BIOS Information (2.4 layout, 0x18 bytes).
    let mut t = Structure::new(TYPE_BIOS, next_handle());
    let (bios_major, bios_minor) = bios_release();
    t.string(Some(manufacturer))
        .string(Some(BIOS_VERSION))
        // Starting address segment: the 64 KiB below 1 MiB.
        .u16(0xf000)
        .string(Some(BIOS_DATE))
        // ROM size: 64 KiB.
        .u8(0)
        // Characteristics: bit 3, "BIOS characteristics are not supported" (there is no BIOS).
        .u64(1 << 3)
        // Extension byte 1: bit 0, ACPI supported.
        .u8(1 << 0)
        // Extension byte 2: bit 4, the tables describe a virtual machine.
        .u8(1 << 4)
        .u8(bios_major)
        .u8(bios_minor)
        // Embedded controller firmware release: none.
        .u8(0xff)
        .u8(0xff);
    push(t, &mut table);

    // Type 1, System Information (2.4 layout, 0x1b bytes).
    let mut t = Structure::new(TYPE_SYSTEM, next_handle());
    t.string(Some(manufacturer))
        .string(Some(product))
        .string(s(&id.version))
        .string(s(&id.serial))
        // All zeros: the UUID is not set (Linux then shows none).
        .bytes(&id.uuid.map(|u| u.smbios_bytes()).unwrap_or([0; 16]))
        // Wake-up type: power switch.
        .u8(0x06)
        .string(s(&id.sku))
        .string(s(&id.family));
    push(t, &mut table);

    let baseboard = next_handle();
    let chassis = next_handle();
    // Type 2, Baseboard Information (0x0f bytes, no contained objects).
    let mut t = Structure::new(TYPE_BASEBOARD, baseboard);
    t.string(Some(manufacturer))
        .string(Some(product))
        .string(None)
        .string(None)
        .string(s(&id.asset_tag))
        // Feature flags: a hosting board (the motherboard).
        .u8(1 << 0)
        .string(None)
        .u16(chassis)
        // Board type: motherboard.
        .u8(0x0a)
        .u8(0);
    push(t, &mut table);

    // Type 3, System Enclosure (2.7 layout, 0x16 bytes with no contained elements).
    let mut t = Structure::new(TYPE_CHASSIS, chassis);
    t.string(Some(manufacturer))
        // Type: other.
        .u8(0x01)
        .string(None)
        .string(None)
        .string(s(&id.asset_tag))
        // Boot-up, power supply and thermal states: safe; security status: unknown.
        .u8(0x03)
        .u8(0x03)
        .u8(0x03)
        .u8(0x02)
        // OEM-defined, height, power cords: none given.
        .u32(0)
        .u8(0)
        .u8(0)
        // Contained elements: none, of record length 0.
        .u8(0)
        .u8(0)
        // SKU number.
        .string(None);
    push(t, &mut table);

    // Type 4, Processor Information (3.0 layout, 0x30 bytes): one package of `vcpus` cores.
    let cores = u16::from(m.vcpus.max(1));
    let mut t = Structure::new(TYPE_PROCESSOR, next_handle());
    t.string(Some("CPU 0"))
        // Central processor, family "other" (family 2 says the same).
        .u8(0x03)
        .u8(0x01)
        .string(m.cpu.vendor.as_deref())
        .u32(m.cpu.signature)
        .u32(m.cpu.features)
        .string(m.cpu.brand.as_deref())
        // Voltage, external clock, max and current speed: unknown.
        .u8(0)
        .u16(0)
        .u16(0)
        .u16(0)
        // Status: socket populated, CPU enabled.
        .u8(0x41)
        // Upgrade: other.
        .u8(0x01)
        // L1, L2, L3 cache handles: not provided.
        .u16(0xffff)
        .u16(0xffff)
        .u16(0xffff)
        // Serial number, asset tag, part number.
        .string(None)
        .string(None)
        .string(None)
        // Core count, cores enabled, thread count (one thread per core).
        .u8(cores.min(255) as u8)
        .u8(cores.min(255) as u8)
        .u8(cores.min(255) as u8)
        // Characteristics: 64-bit capable.
        .u16(1 << 2)
        .u16(0x0001)
        .u16(cores)
        .u16(cores)
        .u16(cores);
    push(t, &mut table);

    // Type 16, Physical Memory Array (2.7 layout, 0x17 bytes).
    let array = next_handle();
    let mem_kib = m.mem_size / 1024;
    let mut t = Structure::new(TYPE_MEMORY_ARRAY, array);
    // Location: other; use: system memory; error correction: none.
    t.u8(0x01).u8(0x03).u8(0x03);
    if mem_kib < 0x8000_0000 {
        t.u32(mem_kib as u32);
    } else {
        t.u32(0x8000_0000);
    }
    // No error information; one memory device.
    t.u16(0xfffe).u16(1);
    t.u64(if mem_kib < 0x8000_0000 { 0 } else { m.mem_size });
    push(t, &mut table);

    // Type 17, Memory Device (2.8 layout, 0x28 bytes): all of the RAM.
    let mem_mib = m.mem_size >> 20;
    let mut t = Structure::new(TYPE_MEMORY_DEVICE, next_handle());
    t.u16(array)
        .u16(0xfffe)
        // Total and data width: 64 bits.
        .u16(64)
        .u16(64);
    if mem_mib < 0x7fff {
        t.u16(mem_mib as u16);
    } else {
        t.u16(0x7fff);
    }
    // Form factor: DIMM; no device set.
    t.u8(0x09)
        .u8(0)
        .string(Some("DIMM 0"))
        .string(None)
        // Memory type: RAM; type detail: other.
        .u8(0x07)
        .u16(1 << 1)
        // Speed: unknown.
        .u16(0)
        // Manufacturer, serial number, asset tag, part number.
        .string(Some(manufacturer))
        .string(None)
        .string(None)
        .string(None)
        // Attributes: rank unknown.
        .u8(0)
        .u32(if mem_mib < 0x7fff {
            0
        } else {
            mem_mib.min(0x7fff_ffff) as u32
        })
        // Configured speed, minimum, maximum and configured voltage: unknown.
        .u16(0)
        .u16(0)
        .u16(0)
        .u16(0);
    push(t, &mut table);

    // Type 19, Memory Array Mapped Address (2.7 layout, 0x1f bytes): one per RAM region.
    for (start, len) in ram_regions(m.mem_size) {
        let (start, end) = (start.0, start.0 + len - 1);
        let mut t = Structure::new(TYPE_MEMORY_ARRAY_MAPPED, next_handle());
        if end / 1024 < 0xffff_ffff {
            t.u32((start / 1024) as u32).u32((end / 1024) as u32);
        } else {
            t.u32(0xffff_ffff).u32(0xffff_ffff);
        }
        t.u16(array)
            // Partition width: one device.
            .u8(1);
        if end / 1024 < 0xffff_ffff {
            t.u64(0).u64(0);
        } else {
            t.u64(start).u64(end);
        }
        push(t, &mut table);
    }

    // Type 32, System Boot Information (0x0b bytes): no errors.
    let mut t = Structure::new(TYPE_BOOT_INFO, next_handle());
    t.bytes(&[0; 6]).u8(0);
    push(t, &mut table);

    push(Structure::new(TYPE_END, next_handle()), &mut table);

    let (major, minor, docrev) = VERSION;
    let mut entry64 = Vec::with_capacity(ENTRY64_LEN.into());
    entry64.extend_from_slice(b"_SM3_");
    entry64.extend_from_slice(&[0, ENTRY64_LEN, major, minor, docrev]);
    // Entry point revision 1 (SMBIOS 3.0), reserved.
    entry64.extend_from_slice(&[1, 0]);
    entry64.extend_from_slice(&(table.len() as u32).to_le_bytes());
    entry64.extend_from_slice(&table_addr.to_le_bytes());
    entry64[5] = checksum(&entry64);

    let mut entry32 = Vec::with_capacity(ENTRY32_LEN.into());
    entry32.extend_from_slice(b"_SM_");
    entry32.extend_from_slice(&[0, ENTRY32_LEN, major, minor]);
    entry32.extend_from_slice(&(max_size as u16).to_le_bytes());
    // Entry point revision 0, formatted area.
    entry32.extend_from_slice(&[0; 6]);
    entry32.extend_from_slice(b"_DMI_");
    entry32.push(0);
    entry32.extend_from_slice(&(table.len() as u16).to_le_bytes());
    entry32.extend_from_slice(&(table_addr as u32).to_le_bytes());
    entry32.extend_from_slice(&count.to_le_bytes());
    // BCD revision.
    entry32.push((major << 4) | minor);
    entry32[0x15] = checksum(&entry32[0x10..]);
    entry32[4] = checksum(&entry32);

    Tables {
        entry64,
        entry32,
        table,
    }
}

/// The "BIOS" release as SMBIOS's major and minor bytes: this VMM's version.
fn bios_release() -> (u8, u8) {
    let mut parts = BIOS_VERSION
        .split('.')
        .map(|p| p.parse::<u8>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Writes the tables of `m` into guest memory; returns the 64-bit entry point's address.
pub fn setup_smbios(mem: &GuestMemoryMmap, m: &Machine) -> Result<GuestAddress, SmbiosError> {
    let table_addr = SMBIOS_START + TABLE_OFFSET;
    let t = build(m, table_addr);
    let room = SMBIOS_END - table_addr;
    if t.table.len() as u64 > room {
        return Err(SmbiosError::TooLarge(t.table.len(), room));
    }
    mem.write_slice(&t.entry64, GuestAddress(SMBIOS_START))?;
    mem.write_slice(&t.entry32, GuestAddress(SMBIOS_START + ENTRY32_OFFSET))?;
    mem.write_slice(&t.table, GuestAddress(table_addr))?;
    Ok(GuestAddress(SMBIOS_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{GIB, MIB};
    use vireo_vmm_api::smbios::SystemUuid;

    /// One structure read back from the table.
    #[derive(Debug)]
    struct Parsed {
        kind: u8,
        handle: u16,
        formatted: Vec<u8>,
        strings: Vec<String>,
    }

    impl Parsed {
        /// The string a string field at `offset` names (None for index 0).
        fn string_at(&self, offset: usize) -> Option<&str> {
            match self.formatted[offset] {
                0 => None,
                i => Some(self.strings[usize::from(i) - 1].as_str()),
            }
        }
        fn u16_at(&self, o: usize) -> u16 {
            u16::from_le_bytes(self.formatted[o..o + 2].try_into().unwrap())
        }
        fn u32_at(&self, o: usize) -> u32 {
            u32::from_le_bytes(self.formatted[o..o + 4].try_into().unwrap())
        }
        fn u64_at(&self, o: usize) -> u64 {
            u64::from_le_bytes(self.formatted[o..o + 8].try_into().unwrap())
        }
    }

    /// Parses a structure table as a guest does: each formatted area by its length byte, then
    /// NUL-terminated strings up to a double NUL. Panics on anything malformed.
    fn parse(table: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < table.len() {
            let len = usize::from(table[at + 1]);
            assert!(len >= 4, "structure at {at} has length {len}");
            let formatted = table[at..at + len].to_vec();
            let mut p = at + len;
            let mut strings = Vec::new();
            if table[p] == 0 {
                assert_eq!(
                    table[p + 1],
                    0,
                    "no double NUL after a string-less structure"
                );
                p += 2;
            } else {
                loop {
                    let end = p + table[p..].iter().position(|&b| b == 0).unwrap();
                    strings.push(String::from_utf8(table[p..end].to_vec()).unwrap());
                    p = end + 1;
                    if table[p] == 0 {
                        p += 1;
                        break;
                    }
                }
            }
            // No string is left unreachable: some byte of the formatted area names each.
            for i in 1..=strings.len() {
                assert!(
                    formatted[4..].contains(&(i as u8)),
                    "string {i} of type {} is named by no field",
                    formatted[0]
                );
            }
            out.push(Parsed {
                kind: formatted[0],
                handle: u16::from_le_bytes([formatted[2], formatted[3]]),
                formatted,
                strings,
            });
            at = p;
            if out.last().unwrap().kind == TYPE_END {
                break;
            }
        }
        assert_eq!(at, table.len(), "bytes after the end-of-table structure");
        out
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn identity() -> Smbios {
        let s = |v: &str| Some(SmbiosString::new(v).unwrap());
        Smbios {
            uuid: Some("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8".parse().unwrap()),
            serial: s("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"),
            asset_tag: s("i-0123456789abcdef0"),
            manufacturer: s("Amazon EC2"),
            product: s("t3.micro"),
            version: s("1.0"),
            sku: s("sku-7"),
            family: s("T3"),
        }
    }

    fn cpu() -> CpuInfo {
        CpuInfo {
            vendor: Some("GenuineIntel".into()),
            brand: Some("Test CPU @ 2.00GHz".into()),
            signature: 0x0005_0657,
            features: 0x0f8b_fbff,
        }
    }

    fn of_kind(s: &[Parsed], kind: u8) -> Vec<&Parsed> {
        s.iter().filter(|p| p.kind == kind).collect()
    }

    #[test]
    fn entry_points_check_and_point_at_the_table() {
        let id = identity();
        let m = Machine {
            identity: &id,
            vcpus: 2,
            mem_size: 512 * MIB,
            cpu: cpu(),
        };
        let t = build(&m, 0xf0040);
        let structures = parse(&t.table);

        let e = &t.entry64;
        assert_eq!(e.len(), 0x18);
        assert_eq!(&e[..5], b"_SM3_");
        assert_eq!(sum(e), 0);
        assert_eq!(usize::from(e[6]), e.len());
        assert_eq!((e[7], e[8], e[9], e[10]), (3, 0, 0, 1));
        assert_eq!(
            u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize,
            t.table.len()
        );
        assert_eq!(u64::from_le_bytes(e[16..24].try_into().unwrap()), 0xf0040);

        let e = &t.entry32;
        assert_eq!(e.len(), 0x1f);
        assert_eq!(&e[..4], b"_SM_");
        assert_eq!(sum(e), 0);
        assert_eq!(usize::from(e[5]), e.len());
        assert_eq!((e[6], e[7]), (3, 0));
        assert_eq!(&e[0x10..0x15], b"_DMI_");
        assert_eq!(sum(&e[0x10..]), 0, "intermediate checksum");
        assert_eq!(
            usize::from(u16::from_le_bytes([e[0x16], e[0x17]])),
            t.table.len()
        );
        assert_eq!(
            u32::from_le_bytes(e[0x18..0x1c].try_into().unwrap()),
            0xf0040
        );
        assert_eq!(
            usize::from(u16::from_le_bytes([e[0x1c], e[0x1d]])),
            structures.len()
        );
        assert_eq!(e[0x1e], 0x30);
        // The largest structure, strings included.
        let max = u16::from_le_bytes([e[8], e[9]]);
        let mut at = 0;
        let mut largest = 0;
        for s in &structures {
            let len = s.formatted.len()
                + s.strings.iter().map(|x| x.len() + 1).sum::<usize>()
                + if s.strings.is_empty() { 2 } else { 1 };
            largest = largest.max(len);
            at += len;
        }
        assert_eq!(at, t.table.len());
        assert_eq!(usize::from(max), largest);

        // Handles are unique; the table ends with type 127.
        let mut handles: Vec<u16> = structures.iter().map(|s| s.handle).collect();
        handles.sort_unstable();
        handles.dedup();
        assert_eq!(handles.len(), structures.len());
        assert_eq!(structures.last().unwrap().kind, TYPE_END);
        assert_eq!(structures.last().unwrap().formatted.len(), 4);
        let kinds: Vec<u8> = structures.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [0, 1, 2, 3, 4, 16, 17, 19, 32, 127]);
    }

    #[test]
    fn structures_carry_the_configured_identity() {
        let id = identity();
        let m = Machine {
            identity: &id,
            vcpus: 4,
            mem_size: 2 * GIB,
            cpu: cpu(),
        };
        let s = parse(&build(&m, 0xf0040).table);

        let bios = of_kind(&s, TYPE_BIOS)[0];
        assert_eq!(bios.formatted.len(), 0x18);
        assert_eq!(bios.string_at(0x04), Some("Amazon EC2"));
        assert_eq!(bios.string_at(0x05), Some(BIOS_VERSION));
        assert_eq!(bios.string_at(0x08), Some(BIOS_DATE));
        assert_ne!(bios.formatted[0x13] & (1 << 4), 0, "virtual machine bit");
        assert_ne!(bios.formatted[0x12] & 1, 0, "ACPI bit");

        let sys = of_kind(&s, TYPE_SYSTEM)[0];
        assert_eq!(sys.formatted.len(), 0x1b);
        assert_eq!(sys.string_at(0x04), Some("Amazon EC2"));
        assert_eq!(sys.string_at(0x05), Some("t3.micro"));
        assert_eq!(sys.string_at(0x06), Some("1.0"));
        assert_eq!(
            sys.string_at(0x07),
            Some("ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8")
        );
        assert_eq!(sys.string_at(0x19), Some("sku-7"));
        assert_eq!(sys.string_at(0x1a), Some("T3"));
        // The UUID's first three fields little-endian: Linux prints ec2a1b2c-3d4e-5f60-...
        assert_eq!(
            sys.formatted[0x08..0x18],
            [
                0x2c, 0x1b, 0x2a, 0xec, 0x4e, 0x3d, 0x60, 0x5f, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6,
                0xd7, 0xe8
            ]
        );
        assert_eq!(sys.formatted[0x18], 0x06);

        let board = of_kind(&s, TYPE_BASEBOARD)[0];
        let chassis = of_kind(&s, TYPE_CHASSIS)[0];
        assert_eq!(board.formatted.len(), 0x0f);
        assert_eq!(board.string_at(0x08), Some("i-0123456789abcdef0"));
        assert_eq!(board.u16_at(0x0b), chassis.handle);
        assert_eq!(chassis.formatted.len(), 0x16);
        assert_eq!(chassis.string_at(0x04), Some("Amazon EC2"));
        assert_eq!(chassis.string_at(0x08), Some("i-0123456789abcdef0"));
        assert_eq!(chassis.formatted[0x13], 0, "no contained elements");

        let cpus = of_kind(&s, TYPE_PROCESSOR);
        assert_eq!(cpus.len(), 1, "one package");
        let p = cpus[0];
        assert_eq!(p.formatted.len(), 0x30);
        assert_eq!(p.string_at(0x04), Some("CPU 0"));
        assert_eq!(p.string_at(0x07), Some("GenuineIntel"));
        assert_eq!(p.string_at(0x10), Some("Test CPU @ 2.00GHz"));
        assert_eq!(p.u64_at(0x08), 0x0f8b_fbff_0005_0657);
        assert_eq!(
            (p.formatted[0x23], p.formatted[0x24], p.formatted[0x25]),
            (4, 4, 4)
        );
        assert_eq!((p.u16_at(0x2a), p.u16_at(0x2c), p.u16_at(0x2e)), (4, 4, 4));
        assert_eq!(p.formatted[0x18], 0x41);

        let boot = of_kind(&s, TYPE_BOOT_INFO)[0];
        assert_eq!(boot.formatted.len(), 0x0b);
        assert!(boot.strings.is_empty());
        assert_eq!(boot.formatted[0x0a], 0);
    }

    #[test]
    fn memory_structures_add_up_to_the_ram() {
        let id = Smbios::default();
        for (mem_size, regions) in [(256 * MIB, 1), (5 * GIB, 2), (64 * GIB, 2)] {
            let m = Machine {
                identity: &id,
                vcpus: 1,
                mem_size,
                cpu: CpuInfo::default(),
            };
            let s = parse(&build(&m, 0xf0040).table);
            let array = of_kind(&s, TYPE_MEMORY_ARRAY)[0];
            assert_eq!(array.formatted.len(), 0x17);
            assert_eq!(u64::from(array.u32_at(0x07)) * 1024, mem_size);
            assert_eq!(array.u16_at(0x0d), 1);
            let dev = of_kind(&s, TYPE_MEMORY_DEVICE)[0];
            assert_eq!(dev.formatted.len(), 0x28);
            assert_eq!(dev.u16_at(0x04), array.handle);
            let mib = match dev.u16_at(0x0c) {
                0x7fff => u64::from(dev.u32_at(0x1c)),
                n => u64::from(n),
            };
            assert_eq!(mib * MIB, mem_size, "{mem_size}");
            assert_eq!(dev.string_at(0x10), Some("DIMM 0"));
            let mapped = of_kind(&s, TYPE_MEMORY_ARRAY_MAPPED);
            assert_eq!(mapped.len(), regions);
            let mut total = 0;
            for (r, (start, len)) in mapped.iter().zip(ram_regions(mem_size)) {
                assert_eq!(r.formatted.len(), 0x1f);
                assert_eq!(r.u16_at(0x0c), array.handle);
                assert_eq!(u64::from(r.u32_at(0x04)) * 1024, start.0);
                assert_eq!((u64::from(r.u32_at(0x08)) + 1) * 1024, start.0 + len);
                total += len;
            }
            assert_eq!(total, mem_size);
        }
    }

    #[test]
    fn defaults_stand_in_for_what_is_not_configured() {
        let id = Smbios::default();
        let m = Machine {
            identity: &id,
            vcpus: 1,
            mem_size: 64 * MIB,
            cpu: CpuInfo::default(),
        };
        let s = parse(&build(&m, 0xf0040).table);
        let sys = of_kind(&s, TYPE_SYSTEM)[0];
        assert_eq!(sys.string_at(0x04), Some(DEFAULT_MANUFACTURER));
        assert_eq!(sys.string_at(0x05), Some(DEFAULT_PRODUCT));
        assert_eq!(sys.string_at(0x06), None);
        assert_eq!(sys.string_at(0x07), None);
        assert_eq!(sys.formatted[0x08..0x18], [0; 16], "no UUID");
        let chassis = of_kind(&s, TYPE_CHASSIS)[0];
        assert_eq!(chassis.string_at(0x08), None);
        let p = of_kind(&s, TYPE_PROCESSOR)[0];
        assert_eq!(p.string_at(0x07), None);
        // The UUID type writes what it is given, in SMBIOS's order.
        let u: SystemUuid = "00112233-4455-6677-8899-aabbccddeeff".parse().unwrap();
        assert_eq!(
            u.smbios_bytes()[..8],
            [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66]
        );
    }

    #[test]
    fn the_cpu_is_read_from_cpuid() {
        use kvm_bindings::kvm_cpuid_entry2;
        let regs = |s: &[u8; 16]| {
            let r = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
            (r(0), r(4), r(8), r(12))
        };
        let leaf = |function, (eax, ebx, ecx, edx)| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        let vendor = (
            0x16,
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ntel"),
            u32::from_le_bytes(*b"ineI"),
        );
        let cpuid = CpuId::from_entries(&[
            leaf(0, vendor),
            leaf(1, (0x50657, 0, 0, 0x0f8b_fbff)),
            leaf(0x8000_0002, regs(b"Example(R) CPU @")),
            leaf(0x8000_0003, regs(b" 2.50GHz\0\0\0\0\0\0\0\0")),
            leaf(0x8000_0004, regs(&[0; 16])),
        ])
        .unwrap();
        let c = CpuInfo::from_cpuid(&cpuid);
        assert_eq!(c.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(c.brand.as_deref(), Some("Example(R) CPU @ 2.50GHz"));
        assert_eq!((c.signature, c.features), (0x50657, 0x0f8b_fbff));
        // Without the leaves: nothing made up.
        let c = CpuInfo::from_cpuid(&CpuId::from_entries(&[]).unwrap());
        assert_eq!(c, CpuInfo::default());
    }

    #[test]
    fn the_tables_land_in_the_bios_area_and_fit_with_many_vcpus() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let id = identity();
        let m = Machine {
            identity: &id,
            vcpus: 254,
            mem_size: 2 << 20,
            cpu: cpu(),
        };
        let at = setup_smbios(&mem, &m).unwrap();
        assert_eq!(at.0, 0xf0000);
        assert_eq!(at.0 % 16, 0);
        let mut ep = [0u8; 0x18];
        mem.read_slice(&mut ep, at).unwrap();
        assert_eq!(&ep[..5], b"_SM3_");
        assert_eq!(sum(&ep), 0);
        let mut ep32 = [0u8; 0x1f];
        mem.read_slice(&mut ep32, GuestAddress(at.0 + ENTRY32_OFFSET))
            .unwrap();
        assert_eq!(&ep32[..4], b"_SM_");
        let len = u32::from_le_bytes(ep[12..16].try_into().unwrap()) as usize;
        let addr = u64::from_le_bytes(ep[16..24].try_into().unwrap());
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        let s = parse(&table);
        assert_eq!(of_kind(&s, TYPE_PROCESSOR)[0].u16_at(0x2a), 254);
        // Everything stays below the reset vector.
        assert!(addr + len as u64 <= SMBIOS_END);
        assert_eq!(SMBIOS_END, crate::arch::layout::RESET_VECTOR);
    }
}
