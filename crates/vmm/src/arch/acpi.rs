//! ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (→ DSDT) and MADT.
//!
//! The MADT is how Linux finds every vCPU and the IOAPIC. The FADT declares a hardware-reduced
//! machine with an 8042 but no VGA and no CMOS RTC, and points at the sleep-control and reset
//! registers of [`devices::power`], which is how `poweroff` and `reboot` reach the VMM. The
//! DSDT carries `_S5_` (the sleep type of soft-off) and the legacy devices, which a machine
//! without a legacy PIC must declare for Linux to route their interrupts: COM1, the PS/2
//! keyboard (how `PUT /vm/shutdown` presses Ctrl-Alt-Del) and the virtio-mmio devices.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::power;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

use super::layout::{
    ACPI_END, ACPI_PM_PORT, ACPI_START, I8042_COMMAND_PORT, I8042_DATA_PORT, IOAPIC_ADDR,
    KEYBOARD_IRQ, LAPIC_ADDR, SERIAL_IRQ, SERIAL_PORT,
};

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: 8042 present (bit 1), VGA not present (bit 2), CMOS RTC not present
/// (bit 5).
const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2) | (1 << 5);

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(u64, u64),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// COM1 as an ACPI device: on a hardware-reduced platform Linux has no legacy PIC and routes
/// no ISA IRQ by default, so the console's interrupt must be declared for it to be wired
/// through the IOAPIC.
fn com1_device() -> Vec<u8> {
    let port = SERIAL_PORT as u16;
    let io = aml::IO::new(port, port, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let mut out = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// The i8042's keyboard port as a PNP0303 device. Linux's i8042 driver finds the controller
/// through it (no PNP device and no "8042 present" in the FADT: no probe at all), and learns
/// from it that there is no AUX port (no PNP0F13), so it does not look for a mouse.
fn keyboard_device() -> Vec<u8> {
    let data = aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let command = aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let irq = aml::Interrupt::new(true, true, false, false, KEYBOARD_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&data, &command, &irq]);
    let mut out = Vec::new();
    aml::Device::new(
        "_SB_.PS2K".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// A virtio-mmio device as Linux's virtio_mmio driver finds it through ACPI (LNRO0005).
#[derive(Debug, Clone, Copy)]
pub struct VirtioMmioSlot {
    pub base: u64,
    pub len: u64,
    pub gsi: u32,
}

fn virtio_mmio_device(index: usize, slot: &VirtioMmioSlot) -> Vec<u8> {
    let mem = aml::Memory32Fixed::new(true, slot.base as u32, slot.len as u32);
    let irq = aml::Interrupt::new(true, true, false, false, slot.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let uid = index as u32;
    let mut out = Vec::new();
    aml::Device::new(
        format!("_SB_.V{index:03X}").as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

fn dsdt(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VIREODSD", OEM_REVISION);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&power::S5_SLEEP_TYPE]),
    );
    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    body.extend(com1_device());
    body.extend(keyboard_device());
    for (i, slot) in virtio.iter().enumerate() {
        body.extend(virtio_mmio_device(i, slot));
    }
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_byte = |port: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    let mut b = FADTBuilder::new(OEM_ID, *b"VIREOFAC", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.sleep_control_reg = io_byte(ACPI_PM_PORT + power::SLEEP_CONTROL_OFFSET);
    b.sleep_status_reg = io_byte(ACPI_PM_PORT + power::SLEEP_STATUS_OFFSET);
    b.reset_reg = io_byte(ACPI_PM_PORT + power::RESET_OFFSET);
    b.reset_value = power::RESET_VALUE;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIREOVMM").into();
    to_bytes(&b.finalize())
}

fn madt(nr_vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"VIREOAPI",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..nr_vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    to_bytes(&madt)
}

/// Writes the tables and returns the RSDP's address.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    nr_vcpus: u8,
    virtio: &[VirtioMmioSlot],
) -> Result<GuestAddress, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);

    let mut place = |bytes: Vec<u8>| -> Result<u64, AcpiError> {
        let at = next;
        let end = at + bytes.len() as u64;
        if end > ACPI_END {
            return Err(AcpiError::TooLarge(end - ACPI_START, ACPI_END - ACPI_START));
        }
        mem.write_slice(&bytes, GuestAddress(at))?;
        next = align(end);
        Ok(at)
    };

    let dsdt_addr = place(dsdt(virtio))?;
    let fadt_addr = place(fadt(dsdt_addr))?;
    let madt_addr = place(madt(nr_vcpus))?;
    let mut xsdt = XSDT::new(OEM_ID, *b"VIREOXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(to_bytes(&xsdt))?;

    mem.write_slice(
        &to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        GuestAddress(rsdp_addr),
    )?;
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        let d = dsdt(&[VirtioMmioSlot {
            base: 0xc000_0000,
            len: 0x200,
            gsi: 16,
        }]);
        let f = fadt(0x1234);
        let m = madt(4);
        for t in [&d, &f, &m] {
            assert!(checksum_ok(t), "bad checksum in {:?}", &t[..4]);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        // MADT: 44-byte header, four 8-byte local APICs, one 12-byte IOAPIC.
        assert_eq!(m.len(), 44 + 4 * 8 + 12);
        // The DSDT names _S5_ and declares COM1 with its IRQ.
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"COM1"));
        // The keyboard: PNP0303 as a compressed EISA id (0x41d0 "PNP", 0x0303).
        assert!(d.windows(4).any(|w| w == b"PS2K"));
        assert!(d.windows(4).any(|w| w == [0x41, 0xd0, 0x03, 0x03]));
        // FADT IAPC_BOOT_ARCH (offset 109): 8042 present, no VGA, no CMOS RTC.
        assert_eq!(
            u16::from_le_bytes(f[109..111].try_into().unwrap()),
            0b10_0110
        );
        assert!(d.windows(8).any(|w| w == b"LNRO0005"));
        // FADT flags: hardware-reduced and reset register supported.
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
    }

    #[test]
    fn many_vcpus_still_fit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = setup_acpi(&mem, 254, &[]).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, rsdp).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
