//! boot-timer: runs a VMM command, and prints one JSON line with the time from process start to
//! the guest's ready line and the VMM's own resident memory (RSS minus the resident part of the
//! guest-RAM mapping) sampled at that moment.
//!
//! usage: boot-timer LABEL GUEST_MEM_MIB -- COMMAND [ARGS...]

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const READY: &str = "VIREO-READY ";
const TIMEOUT: Duration = Duration::from_secs(120);

/// (total RSS, RSS of mappings at least as large as guest RAM) in KiB.
fn memory_kib(pid: u32, guest_mem_kib: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("Size:") => size = it.next()?.parse().ok()?,
            Some("Rss:") => {
                let rss: u64 = it.next()?.parse().ok()?;
                total += rss;
                // Guest RAM is one anonymous mapping of the guest's size (QEMU may round it
                // up); nothing else a VMM maps is that large.
                if size >= guest_mem_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some((total, guest))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(label), Some(mem), Some("--")) = (
        args.get(1),
        args.get(2).and_then(|m| m.parse::<u64>().ok()),
        args.get(3).map(String::as_str),
    ) else {
        eprintln!("usage: boot-timer LABEL GUEST_MEM_MIB -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let Some(program) = args.get(4) else {
        eprintln!("boot-timer: no command");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let mut child = match Command::new(program)
        .args(&args[5..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boot-timer: cannot run {program}: {e}");
            return ExitCode::from(1);
        }
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(READY) {
                let at = start.elapsed();
                let mem = memory_kib(pid, mem * 1024);
                let _ = tx.send((at, mem));
            }
        }
    });
    let ready = rx.recv_timeout(TIMEOUT).ok();
    if ready.is_none() {
        let _ = child.kill();
    }
    // Give the guest time to power off by itself; a VMM that stays up is ended and noted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stayed_up = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                stayed_up = true;
                let _ = child.kill();
                break child.wait().ok().and_then(|s| s.code());
            }
        }
    };
    let (ready_s, rss, guest) = match ready {
        Some((at, Some((rss, guest)))) => (Some(at.as_secs_f64()), Some(rss), Some(guest)),
        Some((at, None)) => (Some(at.as_secs_f64()), None, None),
        None => (None, None, None),
    };
    let line = serde_json::json!({
        "label": label,
        "ready_s": ready_s,
        "rss_kib": rss,
        "guest_ram_rss_kib": guest,
        "own_kib": rss.zip(guest).map(|(r, g)| r - g),
        "exit": status,
        "exited_by_itself": !stayed_up,
    });
    println!("BOOT-TIMER {line}");
    ExitCode::SUCCESS
}
