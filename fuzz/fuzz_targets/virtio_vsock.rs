//! virtio-vsock: rx and tx queues made from the input, run through the connection muxer with
//! real host Unix sockets behind it: a listener for guest connections to port 1024, and host
//! processes that connect to the device's socket (`CONNECT <port>`), send and close, in an
//! order taken from the input.
#![no_main]

use std::io::{ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use devices::virtio::vsock::muxer::Muxer;
use devices::virtio::vsock::unix::port_path;
use event_manager::EventSet;
use libfuzzer_sys::fuzz_target;
use vireo_fuzz::*;

const GUEST_CID: u64 = 3;
const HOST_PORT: u32 = 1024;

struct Host {
    uds: PathBuf,
    listener: UnixListener,
    port: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vireo-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = UnixListener::bind(port_path(&uds, HOST_PORT)).unwrap();
        port.set_nonblocking(true).unwrap();
        Host {
            uds,
            listener,
            port,
        }
    })
}

/// Accepts everything waiting on `l`.
fn drain(l: &UnixListener, into: &mut Vec<UnixStream>) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true).unwrap();
                into.push(s);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let host = host();
    let mut input = Input::new(data);
    let mem = guest_memory();
    let Some((mut rxq, lrx)) = build_queue(&mut input, &mem, 0, 256) else {
        return;
    };
    let Some((mut txq, ltx)) = build_queue(&mut input, &mem, 1, 256) else {
        return;
    };
    let nops = usize::from(input.u8() % 24);
    let ops = input.bytes(nops).to_vec();
    let nbytes = usize::from(input.u8());
    let host_bytes = input.bytes(nbytes).to_vec();
    fill_data(&mem, &mut input);

    let mut mux = Muxer::new(
        GUEST_CID,
        host.uds.clone(),
        host.listener.try_clone().unwrap(),
    );
    let mut peers: Vec<UnixStream> = Vec::new();
    let mut ok = true;
    for op in ops {
        match op % 8 {
            0 => ok &= mux.process_tx(&mem, &mut txq).is_ok(),
            1 => ok &= mux.process_rx(&mem, &mut rxq).is_ok(),
            // The guest's connections reach the host listener.
            2 => drain(&host.port, &mut peers),
            // A host process asks for a guest port.
            3 => {
                if let Ok(mut s) = UnixStream::connect(&host.uds) {
                    let port = u32::from(op >> 3);
                    let _ = writeln!(s, "CONNECT {port}");
                    let _ = s.write_all(&host_bytes[..host_bytes.len().min(16)]);
                    s.set_nonblocking(true).unwrap();
                    peers.push(s);
                }
            }
            // Host processes send data.
            4 => {
                for p in &mut peers {
                    let _ = p.write_all(&host_bytes);
                }
            }
            // A host process goes away.
            5 => {
                if !peers.is_empty() {
                    peers.remove(usize::from(op >> 3) % peers.len());
                }
            }
            // Every host socket the muxer watches is ready.
            6 => {
                for (fd, _) in mux.interests() {
                    mux.on_event(fd, EventSet::IN | EventSet::OUT);
                }
            }
            // Time passes.
            _ => mux.on_tick(Instant::now() + Duration::from_secs(10)),
        }
        drop(mux.take_closed());
        if !ok {
            break;
        }
    }
    check_all_used(&mem, &[(&lrx, &rxq), (&ltx, &txq)]);
    drop(mux);
    // Nothing is left waiting for the next input.
    drain(&host.port, &mut peers);
    let mut rest = Vec::new();
    drain(&host.listener, &mut rest);
});
