//! `vireod init` run as a new user would run it: the built binary, a data directory that may or
//! may not exist already, and image manifests that may be wrong. Init must never remove what it
//! did not create, must refuse a directory that already holds something, must keep the secret
//! private to the owner, and must not print the secret before the state it belongs to exists.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const VIREOD: &str = env!("CARGO_BIN_EXE_vireod");

/// A scratch directory removed when the test ends (pass or fail).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vireod-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn init(data_dir: &Path, images: &[&Path]) -> Output {
    let mut cmd = std::process::Command::new(VIREOD);
    cmd.arg("init").arg("--data-dir").arg(data_dir);
    for m in images {
        cmd.arg("--image").arg(m);
    }
    cmd.env("VIREO_LOG", "error").output().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn assert_no_secret_printed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("secret access key") && !stdout.contains("state created"),
        "init failed but printed as if it had succeeded: {stdout}"
    );
}

#[test]
fn a_directory_holding_a_file_is_refused_and_kept() {
    let s = Scratch::new("nonempty");
    let data = s.0.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let manifest = s.0.join("nameless.json");
    std::fs::write(&manifest, r#"{"kernel": "vmlinux"}"#).unwrap();

    let out = init(&data, &[&manifest]);
    assert!(!out.status.success());
    assert_no_secret_printed(&out);
    assert_eq!(
        std::fs::read_to_string(data.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(names(&data), ["notes.txt"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");

    // Without a manifest too: a directory with something in it is not init's to take.
    let out = init(&data, &[]);
    assert!(!out.status.success());
    assert_eq!(names(&data), ["notes.txt"]);
}

#[test]
fn a_nameless_manifest_fails_before_anything_is_created() {
    let s = Scratch::new("nameless");
    let data = s.0.join("parent").join("data");
    let manifest = s.0.join("nameless.json");
    std::fs::write(&manifest, r#"{"kernel": "vmlinux"}"#).unwrap();

    let out = init(&data, &[&manifest]);
    assert!(!out.status.success());
    assert_no_secret_printed(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a \"name\""), "{stderr}");
    assert!(!s.0.join("parent").exists());
}

#[test]
fn a_failure_after_creation_removes_only_what_init_created() {
    let s = Scratch::new("late-failure");
    // A manifest with a name whose kernel does not exist: init gets as far as registering it.
    let manifest = s.0.join("missing-kernel.json");
    std::fs::write(
        &manifest,
        r#"{"name": "broken", "kernel": "no-such-vmlinux"}"#,
    )
    .unwrap();

    // An existing empty directory stays (init did not create it), emptied of what init made.
    let existing = s.0.join("existing");
    std::fs::create_dir(&existing).unwrap();
    let out = init(&existing, &[&manifest]);
    assert!(!out.status.success());
    assert_no_secret_printed(&out);
    assert!(existing.is_dir());
    assert_eq!(names(&existing), Vec::<String>::new());

    // A directory init made itself (and the parent it made for it) goes again.
    let fresh = s.0.join("made").join("data");
    let out = init(&fresh, &[&manifest]);
    assert!(!out.status.success());
    assert_no_secret_printed(&out);
    assert!(!s.0.join("made").exists());
}

#[test]
fn the_secret_is_private_even_in_a_directory_that_was_not() {
    let s = Scratch::new("private");
    let data = s.0.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = init(&data, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("secret access key"), "{stdout}");
    assert_eq!(mode(&data), 0o700);
    for f in ["credentials", "config", "state.db"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // SQLite's side files hold the same rows as the database.
    for e in std::fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("state.db") {
            assert_eq!(mode(&e.path()), 0o600, "{name}");
        }
    }

    // A second init on the same directory is refused and changes nothing.
    let before = std::fs::read_to_string(data.join("credentials")).unwrap();
    let out = init(&data, &[]);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(data.join("credentials")).unwrap(),
        before
    );
}
