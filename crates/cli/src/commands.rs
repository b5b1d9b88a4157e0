//! What each command asks vireod and how it shows the answer.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use crate::client::{CallError, Client, Params};
use crate::config::{self, ConfigError, Flags, ProcessEnv};
use crate::model::{self, Instance};
use crate::netcmd;
use crate::output::{console_delta, table};
use crate::xmltree::Element;
use crate::{Cli, Command, ImagesCommand, LsArgs, RunArgs};

/// How often `--wait` and `--follow` ask again.
const POLL: Duration = Duration::from_secs(1);
/// A bound on NextToken pages, so a server that never stops paginating cannot hang the CLI.
const MAX_PAGES: usize = 10_000;
/// The user data limit EC2 enforces (before base64); checked here too so the error names the file.
const MAX_USER_DATA: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad arguments that clap cannot see (an unreadable file, an odd path): exit status 2.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    /// A program run for the user (ssh) ended with this status, having said why itself.
    #[error("exit status {0}")]
    Exit(u8),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Exit(code) => *code,
            _ => 1,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, CliError>;

pub fn run(cli: Cli) -> Result<()> {
    let flags = Flags {
        endpoint: cli.endpoint,
        profile: cli.profile,
        region: cli.region,
    };
    // `top` reads the unauthenticated /metrics: it must work without credentials.
    if let Command::Top { interval, once } = cli.command {
        let endpoint = config::resolve_endpoint(&flags, &ProcessEnv)?;
        return crate::top::run(&endpoint, interval, once, cli.json);
    }
    let resolved = config::resolve(&flags, &ProcessEnv)?;
    let client = Client::new(resolved);
    let json = cli.json;
    match cli.command {
        Command::Run(args) => run_instances(&client, json, args),
        Command::Ls(args) => ls(&client, json, &args),
        Command::Describe { ids } => describe(&client, json, &ids),
        Command::Start { ids } => {
            change_state(&client, json, "StartInstances", &ids, Params::new())
        }
        Command::Stop {
            force,
            hibernate,
            ids,
        } => {
            let mut extra = Params::new();
            if force {
                extra.set("Force", "true");
            }
            if hibernate {
                extra.set("Hibernate", "true");
            }
            change_state(&client, json, "StopInstances", &ids, extra)
        }
        Command::Migrate {
            id,
            to,
            downtime_ms,
        } => migrate(&client, json, &id, to, downtime_ms),
        Command::Terminate { ids } => {
            change_state(&client, json, "TerminateInstances", &ids, Params::new())
        }
        Command::Reboot { ids } => reboot(&client, json, &ids),
        Command::Console { id, follow } => console(&client, json, &id, follow),
        Command::Images(args) => match args.action {
            None => images(&client, json),
            Some(cmd) => image_command(&client, json, cmd),
        },
        Command::Types => types(&client, json),
        Command::Keys(args) => crate::keycmd::run(&client, json, args.action),
        Command::Ssh(args) => crate::sshcmd::run(&client, &args),
        Command::Vpcs => netcmd::vpcs(&client, json),
        Command::Vpc { action } => netcmd::vpc(&client, json, &action),
        Command::Subnets { vpc } => netcmd::subnets(&client, json, vpc.as_deref()),
        Command::Subnet { action } => netcmd::subnet(&client, json, &action),
        Command::Sg(args) => match &args.action {
            None => netcmd::groups(&client, json, args.vpc.as_deref()),
            Some(cmd) => netcmd::sg(&client, json, cmd),
        },
        Command::Call { action, params } => netcmd::call(&client, json, &action, &params),
        Command::Top { .. } => unreachable!("handled before credentials are read"),
    }
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?;
    println!("{s}");
    Ok(())
}

/// A listing: the items as JSON, or a table of `headers` with a `row` of cells for each item.
pub(crate) fn print_list<T: Serialize>(
    json: bool,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        return print_json(&items);
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    print!("{}", table(headers, &rows));
    Ok(())
}

/// Calls `action` page by page, following `nextToken`.
pub(crate) fn paginate(client: &Client, action: &str, params: &Params) -> Result<Vec<Element>> {
    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut p = params.clone();
        if let Some(t) = &token {
            p.set("NextToken", t.clone());
        }
        let root = client.call(action, &p)?;
        token = model::next_token(&root);
        pages.push(root);
        match &token {
            None => return Ok(pages),
            Some(t) if !seen.insert(t.clone()) || pages.len() >= MAX_PAGES => {
                return Err(CliError::Failed(format!(
                    "{action}: vireod keeps returning more pages (NextToken {t}); giving up"
                )))
            }
            Some(_) => {}
        }
    }
}

