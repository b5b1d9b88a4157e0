//! Helpers shared by Vireo's end-to-end tests: where the binaries and guests are, and how to
//! run a VM or a command in the lab and see what happened.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vireo_vmm_api::Client;

pub mod vireod_lab;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The vireo-vmm binary under test: $VIREO_VMM_BIN, or the static release build that
/// `make build` makes (the same binary the lab runs).
pub fn vmm_bin() -> PathBuf {
    let path = std::env::var_os("VIREO_VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/x86_64-unknown-linux-gnu/release/vireo-vmm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make build` (or set VIREO_VMM_BIN)",
        path.display()
    );
    path
}

/// A test guest assembled from tests/guests/NAME.S.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("VIREO_TEST_GUESTS")).join(format!("{name}.elf"))
}

/// What a finished process did.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Fails the test with a one-line reason when this host cannot run KVM guests.
pub fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "this test needs /dev/kvm, which this host does not have"
    );
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm)
            .is_ok(),
        "this test needs read/write access to /dev/kvm"
    );
}

/// Runs vireo-vmm with `args`, stdin closed, bounded by `timeout_s` seconds.
pub fn run_vmm(args: &[&str], timeout_s: u32) -> Ran {
    require_kvm();
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(timeout_s.to_string())
        .arg(vmm_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run vireo-vmm")
        .into()
}

/// What L1's kernel prints when the emulated host itself broke (TCG's nested SVM): a CPU
/// stuck in the kernel, a task blocked for minutes, a kernel BUG (one run: its stack guard
/// page hit in a VMM's vCPU thread inside KVM), a panic. A user-space VMM cannot cause these
/// in a healthy host kernel.
const L1_BROKE: [&str; 5] = [
    "soft lockup",
    "blocked for more than",
    "Kernel panic",
    "hard LOCKUP",
    "BUG: ",
];

/// Runs `command` with /bin/sh inside the lab (lab/lab), returning its output and status.
/// A run whose L1 kernel broke (L1_BROKE on its console) or froze (its heartbeat stopped) is
/// run once more, saying so on stderr; a second such run, or any other lab failure, fails the test with the details.
pub fn run_in_lab(command: &str, extra: &[&str]) -> Ran {
    let console_log = repo_root().join("build/lab/last/console.log");
    let mut attempt = 1;
    loop {
        let ran: Ran = Command::new(repo_root().join("lab/lab"))
            .arg("run")
            .args(extra)
            .arg("--bin-dir")
            .arg(vmm_bin().parent().unwrap())
            .arg("--")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("cannot run lab/lab")
            .into();
        // 125/124: the lab itself failed or timed out, which is no verdict on the VMM; what
        // COMMAND printed until then and the end of the lab's own console tell where it stopped.
        if !matches!(ran.status, Some(124) | Some(125)) {
            return ran;
        }
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        // lab/lab says "L1 froze" when L1's heartbeat stopped before the timeout.
        let froze = ran.stderr.lines().find(|l| l.contains("L1 froze"));
        let broke = froze.or_else(|| {
            console
                .lines()
                .find(|l| L1_BROKE.iter().any(|b| l.contains(b)))
        });
        if let (Some(line), 1) = (broke, attempt) {
            eprintln!(
                "the lab's L1 kernel broke ({}); running the lab again",
                line.trim()
            );
            // A passing test's stderr is not shown: `make test` prints this file at its end,
            // so that repeated labs are seen, with the end of the broken L1's console (the
            // repeated lab overwrites the file).
            let console_tail: String = tail(&console, 12)
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect();
            let note = format!(
                "{}: {}\n{console_tail}",
                command
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default(),
                line.trim()
            );
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(repo_root().join("build/lab/retries.log"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
            attempt += 1;
            continue;
        }
        panic!(
            "the lab failed: {}\n--- COMMAND's output (last 60 lines) ---\n{}\n--- its stderr ---\n{}\n--- the lab's console (last 30 lines) ---\n{}",
            ran.stderr.lines().last().unwrap_or("(no message)"),
            tail(&ran.stdout, 60),
            tail(&ran.stderr, 30),
            tail(&console, 30)
        );
    }
}

/// An initrd extension (newc cpio, gzip) holding `script` as /etc/vireo/`name`.sh, for the
/// Debian guest's `vireo.run=<name>`; appended to the standard initrd.
pub fn guest_script_initrd(name: &str, script: &str) -> PathBuf {
    let dir = scratch(&format!("{name}-extra"));
    std::fs::create_dir_all(dir.join("etc/vireo")).unwrap();
    std::fs::write(dir.join(format!("etc/vireo/{name}.sh")), script).unwrap();
    let out = scratch(&format!("{name}-extra.cpio.gz"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc 2>/dev/null | gzip > {}",
            dir.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the initrd extension");
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A unique scratch path for a test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The typed client of a VMM's API socket (vireo-vmm-api), driven synchronously: each call
/// runs to its end on the client's own current-thread runtime. `api.block(api.vm())`.
pub struct Api {
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(sock: &Path) -> Self {
        Self {
            client: Client::new(sock),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
        }
    }

    /// Runs one call of the client.
    pub fn block<F: std::future::Future>(&self, call: F) -> F::Output {
        self.rt.block_on(call)
    }

    /// One request with any method, path and body (for what the typed calls cannot send:
    /// malformed bodies, wrong methods); returns (status, body).
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let body = body.map(|b| b.as_bytes().to_vec());
        self.block(self.client.raw(method, path, body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl std::ops::Deref for Api {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}
