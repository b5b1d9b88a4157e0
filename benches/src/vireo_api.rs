//! vireo-api: a minimal client for the lab, whose busybox cannot talk HTTP or JSON lines over
//! a Unix socket.
//!
//!   vireo-api SOCK METHOD PATH [BODY]   one request to vireo-vmm's API: prints the body;
//!                                       exit 0 on a 2xx status, 1 otherwise (status on stderr)
//!   vireo-api --qmp SOCK JSON...        QEMU's QMP: reads the greeting, sends
//!                                       qmp_capabilities, then each JSON command, printing
//!                                       each reply line (events are skipped)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn http(sock: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vm\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn qmp(sock: &str, commands: &[String]) -> Result<(), String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?; // greeting
    let mut all = vec![r#"{"execute": "qmp_capabilities"}"#.to_string()];
    all.extend_from_slice(commands);
    for (i, c) in all.iter().enumerate() {
        writeln!(w, "{c}").map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            if line.contains("\"event\"") {
                continue;
            }
            if i > 0 {
                print!("{line}");
            }
            if line.contains("\"error\"") {
                return Err(format!("QMP error: {}", line.trim()));
            }
            break;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, sock, cmds @ ..] if flag == "--qmp" => qmp(sock, cmds),
        [sock, method, path, rest @ ..] if rest.len() <= 1 => {
            match http(sock, method, path, rest.first().map_or("", String::as_str)) {
                Ok((code, body)) => {
                    println!("{body}");
                    if (200..300).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP {code}"))
                    }
                }
                Err(e) => Err(e),
            }
        }
        _ => Err("usage: vireo-api SOCK METHOD PATH [BODY] | vireo-api --qmp SOCK JSON...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vireo-api: {e}");
            ExitCode::from(1)
        }
    }
}
