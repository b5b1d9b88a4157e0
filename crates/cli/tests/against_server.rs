//! The `vireo` binary against an EC2 endpoint on loopback: real HTTP, real SigV4 (the server
//! side verifies every request with vireo-ec2-api), answers in EC2's shapes written with the
//! crate's XML writer. The endpoint here is test scaffolding standing in for vireod, which is
//! tested against the CLI once it exists.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use vireo_ec2_api::query::{Limits, Params};
use vireo_ec2_api::sigv4::{verify, RequestParts};
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

const AKID: &str = "AKIAVIREOCLITEST0001";
const SECRET: &str = "cli/test+secret";

type Handler = dyn Fn(&str, &Params) -> Result<String, Ec2Error> + Send + Sync;

/// What the server saw: action and all parameters of each verified call, and the signing region.
#[derive(Default)]
struct Seen {
    calls: Vec<(String, Vec<(String, String)>)>,
    regions: Vec<String>,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    fn start(
        handler: impl Fn(&str, &Params) -> Result<String, Ec2Error> + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let handler: Arc<Handler> = Arc::new(handler);
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (h, s) = (handler.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &*h, &s));
            }
        });
        Server { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn actions(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
fn serve(conn: TcpStream, handler: &Handler, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&head).unwrap();
        let method = req.method.unwrap().to_string();
        let target = req.path.unwrap().to_string();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let parts = RequestParts {
            method: &method,
            path,
            query,
            headers: &headers,
            body: &body,
        };
        let lookup = |k: &str| (k == AKID).then(|| SECRET.to_string());
        let result = verify(&parts, lookup, SystemTime::now())
            .map_err(Ec2Error::from)
            .and_then(|caller| {
                let ct = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.as_str());
                let params = Params::parse(&method, ct, query, &body, &Limits::default())?;
                let action = params.action()?.to_string();
                {
                    let mut s = seen.lock().unwrap();
                    s.regions.push(caller.region);
                    s.calls.push((
                        action.clone(),
                        params
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ));
                }
                handler(&action, &params)
            });
        let (status, xml) = match result {
            Ok(xml) => (200, xml),
            Err(e) => (e.http_status, e.to_xml("test-request")),
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{xml}",
            xml.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn vireo(endpoint: &str, secret: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(args)
        .env_clear()
        .env("VIREO_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "test-region")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/vireo-test/credentials",
        )
        .env("AWS_CONFIG_FILE", "/nonexistent/vireo-test/config")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn instance(r: &mut Response, id: &str, state: &str, name: &str) {
    r.elem("instanceId", id)
        .elem("imageId", "ami-0123456789abcdef0")
        .nest("instanceState", |r| {
            r.elem("code", if state == "running" { 16 } else { 0 })
                .elem("name", state);
        })
        .elem("instanceType", "t3.micro")
        .elem("launchTime", "2024-01-02T03:04:05.000Z");
    if !name.is_empty() {
        r.tag_set([("Name", name)]);
    }
}

fn describe_page(ids: &[(&str, &str, &str)], next: Option<&str>) -> String {
    let with_ips: Vec<_> = ids.iter().map(|&(i, s, n)| (i, s, n, None, None)).collect();
    describe_page_ips(&with_ips, next)
}

/// An instance as (id, state, name, private address, public address).
type Listed<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn describe_page_ips(ids: &[Listed<'_>], next: Option<&str>) -> String {
    let mut r = Response::new("DescribeInstances", "req");
    r.list("reservationSet", [()], |r, ()| {
        r.elem("reservationId", "r-0123456789abcdef0");
        r.list(
            "instancesSet",
            ids.iter(),
            |r, (id, state, name, private, public)| {
                instance(r, id, state, name);
                r.opt_elem("privateIpAddress", *private)
                    .opt_elem("ipAddress", *public);
            },
        );
    });
    r.opt_elem("nextToken", next);
    r.finish()
}

#[test]
fn ls_follows_pages_and_signs_for_the_region() {
    let server = Server::start(|action, p| match (action, p.get("NextToken")) {
        ("DescribeInstances", None) => Ok(describe_page_ips(
            &[(
                "i-0000000000000000a",
                "running",
                "web",
                Some("10.0.1.4"),
                Some("198.51.100.2"),
            )],
            Some("page2"),
        )),
        ("DescribeInstances", Some("page2")) => Ok(describe_page(
            &[("i-0000000000000000b", "stopped", "")],
            None,
        )),
        _ => Err(Ec2Error::invalid_action(action)),
    });
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &["ls", "--state", "running", "--state", "stopped"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ID                   STATE    TYPE      PRIVATE_IP  PUBLIC_IP     IMAGE                  LAUNCHED                  NAME\n\
         i-0000000000000000a  running  t3.micro  10.0.1.4    198.51.100.2  ami-0123456789abcdef0  2024-01-02T03:04:05.000Z  web\n\
         i-0000000000000000b  stopped  t3.micro  -           -             ami-0123456789abcdef0  2024-01-02T03:04:05.000Z\n"
    );
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.calls.len(), 2);
    assert!(seen.calls[0]
        .1
        .contains(&("Filter.1.Name".into(), "instance-state-name".into())));
    assert!(seen.calls[0]
        .1
        .contains(&("Filter.1.Value.2".into(), "stopped".into())));
    assert!(seen.calls[1]
        .1
        .contains(&("NextToken".into(), "page2".into())));
    assert_eq!(seen.regions, ["test-region", "test-region"]);
}

#[test]
fn json_output_is_one_document() {
    let server = Server::start(|_, _| {
        Ok(describe_page(
            &[("i-0000000000000000a", "running", "web")],
            None,
        ))
    });
    let out = vireo(&server.endpoint(), SECRET, &["ls", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["instance_id"], "i-0000000000000000a");
    assert_eq!(v[0]["tags"]["Name"], "web");
}

#[test]
fn ec2_errors_are_one_line_and_status_1() {
    let server = Server::start(|_, p| {
        Err(Ec2Error::invalid_instance_id_not_found(
            p.get("InstanceId.1").unwrap_or(""),
        ))
    });
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &["describe", "i-0123456789abcdef0"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: InvalidInstanceID.NotFound: The instance ID 'i-0123456789abcdef0' does not exist\n"
    );
    assert!(out.stdout.is_empty());

    // A wrong secret is caught by the server's signature check.
    let out = vireo(&server.endpoint(), "not-the-secret", &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: AuthFailure: AWS was not able to validate the provided access credentials\n"
    );
    assert!(
        server.actions().len() == 1,
        "the bad signature never reached the handler"
    );
}

#[test]
fn unreachable_and_usage_errors() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = vireo(&format!("http://127.0.0.1:{port}"), SECRET, &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("vireo: cannot reach vireod at http://127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = vireo("http://127.0.0.1:1", SECRET, &["run"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vireo("https://example.com", SECRET, &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("vireo: the endpoint 'https://example.com' is not http://")
    );
    let out = vireo(
        "http://127.0.0.1:1",
        SECRET,
        &["run", "--image", "ami-1", "--user-data", "/nonexistent/ud"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("vireo: --user-data /nonexistent/ud: "));
}

#[test]
fn run_wait_follows_state_and_console_to_the_ready_line() {
    const ID: &str = "i-0a1b2c3d4e5f60718";
    let describes = Mutex::new(0);
    let consoles = Mutex::new(0);
    let server = Server::start(move |action, p| match action {
        "RunInstances" => {
            assert_eq!(p.get("UserData"), Some("ZWNobyBoaQ=="));
            assert!(p.get("ClientToken").is_some_and(|t| t.len() == 36));
            let spec = &p.structs("TagSpecification").unwrap()[0];
            assert_eq!(
                spec.tags("Tag").unwrap(),
                vec![("Name".to_string(), "web".to_string())]
            );
            let mut r = Response::new("RunInstances", "req");
            r.elem("reservationId", "r-0123456789abcdef0");
            r.list("instancesSet", [ID], |r, id| {
                instance(r, id, "pending", "web")
            });
            Ok(r.finish())
        }
        "DescribeInstances" => {
            let mut n = describes.lock().unwrap();
            *n += 1;
            let state = if *n < 2 { "pending" } else { "running" };
            Ok(describe_page(&[(ID, state, "web")], None))
        }
        "GetConsoleOutput" => {
            let mut n = consoles.lock().unwrap();
            *n += 1;
            let console = if *n < 2 {
                "Linux version 6.1\n"
            } else {
                "Linux version 6.1\nVIREO-READY vcpus=2\n"
            };
            let mut r = Response::new("GetConsoleOutput", "req");
            r.elem("instanceId", ID)
                .elem("timestamp", "2024-01-02T03:04:06.000Z")
                .elem(
                    "output",
                    base64::engine::general_purpose::STANDARD.encode(console),
                );
            Ok(r.finish())
        }
        other => Err(Ec2Error::invalid_action(other)),
    });
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &[
            "run",
            "--image",
            "ami-0123456789abcdef0",
            "--user-data-text",
            "echo hi",
            "--tag",
            "Name=web",
            "--wait",
            "--ready-line",
            "VIREO-READY",
            "--timeout",
            "30",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    let expected_start =
        format!("{ID}  pending\n{ID}  running\nLinux version 6.1\nVIREO-READY vcpus=2\nID ");
    assert!(stdout.starts_with(&expected_start), "{stdout}");
    assert!(
        stdout.contains(&format!("{ID}  running  t3.micro")),
        "{stdout}"
    );
    assert_eq!(server.actions()[0], "RunInstances");
}

#[test]
fn run_wait_fails_when_the_instance_dies() {
    let server = Server::start(|action, _| match action {
        "RunInstances" => {
            let mut r = Response::new("RunInstances", "req");
            r.elem("reservationId", "r-0123456789abcdef0");
            r.list("instancesSet", ["i-0000000000000000d"], |r, id| {
                instance(r, id, "pending", "")
            });
            Ok(r.finish())
        }
        _ => Ok(describe_page(
            &[("i-0000000000000000d", "terminated", "")],
            None,
        )),
    });
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &["run", "--image", "ami-0123456789abcdef0", "--wait"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: i-0000000000000000d is terminated instead of running\n"
    );
}

#[test]
fn stop_force_console_and_images() {
    let server = Server::start(|action, p| {
        let mut r = Response::new(action, "req");
        match action {
            "StopInstances" => {
                assert_eq!(p.bool("Force").unwrap(), Some(true));
                r.list("instancesSet", p.list("InstanceId").unwrap(), |r, id| {
                    r.elem("instanceId", id)
                        .nest("currentState", |r| {
                            r.elem("code", 64).elem("name", "stopping");
                        })
                        .nest("previousState", |r| {
                            r.elem("code", 16).elem("name", "running");
                        });
                });
            }
            "GetConsoleOutput" => {
                r.elem("instanceId", p.required("InstanceId")?).elem(
                    "output",
                    base64::engine::general_purpose::STANDARD.encode("hello\nworld\n"),
                );
            }
            "RegisterImage" => {
                p.required("KernelId")?;
                r.elem("imageId", "ami-00000000000000001");
            }
            "DescribeImages" => {
                r.list("imagesSet", ["ami-00000000000000001"], |r, id| {
                    r.elem("imageId", id)
                        .elem("imageState", "available")
                        .elem("architecture", "x86_64")
                        .elem("creationDate", "2024-01-02T03:04:05.000Z")
                        .elem("name", "debian");
                });
            }
            "DescribeInstanceTypes" => {
                r.list("instanceTypeSet", ["t3.micro"], |r, t| {
                    r.elem("instanceType", t)
                        .nest("vCpuInfo", |r| {
                            r.elem("defaultVCpus", 2);
                        })
                        .nest("memoryInfo", |r| {
                            r.elem("sizeInMiB", 1024);
                        });
                });
            }
            other => return Err(Ec2Error::invalid_action(other)),
        }
        Ok(r.finish())
    });
    let ep = server.endpoint();
    let out = vireo(
        &ep,
        SECRET,
        &[
            "stop",
            "--force",
            "i-0000000000000000a",
            "i-0000000000000000b",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ID                   PREVIOUS  CURRENT\ni-0000000000000000a  running   stopping\ni-0000000000000000b  running   stopping\n"
    );
    let out = vireo(&ep, SECRET, &["console", "i-0000000000000000a"]);
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    let out = vireo(
        &ep,
        SECRET,
        &[
            "images",
            "register",
            "--name",
            "d",
            "--kernel",
            "/k",
            "--root-disk",
            "/r",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "ami-00000000000000001\n",
        "{}",
        text(&out.stderr)
    );
    let out = vireo(&ep, SECRET, &["images"]);
    assert_eq!(
        text(&out.stdout),
        "IMAGE                  STATE      ARCH    CREATED                   NAME\nami-00000000000000001  available  x86_64  2024-01-02T03:04:05.000Z  debian\n"
    );
    let out = vireo(&ep, SECRET, &["types", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"instance_type": "t3.micro", "vcpus": 2, "memory_mib": 1024}])
    );
    // An action the server does not know comes back as EC2's InvalidAction.
    let out = vireo(&ep, SECRET, &["reboot", "i-0000000000000000a"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: InvalidAction: The action RebootInstances is not valid for this web service.\n"
    );
}

/// A stand-in for vireod's VPC actions: two VPCs (one with two subnets), one group with three
/// rules; CreateVpc refuses a bad CIDR as EC2 does; ModifySubnetAttribute fails, so a
/// `subnet create --public` must remove the subnet it made.
fn network_server() -> Server {
    Server::start(|action, p| {
        let mut r = Response::new(action, "req");
        match action {
            "DescribeVpcs" => {
                r.list(
                    "vpcSet",
                    [
                        ("vpc-0000000000000000a", "172.31.0.0/16", true, ""),
                        ("vpc-0000000000000000b", "10.0.0.0/16", false, "lab"),
                    ],
                    |r, (id, cidr, dflt, name)| {
                        r.elem("vpcId", id)
                            .elem("state", "available")
                            .elem("cidrBlock", cidr)
                            .bool_elem("isDefault", dflt);
                        if !name.is_empty() {
                            r.tag_set([("Name", name)]);
                        }
                    },
                );
            }
            "DescribeSubnets" => {
                let only = p.get("Filter.1.Value.1");
                let all = [
                    (
                        "subnet-0000000000000000a",
                        "vpc-0000000000000000b",
                        "10.0.1.0/24",
                        251,
                        true,
                    ),
                    (
                        "subnet-0000000000000000b",
                        "vpc-0000000000000000b",
                        "10.0.2.0/24",
                        250,
                        false,
                    ),
                ];
                r.list(
                    "subnetSet",
                    all.into_iter().filter(|s| only.is_none_or(|v| v == s.1)),
                    |r, (id, vpc, cidr, free, public)| {
                        r.elem("subnetId", id)
                            .elem("vpcId", vpc)
                            .elem("cidrBlock", cidr)
                            .elem("availabilityZone", "test-region-1a")
                            .elem("availableIpAddressCount", free)
                            .bool_elem("mapPublicIpOnLaunch", public);
                    },
                );
            }
            "CreateVpc" => {
                let cidr = p.required("CidrBlock")?;
                if cidr != "10.9.0.0/16" {
                    return Err(Ec2Error::invalid_parameter_value(format!(
                        "Value ({cidr}) for parameter cidrBlock is invalid. This is not a valid CIDR block."
                    )));
                }
                let spec = &p.structs("TagSpecification").unwrap()[0];
                assert_eq!(spec.get("ResourceType"), Some("vpc"));
                assert_eq!(
                    spec.tags("Tag").unwrap(),
                    vec![("Name".into(), "lab".into())]
                );
                r.nest("vpc", |r| {
                    r.elem("vpcId", "vpc-0000000000000000c");
                });
            }
            "CreateSubnet" => {
                r.nest("subnet", |r| {
                    r.elem("subnetId", "subnet-0000000000000000c");
                });
            }
            "ModifySubnetAttribute" => {
                return Err(Ec2Error::new("InternalError", "the disk is full", 500));
            }
            "DeleteSubnet" | "RevokeSecurityGroupIngress" => {
                r.bool_elem("return", true);
                if action == "RevokeSecurityGroupIngress" {
                    r.list(
                        "revokedSecurityGroupRuleSet",
                        p.list("SecurityGroupRuleId")?,
                        |r, id| {
                            r.elem("securityGroupRuleId", id);
                        },
                    );
                }
            }
            "DescribeSecurityGroups" => {
                r.list("securityGroupInfo", ["sg-0000000000000000a"], |r, id| {
                    r.elem("groupId", id)
                        .elem("groupName", "web")
                        .elem("groupDescription", "web servers")
                        .elem("vpcId", "vpc-0000000000000000b")
                        .list("ipPermissions", [()], |r, ()| {
                            r.elem("ipProtocol", "tcp").list(
                                "ipRanges",
                                ["10.0.0.0/8", "192.168.0.0/16"],
                                |r, c| {
                                    r.elem("cidrIp", c);
                                },
                            );
                        })
                        .list("ipPermissionsEgress", [()], |r, ()| {
                            r.elem("ipProtocol", "-1")
                                .list("ipRanges", ["0.0.0.0/0"], |r, c| {
                                    r.elem("cidrIp", c);
                                });
                        });
                });
            }
            "DescribeSecurityGroupRules" | "AuthorizeSecurityGroupIngress" => {
                if action == "AuthorizeSecurityGroupIngress" {
                    let m = &p.structs("IpPermissions").unwrap()[0];
                    assert_eq!(
                        (m.get("IpProtocol"), m.get("FromPort"), m.get("ToPort")),
                        (Some("tcp"), Some("22"), Some("23"))
                    );
                    assert_eq!(
                        m.structs("Groups").unwrap()[0].get("GroupId"),
                        Some("sg-0000000000000000b")
                    );
                    r.bool_elem("return", true);
                } else {
                    assert_eq!(p.get("Filter.1.Name"), Some("group-id"));
                }
                let rules: &[(&str, bool, &str, i32, i32, &str, &str)] =
                    if action == "AuthorizeSecurityGroupIngress" {
                        &[(
                            "sgr-0000000000000000d",
                            false,
                            "tcp",
                            22,
                            23,
                            "sg-0000000000000000b",
                            "",
                        )]
                    } else {
                        &[
                            ("sgr-0000000000000000c", true, "-1", -1, -1, "0.0.0.0/0", ""),
                            (
                                "sgr-0000000000000000a",
                                false,
                                "tcp",
                                22,
                                22,
                                "10.0.0.0/8",
                                "ssh",
                            ),
                            (
                                "sgr-0000000000000000b",
                                false,
                                "tcp",
                                80,
                                81,
                                "sg-0000000000000000b",
                                "",
                            ),
                        ]
                    };
                r.list(
                    "securityGroupRuleSet",
                    rules.iter(),
                    |r, (id, egress, proto, from, to, peer, d)| {
                        r.elem("securityGroupRuleId", id)
                            .elem("groupId", "sg-0000000000000000a")
                            .bool_elem("isEgress", *egress)
                            .elem("ipProtocol", proto)
                            .elem("fromPort", from)
                            .elem("toPort", to);
                        if peer.starts_with("sg-") {
                            r.nest("referencedGroupInfo", |r| {
                                r.elem("groupId", peer);
                            });
                        } else {
                            r.elem("cidrIpv4", peer);
                        }
                        r.elem("description", d);
                    },
                );
            }
            other => return Err(Ec2Error::invalid_action(other)),
        }
        Ok(r.finish())
    })
}

#[test]
fn vpcs_subnets_and_groups() {
    let server = network_server();
    let ep = server.endpoint();
    let out = vireo(&ep, SECRET, &["vpcs"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "VPC                    CIDR           DEFAULT  SUBNETS  NAME\n\
         vpc-0000000000000000a  172.31.0.0/16  yes      0\n\
         vpc-0000000000000000b  10.0.0.0/16    no       2        lab\n"
    );
    let out = vireo(&ep, SECRET, &["subnets", "--vpc", "vpc-0000000000000000b"]);
    assert_eq!(
        text(&out.stdout),
        "SUBNET                    VPC                    CIDR         ZONE            FREE  PUBLIC  NAME\n\
         subnet-0000000000000000a  vpc-0000000000000000b  10.0.1.0/24  test-region-1a  251   yes\n\
         subnet-0000000000000000b  vpc-0000000000000000b  10.0.2.0/24  test-region-1a  250   no\n"
    );
    let out = vireo(
        &ep,
        SECRET,
        &["vpc", "create", "10.9.0.0/16", "--name", "lab"],
    );
    assert_eq!(
        text(&out.stdout),
        "vpc-0000000000000000c\n",
        "{}",
        text(&out.stderr)
    );
    // EC2's error, on one line, status 1.
    let out = vireo(&ep, SECRET, &["vpc", "create", "10.9.0.0/33"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: InvalidParameterValue: Value (10.9.0.0/33) for parameter cidrBlock is invalid. This is not a valid CIDR block.\n"
    );
    let out = vireo(&ep, SECRET, &["sg"]);
    assert_eq!(
        text(&out.stdout),
        "GROUP                 VPC                    NAME  INGRESS  EGRESS  DESCRIPTION\n\
         sg-0000000000000000a  vpc-0000000000000000b  web   2        1       web servers\n"
    );
    let out = vireo(&ep, SECRET, &["sg", "show", "sg-0000000000000000a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "sg-0000000000000000a  web\n  \
         vpc:          vpc-0000000000000000b\n  \
         description:  web servers\n\n\
         DIRECTION  PROTOCOL  PORTS  SOURCE/DESTINATION    RULE                   DESCRIPTION\n\
         ingress    tcp       22     10.0.0.0/8            sgr-0000000000000000a  ssh\n\
         ingress    tcp       80-81  sg-0000000000000000b  sgr-0000000000000000b\n\
         egress     all       all    0.0.0.0/0             sgr-0000000000000000c\n"
    );
    let out = vireo(
        &ep,
        SECRET,
        &[
            "sg",
            "allow",
            "sg-0000000000000000a",
            "--proto",
            "tcp",
            "--port",
            "22-23",
            "--group",
            "sg-0000000000000000b",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("ingress    tcp       22-23  sg-0000000000000000b  sgr-0000000000000000d"),
        "{}",
        text(&out.stdout)
    );
    let out = vireo(
        &ep,
        SECRET,
        &[
            "sg",
            "revoke",
            "sg-0000000000000000a",
            "--rule",
            "sgr-0000000000000000a",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "sgr-0000000000000000a  revoked\n",
        "{}",
        text(&out.stderr)
    );
    // Usage errors the server never sees: one line, status 2.
    let before = server.actions().len();
    for args in [
        &[
            "sg",
            "allow",
            "sg-0000000000000000a",
            "--proto",
            "tcp",
            "--cidr",
            "1.0.0.0/8",
        ][..],
        &[
            "sg",
            "allow",
            "sg-0000000000000000a",
            "--proto",
            "tcp",
            "--port",
            "x",
            "--cidr",
            "1.0.0.0/8",
        ],
        &[
            "sg",
            "revoke",
            "sg-0000000000000000a",
            "--rule",
            "sgr-1",
            "--proto",
            "tcp",
        ],
    ] {
        let out = vireo(&ep, SECRET, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr).lines().count(), 1, "{args:?}");
    }
    assert_eq!(server.actions().len(), before);
    // A subnet that could not be made public is deleted again; the error is the call's.
    let out = vireo(
        &ep,
        SECRET,
        &[
            "subnet",
            "create",
            "vpc-0000000000000000b",
            "10.0.3.0/24",
            "--public",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vireo: InternalError: the disk is full\n"
    );
    let actions = server.actions();
    assert_eq!(
        actions[actions.len() - 3..],
        ["CreateSubnet", "ModifySubnetAttribute", "DeleteSubnet"]
    );
    let seen = server.seen.lock().unwrap();
    let deleted = &seen.calls.last().unwrap().1;
    assert!(deleted.contains(&("SubnetId".into(), "subnet-0000000000000000c".into())));
}

#[test]
fn run_in_a_subnet_with_groups_and_a_public_address() {
    let server = Server::start(|action, p| {
        assert_eq!(action, "RunInstances");
        let mut r = Response::new("RunInstances", "req");
        r.elem("reservationId", "r-0123456789abcdef0");
        let ni = p.structs("NetworkInterface").unwrap();
        let (subnet, groups, ip) = if let Some(m) = ni.first() {
            assert_eq!(m.get("DeviceIndex"), Some("0"));
            assert_eq!(m.bool("AssociatePublicIpAddress").unwrap(), Some(true));
            (
                m.get("SubnetId"),
                m.list("SecurityGroupId").unwrap(),
                m.get("PrivateIpAddress"),
            )
        } else {
            (
                p.get("SubnetId"),
                p.list("SecurityGroupId").unwrap(),
                p.get("PrivateIpAddress"),
            )
        };
        assert_eq!(subnet, Some("subnet-0000000000000000a"));
        assert_eq!(groups, ["sg-0000000000000000a", "sg-0000000000000000b"]);
        let public = (!ni.is_empty()).then_some("198.51.100.2");
        let private = ip.unwrap_or("10.0.1.4").to_string();
        r.list("instancesSet", ["i-0000000000000000e"], |r, id| {
            instance(r, id, "pending", "");
            r.elem("privateIpAddress", &private)
                .opt_elem("ipAddress", public);
        });
        Ok(r.finish())
    });
    let base = [
        "run",
        "--image",
        "ami-0123456789abcdef0",
        "--subnet",
        "subnet-0000000000000000a",
        "--sg",
        "sg-0000000000000000a",
        "--sg",
        "sg-0000000000000000b",
    ];
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &[&base[..], &["--public-ip", "--json"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["public_ip"], "198.51.100.2");
    let out = vireo(
        &server.endpoint(),
        SECRET,
        &[&base[..], &["--private-ip", "10.0.1.9"]].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("10.0.1.9    -"),
        "{}",
        text(&out.stdout)
    );
}

/// `vireo ssh` with a stand-in for OpenSSH: a shell script first on PATH that records its
/// arguments and the known_hosts file it was given, and exits with status 7.
#[test]
fn ssh_runs_openssh_with_the_address_key_and_console_host_keys() {
    const ID: &str = "i-0a1b2c3d4e5f60718";
    const STOPPED: &str = "i-0000000000000000b";
    const NO_KEYS: &str = "i-0000000000000000c";
    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINxXDYJY2EEb4dECyyXRcJpf2PoV1t2Tl1eWf6pyitrF";
    let server = Server::start(|action, p| match action {
        "DescribeInstances" => {
            let id = p.list("InstanceId").unwrap()[0];
            let state = if id == STOPPED { "stopped" } else { "running" };
            let mut r = Response::new("DescribeInstances", "req");
            r.list("reservationSet", [()], |r, ()| {
                r.elem("reservationId", "r-0123456789abcdef0");
                r.list("instancesSet", [id], |r, id| {
                    instance(r, id, state, "");
                    r.elem("privateIpAddress", "10.0.1.5")
                        .elem("ipAddress", "198.51.100.5")
                        .elem("keyName", "web");
                });
            });
            Ok(r.finish())
        }
        "GetConsoleOutput" => {
            let id = p.required("InstanceId")?;
            let console = if id == NO_KEYS {
                "Linux version 6.1\r\n".to_string()
            } else {
                format!(
                    "Linux version 6.1\r\n-----BEGIN SSH HOST KEY KEYS-----\r\n\
                     ssh-ed25519 {ED} root@ip-10-0-1-5\r\n-----END SSH HOST KEY KEYS-----\r\n"
                )
            };
            let mut r = Response::new("GetConsoleOutput", "req");
            r.elem("instanceId", id).elem(
                "output",
                base64::engine::general_purpose::STANDARD.encode(console),
            );
            Ok(r.finish())
        }
        other => Err(Ec2Error::invalid_action(other)),
    });
    let dir = std::env::temp_dir().join(format!("vireo-cli-ssh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("ssh");
    // Shell builtins only: PATH holds nothing else.
    std::fs::write(
        &fake,
        "#!/bin/sh\nd=${0%/*}\n: >\"$d/ssh.out\"\nfor a in \"$@\"; do\n    printf '%s\\n' \"$a\" >>\"$d/ssh.out\"\n    \
         case $a in UserKnownHostsFile=*) while IFS= read -r l; do printf '%s\\n' \"$l\"; done \
         <\"${a#UserKnownHostsFile=}\" >\"$d/kh.copy\" ;; esac\ndone\nexit 7\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("web.pem"), "a key\n").unwrap();
    let ssh = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vireo"))
            .arg("ssh")
            .args(args)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", &dir)
            .env("TMPDIR", &dir)
            .env("VIREO_ENDPOINT", server.endpoint())
            .env("AWS_ACCESS_KEY_ID", AKID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "test-region")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = ssh(&["-o", "ConnectTimeout=5", ID, "uname", "-a"]);
    // ssh's status is vireo's, and vireo adds no message of its own.
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let argv = std::fs::read_to_string(dir.join("ssh.out")).unwrap();
    let kh = argv
        .lines()
        .find_map(|l| l.strip_prefix("UserKnownHostsFile="))
        .unwrap()
        .to_string();
    assert!(kh.starts_with(dir.to_str().unwrap()), "{kh}");
    let expected = [
        "-o",
        "ConnectTimeout=5",
        "-l",
        "admin",
        "-i",
        "web.pem",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("HostKeyAlias={ID}"),
        "-o",
        &format!("UserKnownHostsFile={kh}"),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "198.51.100.5",
        "--",
        "uname",
        "-a",
    ]
    .join("\n");
    assert_eq!(argv, format!("{expected}\n"));
    assert_eq!(
        std::fs::read_to_string(dir.join("kh.copy")).unwrap(),
        format!("{ID} ssh-ed25519 {ED}\n")
    );
    assert!(
        !std::path::Path::new(&kh).exists(),
        "the known_hosts file is removed after ssh"
    );
    // --private, --user, --no-console-keys, and an --identity that does not exist.
    let out = ssh(&["--private", "--user", "root", "--no-console-keys", ID]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let argv = std::fs::read_to_string(dir.join("ssh.out")).unwrap();
    assert_eq!(
        argv,
        "-l\nroot\n-i\nweb.pem\n-o\nIdentitiesOnly=yes\n10.0.1.5\n"
    );
    let out = ssh(&["-i", "missing.pem", ID]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "vireo: missing.pem: no such file\n");
    // No keys on the console yet, or a stopped instance: ssh is not run.
    std::fs::remove_file(dir.join("ssh.out")).unwrap();
    let out = ssh(&[NO_KEYS]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "vireo: the console of {NO_KEYS} shows no SSH host keys yet"
        )),
        "{}",
        text(&out.stderr)
    );
    let out = ssh(&[STOPPED]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("vireo: {STOPPED} is stopped, not running\n")
    );
    assert!(!dir.join("ssh.out").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