fn describe_instances(client: &Client, params: &Params) -> Result<Vec<Instance>> {
    Ok(paginate(client, "DescribeInstances", params)?
        .iter()
        .flat_map(model::instances)
        .collect())
}

fn by_ids(ids: &[String]) -> Params {
    let mut p = Params::new();
    p.list("InstanceId", ids);
    p
}

fn instance_table(instances: &[Instance]) -> String {
    let rows: Vec<Vec<&str>> = instances
        .iter()
        .map(|i| {
            vec![
                i.instance_id.as_str(),
                i.state.as_str(),
                i.instance_type.as_str(),
                i.private_ip.as_deref().unwrap_or("-"),
                i.public_ip.as_deref().unwrap_or("-"),
                i.image_id.as_str(),
                i.launch_time.as_str(),
                i.name(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "TYPE",
            "PRIVATE_IP",
            "PUBLIC_IP",
            "IMAGE",
            "LAUNCHED",
            "NAME",
        ],
        &rows,
    )
}

fn show_instances(json: bool, instances: &[Instance]) -> Result<()> {
    if json {
        print_json(&instances)
    } else {
        print!("{}", instance_table(instances));
        Ok(())
    }
}

// --- run ---------------------------------------------------------------------------------------

fn user_data(args: &RunArgs) -> Result<Option<Vec<u8>>> {
    let data = match (&args.user_data, &args.user_data_text) {
        (Some(path), _) => Some(
            std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--user-data {}: {e}", path.display())))?,
        ),
        (None, Some(text)) => Some(text.as_bytes().to_vec()),
        (None, None) => None,
    };
    if let Some(d) = &data {
        if d.len() > MAX_USER_DATA {
            return Err(CliError::Usage(format!(
                "user data is {} bytes; EC2 allows at most {MAX_USER_DATA}",
                d.len()
            )));
        }
    }
    Ok(data)
}

pub fn run_params(args: &RunArgs, user_data: Option<&[u8]>, client_token: &str) -> Params {
    let mut p = Params::new();
    p.set("ImageId", args.image.clone())
        .set("InstanceType", args.instance_type.clone())
        .set("MinCount", args.count.to_string())
        .set("MaxCount", args.count.to_string())
        // As the AWS SDKs do: a retried RunInstances then launches nothing twice.
        .set("ClientToken", client_token);
    if let Some(d) = user_data {
        p.set(
            "UserData",
            base64::engine::general_purpose::STANDARD.encode(d),
        );
    }
    network_params(args, &mut p);
    if let Some(k) = &args.key {
        p.set("KeyName", k.clone());
    }
    if !args.tags.is_empty() {
        p.set("TagSpecification.1.ResourceType", "instance");
        for (i, (k, v)) in args.tags.iter().enumerate() {
            p.set(format!("TagSpecification.1.Tag.{}.Key", i + 1), k.clone());
            p.set(format!("TagSpecification.1.Tag.{}.Value", i + 1), v.clone());
        }
    }
    p
}

/// `--subnet`, `--sg`, `--private-ip` as RunInstances' own parameters; with `--public-ip`, as
/// the primary interface's (`NetworkInterface.1`), the form that takes AssociatePublicIpAddress.
fn network_params(args: &RunArgs, p: &mut Params) {
    let prefix = if args.public_ip {
        p.set("NetworkInterface.1.DeviceIndex", "0")
            .set("NetworkInterface.1.AssociatePublicIpAddress", "true");
        "NetworkInterface.1."
    } else {
        ""
    };
    if let Some(s) = &args.subnet {
        p.set(format!("{prefix}SubnetId"), s.clone());
    }
    p.list(&format!("{prefix}SecurityGroupId"), &args.groups);
    if let Some(ip) = &args.private_ip {
        p.set(format!("{prefix}PrivateIpAddress"), ip.clone());
    }
}

fn run_instances(client: &Client, json: bool, args: RunArgs) -> Result<()> {
    let data = user_data(&args)?;
    let params = run_params(&args, data.as_deref(), &vireo_ec2_api::ids::request_id());
    let root = client.call("RunInstances", &params)?;
    let launched = model::instances(&root);
    if launched.is_empty() {
        return Err(CliError::Failed(
            "RunInstances answered without any instance".into(),
        ));
    }
    if !args.wait {
        return show_instances(json, &launched);
    }
    // Progress is for people: with --json it goes to stderr so stdout stays one JSON document.
    let mut progress: Box<dyn Write> = if json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let ids: Vec<String> = launched.iter().map(|i| i.instance_id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut waiter = Waiter {
        client,
        ids: &ids,
        states: HashMap::new(),
        deadline,
        timeout: args.timeout,
    };
    for i in &launched {
        waiter.note(&mut progress, &i.instance_id, &i.state)?;
    }
    waiter.until_running(&mut progress)?;
    if let Some(ready) = &args.ready_line {
        waiter.until_console_line(&mut progress, ready)?;
    }
    drop(progress);
    show_instances(json, &describe_instances(client, &by_ids(&ids))?)
}

struct Waiter<'a> {
    client: &'a Client,
    ids: &'a [String],
    states: HashMap<String, String>,
    deadline: Instant,
    timeout: u64,
}

impl Waiter<'_> {
    fn note(&mut self, out: &mut dyn Write, id: &str, state: &str) -> Result<()> {
        if self.states.get(id).map(String::as_str) != Some(state) {
            write_progress(out, &format!("{id}  {state}\n"))?;
            self.states.insert(id.to_string(), state.to_string());
        }
        Ok(())
    }

    /// Reads the instances' states, reports changes, and fails if one went away.
    fn poll_states(&mut self, out: &mut dyn Write) -> Result<bool> {
        let now = describe_instances(self.client, &by_ids(self.ids))?;
        for i in &now {
            self.note(out, &i.instance_id, &i.state)?;
            if matches!(
                i.state.as_str(),
                "shutting-down" | "terminated" | "stopping" | "stopped"
            ) {
                let why = i
                    .state_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                return Err(CliError::Failed(format!(
                    "{} is {} instead of running{why}",
                    i.instance_id, i.state
                )));
            }
        }
        Ok(now.len() == self.ids.len() && now.iter().all(|i| i.state == "running"))
    }

    fn check_deadline(&self, what: &str) -> Result<()> {
        if Instant::now() >= self.deadline {
            return Err(CliError::Failed(format!(
                "timed out after {}s waiting for {what}",
                self.timeout
            )));
        }
        std::thread::sleep(POLL.min(self.deadline.saturating_duration_since(Instant::now())));
        Ok(())
    }

    fn until_running(&mut self, out: &mut dyn Write) -> Result<()> {
        while !self.poll_states(out)? {
            self.check_deadline(&format!("{} to be running", self.ids.join(", ")))?;
        }
        Ok(())
    }

    fn until_console_line(&mut self, out: &mut dyn Write, ready: &str) -> Result<()> {
        let mut shown: HashMap<&str, String> = HashMap::new();
        let mut done: HashSet<&str> = HashSet::new();
        let several = self.ids.len() > 1;
        loop {
            for id in self.ids {
                if done.contains(id.as_str()) {
                    continue;
                }
                let c = console_read(self.client, id)?;
                let before = shown.entry(id.as_str()).or_default();
                let delta = console_delta(before, &c.output);
                if several {
                    for line in delta.lines() {
                        write_progress(out, &format!("{id} | {line}\n"))?;
                    }
                } else {
                    write_progress(out, delta)?;
                }
                *before = c.output.clone();
                if c.output.lines().any(|l| l.contains(ready)) {
                    done.insert(id.as_str());
                }
            }
            if done.len() == self.ids.len() {
                return Ok(());
            }
            self.poll_states(out)?;
            let waiting: Vec<&str> = self
                .ids
                .iter()
                .map(String::as_str)
                .filter(|id| !done.contains(id))
                .collect();
            self.check_deadline(&format!(
                "'{ready}' on the console of {}",
                waiting.join(", ")
            ))?;
        }
    }
}

fn write_progress(out: &mut dyn Write, s: &str) -> Result<()> {
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(format!("cannot write output: {e}")))
}

