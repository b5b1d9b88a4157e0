//! The data plane's part of the instance metadata service (root needed): 169.254.169.254 is
//! local to each VPC namespace, instances reach it on tcp 80 through their default route with
//! their own address as source, and nothing else of it (nor other ports of the router) is
//! open to them. vireod's listener itself is tested in crates/control.

mod lab;

use lab::*;
use vireo_net::names::{METADATA_ADDR, METADATA_PORT};

#[test]
fn instances_reach_the_metadata_address_on_port_80_only() {
    let mut lab = Lab::new();
    let s = vpc(
        "vpc-imds",
        vec![subnet("subnet-a", "10.0.1.0/24")],
        vec![
            eni("eni-a", "10.0.1.5", "subnet-a", &["sg-open"], 1),
            eni("eni-b", "10.0.1.6", "subnet-a", &["sg-open"], 2),
        ],
        vec![open_group("sg-open")],
    );
    lab.apply(&s);
    let ns = lab.scope.vpc_netns("vpc-imds", 0);
    let lo = must(&["ip", "-n", &ns, "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 169.254.169.254/32"), "{lo}");

    // A listener in the VPC namespace that greets each client with its address as seen there.
    serve(&ns, METADATA_ADDR, METADATA_PORT, "peer");
    serve(&ns, METADATA_ADDR, 8080, "other port");
    serve(&ns, ip("10.0.1.1"), METADATA_PORT, "router");
    let a = lab.instance(&s, "eni-a", true);
    let b = lab.instance(&s, "eni-b", true);
    let (na, nb) = (lab.ns(a).to_string(), lab.ns(b).to_string());
    assert_eq!(
        connect(&na, METADATA_ADDR, METADATA_PORT).map(|c| c.1),
        Some("10.0.1.5".to_string()),
        "A reaches the metadata address through its router, as itself"
    );
    assert_eq!(
        connect(&nb, METADATA_ADDR, METADATA_PORT).map(|c| c.1),
        Some("10.0.1.6".to_string())
    );
    assert!(!reaches(&na, METADATA_ADDR, 8080), "only port 80 is open");
    assert!(
        !reaches(&na, ip("10.0.1.1"), METADATA_PORT),
        "the router's own address stays closed"
    );

    // The address is put back by the next apply if it goes.
    must(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "del",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    lab.apply(&s);
    let lo = must(&["ip", "-n", &ns, "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 169.254.169.254/32"), "{lo}");

    lab.cleanup();
    let left = lab.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}
