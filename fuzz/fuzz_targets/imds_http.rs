//! The instance metadata service's HTTP side (crates/control/src/imds): any bytes a guest could
//! send on one connection to 169.254.169.254:80, through hyper's HTTP/1 and the handler, with
//! the service's own bounds and tokio's clock paused (timeouts pass as soon as the connection
//! waits). The first byte picks the instance's options and whether the connection comes from
//! the instance's address. Checks that the connection always ends, and that what the service
//! sent back is a sequence of whole HTTP responses, each with a status the service or hyper
//! gives (never 500: the lookup cannot fail here).
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vireo_control::imds::server::{serve_connection, Context, Limits};
use vireo_control::imds::{InstanceView, InterfaceView, Lookup, TokenKey};
use vireo_control::model::{MetadataOptions, Tag};

const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);

struct One(InstanceView);

impl Lookup for One {
    fn instance_at(&self, _vpc: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        Ok((ip == IP).then(|| self.0.clone()))
    }
}

fn view(flags: u8) -> InstanceView {
    let public = (flags & 8 != 0).then_some(Ipv4Addr::new(198, 51, 100, 7));
    InstanceView {
        instance_id: "i-0123456789abcdef0".into(),
        image_id: "ami-0123456789abcdef0".into(),
        instance_type: "t3.micro".into(),
        reservation_id: "r-0123456789abcdef0".into(),
        launch_index: 0,
        account_id: "123456789012".into(),
        launch_time: "2024-01-01T00:00:00.000Z".into(),
        region: "vireo-fuzz-1".into(),
        availability_zone: "vireo-fuzz-1a".into(),
        domain: "vireo-fuzz-1.compute.internal".into(),
        options: MetadataOptions {
            tokens_required: flags & 1 != 0,
            hop_limit: 1 + (flags >> 4 & 3),
            endpoint_enabled: flags & 2 == 0,
            tags_enabled: flags & 4 != 0,
        },
        user_data: if flags & 16 != 0 {
            b"#!/bin/sh\necho hi\n".to_vec()
        } else {
            Vec::new()
        },
        key: (flags & 32 != 0).then(|| ("k".into(), "ssh-ed25519 AAAA k".into())),
        tags: vec![Tag::new("Name", "fuzz"), Tag::new("a b", "x")],
        interfaces: vec![InterfaceView {
            device_number: 0,
            eni_id: "eni-0123456789abcdef0".into(),
            mac: "02:00:0a:00:01:05".into(),
            private_ip: IP,
            subnet_id: "subnet-0123456789abcdef0".into(),
            subnet_cidr: "10.0.1.0/24".into(),
            vpc_id: "vpc-fuzz".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            group_ids: vec!["sg-0123456789abcdef0".into()],
            group_names: vec!["default".into()],
            public_ip: public,
            public_dns: public
                .map(|_| "ec2-198-51-100-7.vireo-fuzz-1.compute.vireo.internal".into()),
        }],
    }
}

/// Walks what the server sent: whole responses, each with a known status.
fn check(mut out: &[u8]) {
    const STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 408, 413, 414, 431, 501, 505];
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not a whole response head: {other:?} in {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        let code = resp.code.expect("a status");
        assert!(STATUSES.contains(&code), "status {code}");
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap_or(0);
        // A HEAD's answer has the length of the GET's but no body: what follows is the next
        // response or nothing.
        let rest = &out[head..];
        out = if rest.len() >= len && !rest.starts_with(b"HTTP/1.") {
            &rest[len..]
        } else {
            rest
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = Arc::new(Context::new(
            "vpc-fuzz",
            Arc::new(One(view(flags))),
            TokenKey::new([3; 32]),
            Limits::default(),
        ));
        let peer = if flags & 64 == 0 {
            IP
        } else {
            Ipv4Addr::new(10, 0, 1, 9)
        };
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let conn = tokio::spawn(serve_connection(server, peer, ctx, None));
        let _ = client.write_all(input).await;
        let mut out = Vec::new();
        // Ends when the service closes the connection: after its header timeout or lifetime at
        // the latest, which the paused clock reaches at once.
        let _ = client.read_to_end(&mut out).await;
        conn.await.unwrap();
        check(&out);
    });
});