// --- ls / describe -----------------------------------------------------------------------------

pub fn ls_params(args: &LsArgs) -> Params {
    let mut p = Params::new();
    if !args.states.is_empty() {
        p.filter("instance-state-name", &args.states);
    }
    for (k, v) in &args.tags {
        p.filter(&format!("tag:{k}"), &[v]);
    }
    p
}

fn ls(client: &Client, json: bool, args: &LsArgs) -> Result<()> {
    show_instances(json, &describe_instances(client, &ls_params(args))?)
}

fn describe(client: &Client, json: bool, ids: &[String]) -> Result<()> {
    let instances = describe_instances(client, &by_ids(ids))?;
    if json {
        return print_json(&instances);
    }
    for (n, i) in instances.iter().enumerate() {
        if n > 0 {
            println!();
        }
        println!("{}", i.instance_id);
        let tags = i
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let groups = i.security_groups.join(", ");
        let fields: Vec<(&str, Option<&str>)> = vec![
            ("state", Some(i.state.as_str())),
            ("state reason", i.state_reason.as_deref()),
            ("type", Some(i.instance_type.as_str())),
            ("image", Some(i.image_id.as_str())),
            ("launched", Some(i.launch_time.as_str())),
            ("reservation", Some(i.reservation_id.as_str())),
            ("zone", i.availability_zone.as_deref()),
            ("vpc", i.vpc_id.as_deref()),
            ("subnet", i.subnet_id.as_deref()),
            ("private ip", i.private_ip.as_deref()),
            ("public ip", i.public_ip.as_deref()),
            ("groups", Some(groups.as_str())),
            ("tags", Some(tags.as_str())),
        ];
        for (k, v) in fields {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                println!("  {:<13} {v}", format!("{k}:"));
            }
        }
    }
    Ok(())
}

