//! `vireo ssh ID [COMMAND...]`: log in to an instance with the system's OpenSSH client.
//!
//! It asks vireod for the instance (DescribeInstances: its addresses and key pair) and its
//! console (GetConsoleOutput), then runs `ssh` as a child and exits with its status:
//!
//! - **address**: the public one if the instance has one (unless `--private`), else the private
//!   one. Vireo's instance addresses live in network namespaces ([docs/networking.md]); with
//!   `--netns NAME` the client runs there (`ip netns exec NAME ssh ...`, as root), for example
//!   in the uplink namespace that stands for the internet, or in the VPC's own namespace for a
//!   private address (see docs/cli.md).
//! - **key**: `--identity FILE`, else `./KEYNAME.pem` (the file `vireo keys create KEYNAME`
//!   writes) when the instance has a key pair and that file exists, else whatever ssh itself
//!   offers (its agent, `~/.ssh/id_*`).
//! - **host key**: as EC2 tells its users to, checked against the keys cloud-init printed on the
//!   console at the instance's first boot (`-----BEGIN SSH HOST KEY KEYS-----`): they are
//!   written to a private known_hosts file under the instance's id (`HostKeyAlias`) and ssh runs
//!   with `StrictHostKeyChecking=yes`, so a server with any other key is refused. A console
//!   without them is an error (cloud-init has not finished yet); `--no-console-keys` leaves the
//!   check to ssh's own known_hosts instead.
//! - **user**: `admin` (Debian's AMIs), or `--user`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::Args;

use crate::client::{Client, Params};
use crate::commands::{CliError, Result};
use crate::model::{self, Instance};

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The instance (i-…)
    #[arg(value_name = "INSTANCE_ID")]
    pub id: String,
    /// The user to log in as
    #[arg(long, short = 'l', default_value = "admin")]
    pub user: String,
    /// The private key [default: ./KEYNAME.pem for the instance's key pair, if that file exists]
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Connect to the private address even when the instance has a public one
    #[arg(long)]
    pub private: bool,
    /// Run the client in this network namespace (`ip netns exec NAME ssh …`; needs root)
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Do not check the host key against the console's keys; leave it to ssh's known_hosts
    #[arg(long)]
    pub no_console_keys: bool,
    /// An option for ssh, e.g. -o ConnectTimeout=10 (repeatable; given before vireo's own, so
    /// it wins)
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,
    /// The command to run there (default: a login shell)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Key types OpenSSH servers offer as host keys.
const HOST_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The host keys (`TYPE BASE64`) of the last `SSH HOST KEY KEYS` block on `console`, as
/// cloud-init prints it (each line possibly behind a syslog-style prefix). `None` when there is
/// no complete block with at least one key.
pub fn console_host_keys(console: &str) -> Option<Vec<String>> {
    const BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
    const END: &str = "-----END SSH HOST KEY KEYS-----";
    let start = console.rfind(BEGIN)? + BEGIN.len();
    let block = &console[start..];
    let block = &block[..block.find(END)?];
    let keys: Vec<String> = block.lines().filter_map(host_key_of_line).collect();
    (!keys.is_empty()).then_some(keys)
}

/// `TYPE BASE64` of the first public key on `line` whose blob really is a key of that type.
fn host_key_of_line(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        let (kind, blob) = (w[0], w[1]);
        (HOST_KEY_TYPES.contains(&kind) && blob_names(blob) == Some(kind))
            .then(|| format!("{kind} {blob}"))
    })
}

/// The key type a public key blob (base64 of the SSH wire format) names in its first field.
fn blob_names(blob: &str) -> Option<&'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let name = bytes.get(4..4 + len)?;
    HOST_KEY_TYPES
        .iter()
        .copied()
        .find(|t| t.as_bytes() == name)
}

/// The address to connect to.
pub fn address(inst: &Instance, private: bool) -> Result<String> {
    if inst.state != "running" {
        return Err(CliError::Failed(format!(
            "{} is {}, not running",
            inst.instance_id, inst.state
        )));
    }
    let public = if private {
        None
    } else {
        inst.public_ip.clone()
    };
    public.or_else(|| inst.private_ip.clone()).ok_or_else(|| {
        CliError::Failed(format!(
            "{} has no address{}",
            inst.instance_id,
            if private { " (--private)" } else { "" }
        ))
    })
}

