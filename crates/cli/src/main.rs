//! `vireo`: the command line for people. A client of vireod's EC2 Query API like any other: it
//! signs its requests with SigV4 and reads EC2's XML answers.
//!
//! Exit status: 0 on success, 1 when the call fails (an EC2 error is printed as
//! `vireo: <Code>: <Message>`), 2 for a usage error.

#![deny(unsafe_code)]

mod client;
mod commands;
mod config;
mod keycmd;
mod model;
mod netcmd;
mod netmodel;
mod output;
mod sshcmd;
mod top;
mod xmltree;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vireo",
    version,
    about = "Run and manage Vireo instances (a client of vireod's EC2 API)",
    after_help = "Configuration: --endpoint or VIREO_ENDPOINT (default http://127.0.0.1:8787); credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the shared credentials file's profile (--profile, AWS_PROFILE, default 'vireo'); region from --region, AWS_REGION, AWS_DEFAULT_REGION, the profile's config, else us-east-1."
)]
pub struct Cli {
    /// vireod's EC2 endpoint [env: VIREO_ENDPOINT] [default: http://127.0.0.1:8787]
    #[arg(long, global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// Profile of the shared credentials file [env: AWS_PROFILE] [default: vireo]
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Region to sign requests for
    #[arg(long, global = true)]
    region: Option<String>,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Launch instances (RunInstances)
    Run(RunArgs),
    /// List instances (DescribeInstances)
    Ls(LsArgs),
    /// Show instances in detail
    Describe {
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
    },
    /// Start stopped instances
    Start {
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
    },
    /// Stop running instances
    Stop {
        /// Stop without waiting for the guest to shut down
        #[arg(long, conflicts_with = "hibernate")]
        force: bool,
        /// Hibernate: save the VM's memory and state; `vireo start` resumes it
        #[arg(long)]
        hibernate: bool,
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
    },
    /// Live-migrate a running instance to another host (vireod's MigrateInstance)
    Migrate {
        #[arg(value_name = "INSTANCE_ID")]
        id: String,
        /// The migration host to move to (default: host 1 from host 0, host 0 from the others)
        #[arg(long, value_name = "HOST")]
        to: Option<u32>,
        /// Longest acceptable pause of the guest, in milliseconds [default: 50]
        #[arg(long, value_name = "MS")]
        downtime_ms: Option<u64>,
    },
    /// Reboot instances
    Reboot {
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
    },
    /// Terminate instances
    Terminate {
        #[arg(required = true, value_name = "INSTANCE_ID")]
        ids: Vec<String>,
    },
    /// Show an instance's serial console (GetConsoleOutput)
    Console {
        #[arg(value_name = "INSTANCE_ID")]
        id: String,
        /// Keep printing new output until the instance stops (or Ctrl-C)
        #[arg(long, conflicts_with = "json")]
        follow: bool,
    },
    /// List images, or register, create and deregister them
    Images(ImagesArgs),
    /// List instance types (DescribeInstanceTypes)
    Types,
    /// List key pairs, or create, import and delete them
    Keys(keycmd::KeysArgs),
    /// Log in to an instance, or run a command there, with OpenSSH
    ///
    /// The address is the instance's public one if it has one, else its private one; the key
    /// is --identity or ./KEYNAME.pem; the host key must be one of those cloud-init printed on
    /// the console. Exits with ssh's status.
    Ssh(sshcmd::SshArgs),
    /// List VPCs with their subnet counts (DescribeVpcs, DescribeSubnets)
    Vpcs,
    /// Create or delete a VPC
    Vpc {
        #[command(subcommand)]
        action: VpcCommand,
    },
    /// List subnets (DescribeSubnets)
    Subnets {
        /// Only the subnets of this VPC
        #[arg(long, value_name = "VPC_ID")]
        vpc: Option<String>,
    },
    /// Create or delete a subnet
    Subnet {
        #[command(subcommand)]
        action: SubnetCommand,
    },
    /// List security groups, or show, create, delete them and allow or revoke rules
    Sg(SgArgs),
    /// Call any EC2 action with NAME=VALUE parameters and print its answer as XML (or JSON)
    ///
    /// For actions no other command covers, e.g.
    /// `vireo call AttachInternetGateway InternetGatewayId=igw-… VpcId=vpc-…`.
    Call {
        /// The action, e.g. CreateInternetGateway
        action: String,
        /// A request parameter, NAME=VALUE (repeatable, e.g. Filter.1.Name=vpc-id)
        #[arg(value_name = "NAME=VALUE", value_parser = parse_tag)]
        params: Vec<(String, String)>,
    },
    /// Live per-instance CPU, exits, memory, disk and network rates from vireod's /metrics
    Top {
        /// Seconds between scrapes (the rates are over this interval)
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        interval: f64,
        /// Print one table after one interval and exit
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to boot (ami-…)
    #[arg(long, value_name = "AMI")]
    image: String,
    /// Instance type
    #[arg(long = "type", value_name = "TYPE", default_value = "t3.micro")]
    instance_type: String,
    /// How many instances
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    count: u32,
    /// File whose contents are the user data
    #[arg(long, value_name = "FILE", conflicts_with = "user_data_text")]
    user_data: Option<PathBuf>,
    /// User data given on the command line
    #[arg(long, value_name = "TEXT")]
    user_data_text: Option<String>,
    /// A tag for the instances, KEY=VALUE (repeatable); Name=… is shown by `vireo ls`
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Wait until the instances are running, showing their progress
    #[arg(long)]
    wait: bool,
    /// With --wait: also follow the console until a line contains this text
    #[arg(long, value_name = "TEXT", requires = "wait")]
    ready_line: Option<String>,
    /// With --wait: give up after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
    timeout: u64,
    /// Subnet to launch into (default: the default VPC's subnet)
    #[arg(long, value_name = "SUBNET_ID")]
    subnet: Option<String>,
    /// A security group for the instances' interface (repeatable; default: the VPC's `default`)
    #[arg(long = "sg", value_name = "SG_ID")]
    groups: Vec<String>,
    /// The private address (one instance only)
    #[arg(long, value_name = "IP")]
    private_ip: Option<String>,
    /// Give each instance a public address from vireod's pool (AssociatePublicIpAddress)
    #[arg(long)]
    public_ip: bool,
    /// The key pair whose public key the instances get (KeyName; see `vireo keys`)
    #[arg(long, value_name = "NAME")]
    key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VpcCommand {
    /// Create a VPC (CreateVpc); prints its id
    Create {
        /// Its IPv4 CIDR block, /16 to /28 (e.g. 10.0.0.0/16)
        cidr: String,
        /// A Name tag
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete an empty VPC (DeleteVpc)
    Delete {
        #[arg(value_name = "VPC_ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubnetCommand {
    /// Create a subnet (CreateSubnet); prints its id
    Create {
        #[arg(value_name = "VPC_ID")]
        vpc: String,
        /// Its CIDR block, inside the VPC's (e.g. 10.0.1.0/24)
        cidr: String,
        /// Availability zone (default: vireod's)
        #[arg(long, value_name = "ZONE")]
        az: Option<String>,
        /// Give instances launched here a public address (MapPublicIpOnLaunch)
        #[arg(long)]
        public: bool,
        /// A Name tag
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a subnet without instances (DeleteSubnet)
    Delete {
        #[arg(value_name = "SUBNET_ID")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct SgArgs {
    /// With no subcommand: only the groups of this VPC
    #[arg(long, value_name = "VPC_ID")]
    vpc: Option<String>,
    #[command(subcommand)]
    action: Option<SgCommand>,
}

/// One rule's protocol, ports and peer, as `sg allow` and `sg revoke` take it.
#[derive(Debug, Args)]
pub struct PermissionArgs {
    /// tcp, udp, icmp, all, or an IP protocol number
    #[arg(long, value_name = "PROTO")]
    proto: Option<String>,
    /// A port or FROM-TO (tcp and udp); the ICMP type (icmp)
    #[arg(long, value_name = "PORT[-PORT]")]
    port: Option<String>,
    /// The peer: addresses in this CIDR
    #[arg(long, value_name = "CIDR", conflicts_with = "group")]
    cidr: Option<String>,
    /// The peer: the interfaces in this security group
    #[arg(long, value_name = "SG_ID")]
    group: Option<String>,
    /// The rule's description
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    /// Show a group and its rules as a table (DescribeSecurityGroupRules)
    Show {
        #[arg(value_name = "SG_ID")]
        id: String,
    },
    /// Create a group (CreateSecurityGroup); prints its id
    Create {
        name: String,
        #[arg(long, value_name = "VPC_ID")]
        vpc: String,
        /// Its description (default: the name)
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a group no interface uses (DeleteSecurityGroup)
    Delete {
        #[arg(value_name = "SG_ID")]
        id: String,
    },
    /// Allow traffic: add a rule (AuthorizeSecurityGroupIngress, or Egress with --egress)
    Allow {
        #[arg(value_name = "SG_ID")]
        id: String,
        /// An outbound rule (default: inbound)
        #[arg(long)]
        egress: bool,
        #[command(flatten)]
        perm: PermissionArgs,
    },
    /// Remove rules, by their ids (--rule) or as allow named them (RevokeSecurityGroupIngress/Egress)
    Revoke {
        #[arg(value_name = "SG_ID")]
        id: String,
        /// An outbound rule (default: inbound)
        #[arg(long)]
        egress: bool,
        /// A rule id, sgr-… (repeatable)
        #[arg(long = "rule", value_name = "RULE_ID")]
        rules: Vec<String>,
        #[command(flatten)]
        perm: PermissionArgs,
    },
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only instances in this state (repeatable): pending, running, stopping, stopped, …
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    /// Only instances with this tag, KEY=VALUE (repeatable; all must match)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    action: Option<ImagesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Register an image from an image manifest, or from a kernel, an optional initrd and an
    /// optional raw root disk (RegisterImage)
    Register {
        #[arg(long)]
        name: String,
        /// Image manifest (JSON on the vireod host), sent as ImageLocation
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "root_disk", "cmdline"], required_unless_present = "kernel")]
        manifest: Option<PathBuf>,
        /// Kernel (vmlinux or bzImage), sent as KernelId
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// Initrd, sent as RamdiskId
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// Raw root disk image, sent as RootDisk (a vireod parameter)
        #[arg(long, value_name = "FILE")]
        root_disk: Option<PathBuf>,
        /// Kernel command line, sent as KernelCommandLine (a vireod parameter)
        #[arg(long)]
        cmdline: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Deregister an image
    Deregister {
        #[arg(value_name = "AMI")]
        image: String,
    },
    /// Create an image from an instance's disks (CreateImage)
    Create {
        #[arg(long, value_name = "INSTANCE_ID")]
        instance: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Do not stop the instance while its disks are copied
        #[arg(long)]
        no_reboot: bool,
    },
}

/// `KEY=VALUE`; the value may be empty and may contain `=`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    // `vireo ls | head` must end quietly when the reader goes away, as command-line tools do,
    // instead of panicking on a failed write to stdout (Rust ignores SIGPIPE by default).
    // SAFETY: called first thing, before any other thread exists; SIG_DFL is a valid handler.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL)
    };
    // clap prints usage errors itself and exits with status 2.
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A child's status (vireo ssh): it has said what went wrong.
        Err(commands::CliError::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vireo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// From now on Ctrl-C and Ctrl-\ do not end this process: a child in the foreground (ssh) has
/// them, and this process outlives it to clean up.
pub(crate) fn ignore_interrupts() {
    // SAFETY: SIG_IGN is a valid disposition for these signals; no handler runs.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_arguments() {
        let cli = parse(&[
            "run",
            "--image",
            "ami-1",
            "--tag",
            "Name=web",
            "--tag",
            "k=a=b",
            "--tag",
            "e=",
            "--count",
            "3",
            "--wait",
            "--ready-line",
            "READY",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.instance_type, "t3.micro");
        assert_eq!(r.count, 3);
        assert_eq!(
            r.tags,
            vec![
                ("Name".into(), "web".into()),
                ("k".into(), "a=b".into()),
                ("e".into(), "".into())
            ]
        );
        assert_eq!(r.ready_line.as_deref(), Some("READY"));
        assert_eq!(r.timeout, 300);
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["run"][..],
            &["run", "--image", "ami-1", "--tag", "novalue"],
            &["run", "--image", "ami-1", "--tag", "=v"],
            &["run", "--image", "ami-1", "--count", "0"],
            &["run", "--image", "ami-1", "--count", "x"],
            &[
                "run",
                "--image",
                "a",
                "--user-data",
                "f",
                "--user-data-text",
                "t",
            ],
            &["run", "--image", "a", "--ready-line", "x"],
            &["describe"],
            &["stop"],
            &["console"],
            &["console", "i-1", "--follow", "--json"],
            &["images", "register", "--name", "n"],
            &["images", "create", "--name", "n"],
            &["frobnicate"],
            &["vpc", "create"],
            &["vpc"],
            &["subnet", "create", "vpc-1"],
            &["sg", "create", "web"],
            &[
                "sg",
                "allow",
                "sg-1",
                "--cidr",
                "1.0.0.0/8",
                "--group",
                "sg-2",
            ],
            &["sg", "show"],
            &["call"],
            &["call", "CreateRoute", "RouteTableId"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn call_arguments() {
        let cli = parse(&[
            "call",
            "CreateRoute",
            "RouteTableId=rtb-1",
            "Gateway.Id=a=b",
        ])
        .unwrap();
        let Command::Call { action, params } = cli.command else {
            panic!()
        };
        assert_eq!(action, "CreateRoute");
        assert_eq!(
            params,
            [
                ("RouteTableId".into(), "rtb-1".into()),
                ("Gateway.Id".into(), "a=b".into())
            ]
        );
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "ls",
            "--json",
            "--endpoint",
            "http://x:1",
            "--state",
            "running",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoint.as_deref(), Some("http://x:1"));
        let Command::Ls(ls) = cli.command else {
            panic!()
        };
        assert_eq!(ls.states, ["running"]);
        let cli = parse(&["--profile", "p", "stop", "--force", "i-1", "i-2"]).unwrap();
        assert_eq!(cli.profile.as_deref(), Some("p"));
        assert!(
            matches!(cli.command, Command::Stop { force: true, ref ids, .. } if ids.len() == 2)
        );
    }
}