// --- state changes -----------------------------------------------------------------------------

fn change_state(
    client: &Client,
    json: bool,
    action: &str,
    ids: &[String],
    extra: Params,
) -> Result<()> {
    let mut p = by_ids(ids);
    p.0.extend(extra.0);
    let changes = model::state_changes(&client.call(action, &p)?);
    if json {
        return print_json(&changes);
    }
    let rows: Vec<Vec<&str>> = changes
        .iter()
        .map(|c| {
            vec![
                c.instance_id.as_str(),
                c.previous_state.as_str(),
                c.current_state.as_str(),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "PREVIOUS", "CURRENT"], &rows));
    Ok(())
}

pub(crate) fn expect_true(root: &Element, action: &str) -> Result<()> {
    match root.text_at("return") {
        Some("true") => Ok(()),
        other => Err(CliError::Failed(format!(
            "{action} answered return={}",
            other.unwrap_or("(none)")
        ))),
    }
}

fn migrate(
    client: &Client,
    json: bool,
    id: &str,
    to: Option<u32>,
    downtime_ms: Option<u64>,
) -> Result<()> {
    let mut p = Params::new();
    p.set("InstanceId", id);
    if let Some(t) = to {
        p.set("TargetHost", t.to_string());
    }
    if let Some(d) = downtime_ms {
        p.set("DowntimeMs", d.to_string());
    }
    let doc = client.call("MigrateInstance", &p)?;
    let field = |name: &str| doc.text_at(name).unwrap_or("-").to_string();
    if json {
        #[derive(Serialize)]
        struct Migrated {
            instance_id: String,
            source_host: String,
            target_host: String,
            downtime_ms: String,
            total_ms: String,
        }
        return print_json(&Migrated {
            instance_id: id.to_string(),
            source_host: field("sourceHost"),
            target_host: field("targetHost"),
            downtime_ms: field("downtimeMs"),
            total_ms: field("totalMs"),
        });
    }
    println!(
        "{id}  host {} -> host {}  (downtime {} ms, total {} ms)",
        field("sourceHost"),
        field("targetHost"),
        field("downtimeMs"),
        field("totalMs")
    );
    Ok(())
}

fn reboot(client: &Client, json: bool, ids: &[String]) -> Result<()> {
    expect_true(
        &client.call("RebootInstances", &by_ids(ids))?,
        "RebootInstances",
    )?;
    if json {
        #[derive(Serialize)]
        struct Rebooted<'a> {
            rebooting: &'a [String],
        }
        return print_json(&Rebooted { rebooting: ids });
    }
    for id in ids {
        println!("{id}  rebooting");
    }
    Ok(())
}

// --- console -----------------------------------------------------------------------------------

fn console_read(client: &Client, id: &str) -> Result<model::ConsoleOutput> {
    let mut p = Params::new();
    p.set("InstanceId", id);
    model::console_output(&client.call("GetConsoleOutput", &p)?).map_err(CliError::Failed)
}