/// The private key file: `--identity`, else `./KEYNAME.pem` if it exists.
pub fn identity(
    given: Option<&Path>,
    inst: &Instance,
    exists: impl Fn(&Path) -> bool,
) -> Result<Option<PathBuf>> {
    if let Some(f) = given {
        if !exists(f) {
            return Err(CliError::Usage(format!("{}: no such file", f.display())));
        }
        return Ok(Some(f.to_path_buf()));
    }
    Ok(inst
        .key_name
        .as_deref()
        .filter(|k| !k.is_empty() && !k.contains('/') && *k != "." && *k != "..")
        .map(|k| PathBuf::from(format!("{k}.pem")))
        .filter(|p| exists(p)))
}

/// The program and arguments to run: ssh (under `ip netns exec` with --netns), the user's `-o`
/// options first (ssh takes the first value it reads for each option), the key, the host key
/// check against `known_hosts`, the address, `--` and the command.
pub fn ssh_argv(
    args: &SshArgs,
    address: &str,
    identity: Option<&Path>,
    known_hosts: Option<&Path>,
) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    if let Some(ns) = &args.netns {
        v.extend(["ip", "netns", "exec", ns.as_str()].map(OsString::from));
    }
    v.push("ssh".into());
    for o in &args.options {
        v.push("-o".into());
        v.push(o.into());
    }
    v.push("-l".into());
    v.push(args.user.as_str().into());
    if let Some(key) = identity {
        v.push("-i".into());
        v.push(key.into());
        v.push("-o".into());
        v.push("IdentitiesOnly=yes".into());
    }
    if let Some(file) = known_hosts {
        let mut kh = OsString::from("UserKnownHostsFile=");
        kh.push(file);
        for o in [
            format!("HostKeyAlias={}", args.id).into(),
            kh,
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "UpdateHostKeys=no".into(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
    }
    v.push(address.into());
    if !args.command.is_empty() {
        v.push("--".into());
        v.extend(args.command.iter().map(OsString::from));
    }
    v
}

/// known_hosts lines for `keys` under the instance's id (the `HostKeyAlias`).
pub fn known_hosts_text(id: &str, keys: &[String]) -> String {
    keys.iter().map(|k| format!("{id} {k}\n")).collect()
}

/// A known_hosts file only its owner can read, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn create(id: &str, text: &str) -> Result<TempFile> {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("vireo-ssh-{}-{id}.known_hosts", std::process::id()));
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        // A file of that name is left from an earlier process with this pid.
        let file = open().or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::fs::remove_file(&path)?;
                open()
            } else {
                Err(e)
            }
        });
        let written = file.and_then(|mut f| f.write_all(text.as_bytes()));
        let tmp = TempFile(path);
        written.map_err(|e| CliError::Failed(format!("cannot write {}: {e}", tmp.0.display())))?;
        Ok(tmp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(client: &Client, args: &SshArgs) -> Result<()> {
    let mut p = Params::new();
    p.list("InstanceId", std::slice::from_ref(&args.id));
    let inst = model::instances(&client.call("DescribeInstances", &p)?)
        .into_iter()
        .find(|i| i.instance_id == args.id)
        .ok_or_else(|| CliError::Failed(format!("no instance {}", args.id)))?;
    let address = address(&inst, args.private)?;
    let identity = identity(args.identity.as_deref(), &inst, Path::is_file)?;
    let known_hosts = if args.no_console_keys {
        None
    } else {
        let mut c = Params::new();
        c.set("InstanceId", &args.id);
        let console = model::console_output(&client.call("GetConsoleOutput", &c)?)
            .map_err(CliError::Failed)?;
        let keys = console_host_keys(&console.output).ok_or_else(|| {
            CliError::Failed(format!(
                "the console of {} shows no SSH host keys yet (cloud-init prints them when \
                 it has finished the first boot); try again later, or give --no-console-keys \
                 to trust ssh's known_hosts instead",
                args.id
            ))
        })?;
        Some(TempFile::create(
            &args.id,
            &known_hosts_text(&args.id, &keys),
        )?)
    };
    let argv = ssh_argv(
        args,
        &address,
        identity.as_deref(),
        known_hosts.as_ref().map(|k| k.0.as_path()),
    );
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .map_err(|e| CliError::Failed(format!("cannot run {}: {e}", argv[0].to_string_lossy())))?;
    // Ctrl-C and Ctrl-\ are ssh's now (they reach the whole foreground group): this process
    // waits for it, then removes the known_hosts file. Ignored only after ssh started, so that
    // it does not inherit the ignoring.
    crate::ignore_interrupts();
    let status = child
        .wait()
        .map_err(|e| CliError::Failed(format!("waiting for ssh: {e}")))?;
    drop(known_hosts);
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(CliError::Exit(u8::try_from(code).unwrap_or(255)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> std::result::Result<crate::Cli, clap::Error> {
        crate::Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
    }

    fn ssh_args(args: &[&str]) -> SshArgs {
        match parse(args).unwrap().command {
            crate::Command::Ssh(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn inst(
        state: &str,
        private: Option<&str>,
        public: Option<&str>,
        key: Option<&str>,
    ) -> Instance {
        Instance {
            instance_id: "i-0123456789abcdef0".into(),
            state: state.into(),
            instance_type: "t3.micro".into(),
            image_id: "ami-1".into(),
            launch_time: String::new(),
            reservation_id: "r-1".into(),
            private_ip: private.map(Into::into),
            public_ip: public.map(Into::into),
            vpc_id: None,
            subnet_id: None,
            security_groups: Vec::new(),
            availability_zone: None,
            state_reason: None,
            key_name: key.map(Into::into),
            tags: Default::default(),
        }
    }

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    // A real ed25519 public key blob (ssh-keygen) and the start of an RSA one.
    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINxXDYJY2EEb4dECyyXRcJpf2PoV1t2Tl1eWf6pyitrF";
    const RSA: &str = "AAAAB3NzaC1yc2EAAAADAQABAAABAQC7";

    #[test]
    fn the_command_line() {
        let a = ssh_args(&["ssh", "i-1"]);
        assert_eq!((a.id.as_str(), a.user.as_str()), ("i-1", "admin"));
        assert!(a.command.is_empty() && a.options.is_empty() && a.identity.is_none());
        assert!(!a.private && !a.no_console_keys && a.netns.is_none());
        // Everything after the id that is not vireo's own option is the command, hyphens and
        // all, with or without `--`.
        let a = ssh_args(&[
            "ssh",
            "-o",
            "ConnectTimeout=5",
            "--user",
            "root",
            "-i",
            "k.pem",
            "--netns",
            "outside",
            "i-1",
            "ls",
            "-l",
            "/",
        ]);
        assert_eq!(a.command, ["ls", "-l", "/"]);
        assert_eq!(a.options, ["ConnectTimeout=5"]);
        assert_eq!(a.user, "root");
        assert_eq!(a.identity.as_deref(), Some(Path::new("k.pem")));
        assert_eq!(a.netns.as_deref(), Some("outside"));
        let a = ssh_args(&["ssh", "i-1", "--private", "--", "uname", "--all"]);
        assert!(a.private);
        assert_eq!(a.command, ["uname", "--all"]);
        let a = ssh_args(&["ssh", "i-1", "--", "--private"]);
        assert!(!a.private);
        assert_eq!(a.command, ["--private"]);
        for bad in [
            &["ssh"][..],
            &["ssh", "-o"],
            &["ssh", "--identity"],
            &["ssh", "--netns", "x"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_ssh_command_it_runs() {
        let a = ssh_args(&[
            "ssh",
            "-o",
            "ConnectTimeout=5",
            "i-1",
            "cat",
            "/etc/os-release",
        ]);
        let v = ssh_argv(
            &a,
            "198.51.100.5",
            Some(Path::new("k.pem")),
            Some(Path::new("/t/kh")),
        );
        assert_eq!(
            strs(&v),
            [
                "ssh",
                "-o",
                "ConnectTimeout=5",
                "-l",
                "admin",
                "-i",
                "k.pem",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "HostKeyAlias=i-1",
                "-o",
                "UserKnownHostsFile=/t/kh",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UpdateHostKeys=no",
                "198.51.100.5",
                "--",
                "cat",
                "/etc/os-release"
            ]
        );
        let a = ssh_args(&["ssh", "--netns", "vpc-ns", "--user", "debian", "i-1"]);
        let v = ssh_argv(&a, "10.0.1.5", None, None);
        assert_eq!(
            strs(&v),
            ["ip", "netns", "exec", "vpc-ns", "ssh", "-l", "debian", "10.0.1.5"]
        );
    }

    #[test]
    fn which_address() {
        let both = inst("running", Some("10.0.1.5"), Some("198.51.100.5"), None);
        assert_eq!(address(&both, false).unwrap(), "198.51.100.5");
        assert_eq!(address(&both, true).unwrap(), "10.0.1.5");
        let private = inst("running", Some("10.0.1.5"), None, None);
        assert_eq!(address(&private, false).unwrap(), "10.0.1.5");
        let e = address(&inst("stopped", Some("10.0.1.5"), None, None), false).unwrap_err();
        assert_eq!(e.to_string(), "i-0123456789abcdef0 is stopped, not running");
        assert_eq!(e.exit_code(), 1);
        let e = address(&inst("running", None, Some("198.51.100.5"), None), true).unwrap_err();
        assert!(e.to_string().contains("no address"), "{e}");
    }

    #[test]
    fn which_key() {
        let keyed = inst("running", Some("10.0.1.5"), None, Some("web"));
        let only = |f: &'static str| move |p: &Path| p == Path::new(f);
        assert_eq!(
            identity(None, &keyed, only("web.pem")).unwrap(),
            Some(PathBuf::from("web.pem"))
        );
        // No such file: ssh offers its own keys.
        assert_eq!(identity(None, &keyed, only("other.pem")).unwrap(), None);
        let unkeyed = inst("running", Some("10.0.1.5"), None, None);
        assert_eq!(identity(None, &unkeyed, |_| true).unwrap(), None);
        // A key name that is no file name is not looked for.
        let odd = inst("running", Some("10.0.1.5"), None, Some("../x"));
        assert_eq!(identity(None, &odd, |_| true).unwrap(), None);
        // --identity wins, and must exist.
        let given = Path::new("/keys/mine");
        assert_eq!(
            identity(Some(given), &keyed, |_| true).unwrap(),
            Some(given.to_path_buf())
        );
        let e = identity(Some(given), &keyed, |_| false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "/keys/mine: no such file");
    }

    #[test]
    fn host_keys_from_the_console() {
        let ed = format!("ssh-ed25519 {ED} root@ip-10-0-1-5");
        let console = format!(
            "[   12.0] cloud-init[512]: Cloud-init v. 22.4.2 running 'modules:final'\r\n\
             <14>Dec  8 01:02:03 cloud-init: #############\r\n\
             -----BEGIN SSH HOST KEY KEYS-----\r\n\
             ecdsa-sha2-nistp256 AAAAnotakey root@x\r\n\
             {ed}\r\n\
             <14>Dec  8 01:02:03 ec2: ssh-rsa {RSA} root@ip-10-0-1-5\r\n\
             -----END SSH HOST KEY KEYS-----\r\n\
             Cloud-init v. 22.4.2 finished\r\n"
        );
        assert_eq!(
            console_host_keys(&console).unwrap(),
            [format!("ssh-ed25519 {ED}"), format!("ssh-rsa {RSA}")]
        );
        // The last block counts (a later boot's); an unfinished one is none.
        let later = format!(
            "{console}-----BEGIN SSH HOST KEY KEYS-----\nssh-rsa {RSA}\n-----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(
            console_host_keys(&later).unwrap(),
            [format!("ssh-rsa {RSA}")]
        );
        let cut = format!("{console}-----BEGIN SSH HOST KEY KEYS-----\n{ed}\n");
        assert_eq!(console_host_keys(&cut), None);
        assert_eq!(console_host_keys("Linux version 6.1\n"), None);
        // A blob that names another type than its line, or is no base64: not a key.
        let lying = format!(
            "-----BEGIN SSH HOST KEY KEYS-----\nssh-rsa {ED}\nssh-ed25519 ***\n-----END SSH HOST KEY KEYS-----\n"
        );
        assert_eq!(console_host_keys(&lying), None);
        assert_eq!(
            known_hosts_text("i-1", &[format!("ssh-rsa {RSA}")]),
            format!("i-1 ssh-rsa {RSA}\n")
        );
    }

    #[test]
    fn the_known_hosts_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let f = TempFile::create("i-test", "i-test ssh-ed25519 AAAA\n").unwrap();
        let path = f.0.clone();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "i-test ssh-ed25519 AAAA\n"
        );
        // One left behind by an earlier process with this pid is replaced.
        let again = TempFile::create("i-test", "x\n");
        assert!(again.is_ok());
        drop(f);
        drop(again);
        assert!(!path.exists());
    }
}
