//! The metadata service's HTTP side in memory: hostile requests bounded, keep-alive, the peer's
//! address choosing the instance, tokens across requests.

use super::*;

/// A fixed set of instances by address; `fail` makes every lookup an error.
#[derive(Default)]
struct Fake {
    views: Mutex<HashMap<Ipv4Addr, InstanceView>>,
    fail: bool,
}

impl Lookup for Fake {
    fn instance_at(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        assert_eq!(vpc_id, "vpc-test");
        if self.fail {
            return Err("the database is gone".into());
        }
        Ok(self.views.lock().unwrap().get(&ip).cloned())
    }
}

fn test_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        connection_lifetime: Duration::from_secs(3),
        max_connections: 3,
        max_per_source: 2,
        ..Limits::default()
    }
}

fn context(fake: Fake) -> Arc<Context> {
    fake.views
        .lock()
        .unwrap()
        .insert(A_IP, view("i-0aaaaaaaaaaaaaaaa", A_IP));
    fake.views
        .lock()
        .unwrap()
        .insert(B_IP, view("i-0bbbbbbbbbbbbbbbb", B_IP));
    Arc::new(Context::new(
        "vpc-test",
        Arc::new(fake),
        key(),
        test_limits(),
    ))
}

/// A connection from `peer` served in memory: the client's end.
fn connect(ctx: &Arc<Context>, peer: Ipv4Addr) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve_connection(server, peer, ctx.clone(), None));
    client
}

/// Everything the server sends until it closes the connection (at most 10 s).
async fn read_all(c: &mut tokio::io::DuplexStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One response's head and body (Content-Length framed), read from an open connection.
async fn read_response(c: &mut tokio::io::DuplexStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let code: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_over_one_kept_alive_connection() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
        .await
        .unwrap();
    let (code, head, token) = read_response(&mut c).await;
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("server: ec2ws"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 60"),
        "{head}"
    );
    c.write_all(format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (code, _, id) = read_response(&mut c).await;
    assert_eq!((code, id.as_str()), (200, "i-0aaaaaaaaaaaaaaaa"));
    // A GET with a body is answered and the connection stays usable.
    c.write_all(
        b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (code, _, ip) = read_response(&mut c).await;
    assert_eq!((code, ip.as_str()), (200, "10.0.1.5"));
    c.write_all(b"GET /latest/meta-data/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_all(&mut c).await;
    assert!(rest.starts_with("HTTP/1.1 404"), "{rest}");
}

#[tokio::test]
async fn the_address_decides_the_instance() {
    let ctx = context(Fake::default());
    let mut a = connect(&ctx, A_IP);
    a.write_all(
        b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, _, token) = read_response(&mut a).await;
    let mut b = connect(&ctx, B_IP);
    b.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut b).await.2, "i-0bbbbbbbbbbbbbbbb");
    b.write_all(format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut b).await.0,
        401,
        "A's token from B's address"
    );
    let mut stranger = connect(&ctx, Ipv4Addr::new(10, 0, 1, 99));
    stranger
        .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut stranger).await.starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn huge_and_many_headers_are_refused() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    c.write_all(big.as_bytes()).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let mut c = connect(&ctx, A_IP);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    c.write_all(many.as_bytes()).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

#[tokio::test]
async fn large_and_slow_bodies_are_refused() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[b'x'; 8192]).await.unwrap();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    let mut c = connect(&ctx, A_IP);
    c.write_all(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let t = Instant::now();
    let out = read_all(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_slow_client_is_cut_off() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169")
        .await
        .unwrap();
    let t = Instant::now();
    let out = read_all(&mut c).await;
    assert!(!out.contains("200 OK"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after the header timeout, not the test's read timeout"
    );
    // A connection that sends nothing, or nothing more after a request, is closed by the same
    // timeout (300 ms here), well before its lifetime (3 s).
    let mut idle = connect(&ctx, A_IP);
    let t = Instant::now();
    assert_eq!(read_all(&mut idle).await, "");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let mut kept = connect(&ctx, A_IP);
    kept.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    let t = Instant::now();
    assert_eq!(read_all(&mut kept).await, "");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_busy_connection_ends_with_its_lifetime() {
    let ctx = context(Fake::default());
    let mut c = connect(&ctx, A_IP);
    let t = Instant::now();
    let mut answered = 0;
    loop {
        let sent = c
            .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
            .await;
        let mut first = [0u8; 12];
        let got = tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut first)).await;
        if sent.is_err() || !matches!(got, Ok(Ok(_))) {
            break;
        }
        assert_eq!(&first, b"HTTP/1.1 200");
        // The rest of the response: its head and the 19-byte id.
        let mut rest = Vec::new();
        while !rest.ends_with(b"i-0aaaaaaaaaaaaaaaa") {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            rest.push(b[0]);
        }
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = t.elapsed();
    assert!(answered > 5, "{answered}");
    assert!(
        lived >= Duration::from_millis(2900) && lived < Duration::from_secs(6),
        "closed after {lived:?} (lifetime 3 s)"
    );
}

#[tokio::test]
async fn garbage_gets_400_or_a_closed_connection() {
    let ctx = context(Fake::default());
    let cases: [&[u8]; 6] = [
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for raw in cases {
        let mut c = connect(&ctx, A_IP);
        c.write_all(raw).await.unwrap();
        let out = read_all(&mut c).await;
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 4") || out.starts_with("HTTP/1.0 4"),
            "{:?}: {out}",
            String::from_utf8_lossy(raw)
        );
    }
    // Random bytes: the connection ends (answered or not) and nothing panics.
    for _ in 0..200 {
        let len = rand::random::<u16>() as usize % 2048;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let mut c = connect(&ctx, A_IP);
        c.write_all(&junk).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        let _ = read_all(&mut c).await;
    }
    // The service still answers.
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.2, "i-0aaaaaaaaaaaaaaaa");
}

#[tokio::test]
async fn a_lookup_failure_is_a_500() {
    let ctx = context(Fake {
        fail: true,
        ..Fake::default()
    });
    let mut c = connect(&ctx, A_IP);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 500);
}

#[test]
fn connections_are_limited_per_namespace_and_address() {
    let ctx = context(Fake::default());
    let a1 = ctx.admit(A_IP).expect("first");
    let a2 = ctx.admit(A_IP).expect("second");
    assert!(ctx.admit(A_IP).is_none(), "two per address");
    let b1 = ctx.admit(B_IP).expect("another address");
    assert!(
        ctx.admit(Ipv4Addr::new(10, 0, 1, 7)).is_none(),
        "three per namespace"
    );
    drop(a1);
    assert!(ctx.admit(A_IP).is_some(), "a slot freed");
    drop((a2, b1));
    let again: Vec<_> = (0..2).map(|_| ctx.admit(A_IP).unwrap()).collect();
    assert_eq!(again.len(), 2);
}