fn console(client: &Client, json: bool, id: &str, follow: bool) -> Result<()> {
    let first = console_read(client, id)?;
    if json {
        return print_json(&first);
    }
    let mut out = std::io::stdout();
    write_progress(&mut out, &first.output)?;
    if !follow {
        return Ok(());
    }
    let mut shown = first.output;
    loop {
        std::thread::sleep(POLL);
        let state = describe_instances(client, &by_ids(&[id.to_string()]))?
            .into_iter()
            .next()
            .map(|i| i.state)
            .unwrap_or_default();
        let c = console_read(client, id)?;
        write_progress(&mut out, console_delta(&shown, &c.output))?;
        shown = c.output;
        // Read once more after the state says it is over, so the last lines are not lost.
        if matches!(state.as_str(), "stopped" | "terminated") {
            return Ok(());
        }
    }
}

// --- images and types --------------------------------------------------------------------------

fn images(client: &Client, json: bool) -> Result<()> {
    let all: Vec<model::Image> = paginate(client, "DescribeImages", &Params::new())?
        .iter()
        .flat_map(model::images)
        .collect();
    let headers = ["IMAGE", "STATE", "ARCH", "CREATED", "NAME"];
    print_list(json, &all, &headers, |i| {
        vec![
            i.image_id.clone(),
            i.state.clone(),
            i.architecture.clone(),
            i.creation_date.clone(),
            i.name.clone(),
        ]
    })
}

/// Paths go to vireod as absolute paths: it does not share the CLI's working directory.
fn abs(flag: &str, p: &Path) -> Result<String> {
    let a = std::path::absolute(p)
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", p.display())))?;
    a.to_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("{flag} {}: not a UTF-8 path", p.display())))
}

pub fn image_params(cmd: &ImagesCommand) -> Result<(&'static str, Params)> {
    let mut p = Params::new();
    let action = match cmd {
        ImagesCommand::Register {
            name,
            manifest,
            kernel,
            initrd,
            root_disk,
            cmdline,
            description,
        } => {
            p.set("Name", name.clone());
            if let Some(m) = manifest {
                p.set("ImageLocation", abs("--manifest", m)?);
            }
            if let Some(k) = kernel {
                p.set("KernelId", abs("--kernel", k)?);
            }
            if let Some(d) = root_disk {
                p.set("RootDisk", abs("--root-disk", d)?);
            }
            if let Some(i) = initrd {
                p.set("RamdiskId", abs("--initrd", i)?);
            }
            if let Some(d) = description {
                p.set("Description", d.clone());
            }
            if let Some(c) = cmdline {
                p.set("KernelCommandLine", c.clone());
            }
            "RegisterImage"
        }
        ImagesCommand::Deregister { image } => {
            p.set("ImageId", image.clone());
            "DeregisterImage"
        }
        ImagesCommand::Create {
            instance,
            name,
            description,
            no_reboot,
        } => {
            p.set("InstanceId", instance.clone())
                .set("Name", name.clone());
            if let Some(d) = description {
                p.set("Description", d.clone());
            }
            if *no_reboot {
                p.set("NoReboot", "true");
            }
            "CreateImage"
        }
    };
    Ok((action, p))
}

fn image_command(client: &Client, json: bool, cmd: ImagesCommand) -> Result<()> {
    let (action, params) = image_params(&cmd)?;
    let root = client.call(action, &params)?;
    #[derive(Serialize)]
    struct ImageId {
        image_id: String,
    }
    match cmd {
        ImagesCommand::Deregister { image } => {
            expect_true(&root, action)?;
            if json {
                print_json(&ImageId { image_id: image })
            } else {
                println!("{image}  deregistered");
                Ok(())
            }
        }
        ImagesCommand::Register { .. } | ImagesCommand::Create { .. } => {
            let id = root
                .text_at("imageId")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| CliError::Failed(format!("{action} answered without an imageId")))?
                .to_string();
            if json {
                print_json(&ImageId { image_id: id })
            } else {
                println!("{id}");
                Ok(())
            }
        }
    }
}

