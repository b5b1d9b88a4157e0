//! Assembles the test guests (guests/*.S) into ELF64 kernels with binutils.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let src = Path::new("guests");
    println!("cargo:rerun-if-changed=guests");
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().is_none_or(|e| e != "S") || name == "lib" || name == "macros" {
            continue;
        }
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("as")
            .args(["--64", "-I"])
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .arg(&path));
        // Linked at 2 MiB: above the VMM's boot structures, inside the boot identity map.
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-static",
                "-nostdlib",
                "-Ttext=0x200000",
            ])
            .args(["-e", "_start", "-o"])
            .arg(&elf)
            .arg(&obj));
    }
    println!("cargo:rustc-env=VIREO_TEST_GUESTS={}", out.display());
}