fn types(client: &Client, json: bool) -> Result<()> {
    let all: Vec<model::InstanceType> = paginate(client, "DescribeInstanceTypes", &Params::new())?
        .iter()
        .flat_map(model::instance_types)
        .collect();
    let fmt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    print_list(json, &all, &["TYPE", "VCPUS", "MEMORY_MIB"], |t| {
        vec![
            t.instance_type.clone(),
            fmt(t.vcpus.map(|v| v.to_string())),
            fmt(t.memory_mib.map(|v| v.to_string())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn run_request_parameters() {
        let Command::Run(args) = cli(&[
            "run",
            "--image",
            "ami-0123456789abcdef0",
            "--type",
            "t3.small",
            "--count",
            "2",
            "--tag",
            "Name=web",
            "--tag",
            "env=prod",
        ])
        .command
        else {
            panic!()
        };
        let p = run_params(&args, Some(b"#!/bin/sh\necho hi\n"), "tok");
        assert_eq!(
            Client::body("RunInstances", &p),
            "Action=RunInstances&Version=2016-11-15&ImageId=ami-0123456789abcdef0&InstanceType=t3.small&MinCount=2&MaxCount=2&ClientToken=tok&UserData=IyEvYmluL3NoCmVjaG8gaGkK&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=web&TagSpecification.1.Tag.2.Key=env&TagSpecification.1.Tag.2.Value=prod"
        );
        // The server's own parser reads back what the CLI meant.
        let parsed = vireo_ec2_api::query::Params::parse(
            "POST",
            None,
            "",
            Client::body("RunInstances", &p).as_bytes(),
            &Default::default(),
        )
        .unwrap();
        let spec = &parsed.structs("TagSpecification").unwrap()[0];
        assert_eq!(
            spec.tags("Tag").unwrap(),
            vec![("Name".into(), "web".into()), ("env".into(), "prod".into())]
        );
    }

    #[test]
    fn user_data_from_file_text_and_limits() {
        let dir = std::env::temp_dir().join(format!("vireo-cli-ud-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ud.sh");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        let run = |extra: &[&str]| {
            let mut a = vec!["run", "--image", "ami-1"];
            a.extend_from_slice(extra);
            let Command::Run(args) = cli(&a).command else {
                panic!()
            };
            user_data(&args)
        };
        let fs = f.to_str().unwrap();
        assert_eq!(run(&["--user-data", fs]).unwrap().unwrap(), b"#!/bin/sh\n");
        assert_eq!(run(&["--user-data-text", "x"]).unwrap().unwrap(), b"x");
        assert_eq!(run(&[]).unwrap(), None);
        let e = run(&["--user-data", "/nonexistent/ud"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let big = "x".repeat(MAX_USER_DATA + 1);
        assert_eq!(run(&["--user-data-text", &big]).unwrap_err().exit_code(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ls_filters() {
        let Command::Ls(args) = cli(&[
            "ls", "--state", "running", "--state", "pending", "--tag", "Name=web", "--tag",
            "team=a b",
        ])
        .command
        else {
            panic!()
        };
        let p = ls_params(&args);
        let parsed = vireo_ec2_api::query::Params::parse(
            "POST",
            None,
            "",
            Client::body("DescribeInstances", &p).as_bytes(),
            &Default::default(),
        )
        .unwrap();
        let f = parsed.filters().unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, "instance-state-name");
        assert_eq!(f[0].values, ["running", "pending"]);
        assert_eq!(
            (f[1].name.as_str(), f[1].values[0].as_str()),
            ("tag:Name", "web")
        );
        assert_eq!(
            (f[2].name.as_str(), f[2].values[0].as_str()),
            ("tag:team", "a b")
        );
    }

    #[test]
    fn image_requests() {
        let Command::Images(args) = cli(&[
            "images",
            "register",
            "--name",
            "deb",
            "--kernel",
            "/k/vmlinux",
            "--initrd",
            "rel/initrd",
            "--root-disk",
            "/d/root.raw",
            "--cmdline",
            "console=ttyS0 root=/dev/vda",
        ])
        .command
        else {
            panic!()
        };
        let (action, p) = image_params(args.action.as_ref().unwrap()).unwrap();
        assert_eq!(action, "RegisterImage");
        assert_eq!(p.get("KernelId"), Some("/k/vmlinux"));
        assert_eq!(p.get("RootDisk"), Some("/d/root.raw"));
        let initrd = p.get("RamdiskId").unwrap();
        assert!(
            initrd.starts_with('/') && initrd.ends_with("/rel/initrd"),
            "{initrd}"
        );
        assert_eq!(
            p.get("KernelCommandLine"),
            Some("console=ttyS0 root=/dev/vda")
        );

        let Command::Images(args) = cli(&[
            "images",
            "create",
            "--instance",
            "i-1",
            "--name",
            "snap",
            "--no-reboot",
        ])
        .command
        else {
            panic!()
        };
        let (action, p) = image_params(args.action.as_ref().unwrap()).unwrap();
        assert_eq!(action, "CreateImage");
        assert_eq!(p.get("InstanceId"), Some("i-1"));
        assert_eq!(p.get("NoReboot"), Some("true"));
    }
}
