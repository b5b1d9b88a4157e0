//! `vireod`: Vireo's EC2-compatible compute service.
//!
//!   vireod init  --data-dir DIR [--image MANIFEST]...   state, a first access key, images
//!   vireod serve --data-dir DIR --listen 127.0.0.1:PORT  the EC2 Query API

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vireo_control::db::Db;
use vireo_control::manifest::Manifest;
use vireo_control::service::{Capacity, Config, RegisterRequest, Service};

#[derive(Parser)]
#[command(
    name = "vireod",
    version,
    about = "Vireo's EC2-compatible compute service"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the state in DIR and a first access key (printed once, and written to
    /// DIR/credentials as the AWS profile `vireo`); register the images of the manifests given.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// An image manifest (JSON) to register; may be repeated.
        #[arg(long = "image", value_name = "MANIFEST")]
        images: Vec<PathBuf>,
        /// The region name clients use (their SigV4 scope and endpoint configuration).
        #[arg(long, default_value = "vireo-local-1")]
        region: String,
    },
    /// Serve the EC2 Query API.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:8787.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// The vireo-vmm binary (default: next to vireod, then $PATH).
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// vCPUs lent per host CPU.
        #[arg(long, default_value_t = 8.0)]
        cpu_overcommit: f64,
        /// Guest memory lent per MiB of host memory (guest RAM is allocated as the guest uses it).
        #[arg(long, default_value_t = 1.0)]
        memory_overcommit: f64,
        /// MiB of host memory kept back for the host itself.
        #[arg(long, default_value_t = 1024)]
        memory_reserve_mib: u64,
        /// Fixed vCPU capacity (instead of CPUs x overcommit).
        #[arg(long)]
        capacity_vcpus: Option<u64>,
        /// Fixed memory capacity in MiB (instead of memory x overcommit).
        #[arg(long)]
        capacity_memory_mib: Option<u64>,
        /// Seconds a guest gets to shut down cleanly on StopInstances before its VMM is killed.
        #[arg(long, default_value_t = 30)]
        shutdown_timeout: u64,
        /// Network namespaces standing for other hosts, for `vireo migrate` (0 to 8; needs root).
        #[arg(long, default_value_t = 0)]
        migration_hosts: u32,
        /// Do not serve GET /metrics (it needs no credentials; see docs/metrics.md).
        #[arg(long)]
        no_metrics: bool,
        /// A directory RegisterImage may read image files from (manifests, kernels, initrds,
        /// root disks); may be repeated. Default: DATA_DIR/import. Files elsewhere on this host
        /// are refused: vireod reads them as root and guests could read them back.
        #[arg(long = "import-dir", value_name = "DIR")]
        import_dirs: Vec<PathBuf>,
        /// The public addresses (an IPv4 CIDR, /16 to /29) instances and Elastic IPs get; its
        /// first address after the network's is the edge's own. Without it, none.
        #[arg(long, value_name = "CIDR")]
        public_cidr: Option<vireo_control::cidr::Ipv4Cidr>,
        /// Plumb nothing: the VPC API works, but instances get no network interface on the
        /// host (no namespaces, TAPs, nftables or dnsmasq; needs neither root nor those tools).
        #[arg(long)]
        no_network: bool,
        /// An existing network namespace standing for the internet: host 0's edge is joined
        /// to it by a veth pair and it routes --public-cidr to the edge (docs/networking.md).
        /// Without it public addresses are reachable only from inside the edge namespace.
        #[arg(
            long,
            value_name = "NAME",
            requires = "public_cidr",
            conflicts_with = "no_network"
        )]
        uplink_netns: Option<String>,
    },
    /// Remove the migration hosts' network namespaces (after every instance on them is gone).
    RemoveHosts {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.cmd {
        Cmd::RemoveHosts { data_dir } => remove_hosts(&data_dir),
        Cmd::Init {
            data_dir,
            images,
            region,
        } => init(&data_dir, &images, &region),
        Cmd::Serve {
            data_dir,
            listen,
            vmm,
            cpu_overcommit,
            memory_overcommit,
            memory_reserve_mib,
            capacity_vcpus,
            capacity_memory_mib,
            shutdown_timeout,
            migration_hosts,
            no_metrics,
            import_dirs,
            public_cidr,
            no_network,
            uplink_netns,
        } => {
            if !(cpu_overcommit > 0.0 && memory_overcommit > 0.0) {
                Err(anyhow::anyhow!("overcommit ratios must be positive"))
            } else if public_cidr.is_some_and(|c| !(16..=29).contains(&c.prefix())) {
                Err(anyhow::anyhow!("--public-cidr must be a /16 to /29 block"))
            } else {
                let host = Capacity::of_host(cpu_overcommit, memory_overcommit, memory_reserve_mib);
                let capacity = Capacity {
                    vcpus: capacity_vcpus.unwrap_or(host.vcpus),
                    memory_mib: capacity_memory_mib.unwrap_or(host.memory_mib),
                };
                serve(
                    &data_dir,
                    ServeOptions {
                        listen,
                        vmm,
                        capacity,
                        shutdown_timeout: Duration::from_secs(shutdown_timeout),
                        migration_hosts,
                        metrics: !no_metrics,
                        import_dirs,
                        public_cidr,
                        network: !no_network,
                        uplink_netns,
                    },
                )
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vireod: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// `vireod init`: a new data directory with its database, a first access key and the images
/// given. It only ever removes what it created itself: a directory that already holds anything
/// is refused, and a failure part-way removes the files it made (and the directory, with any
/// parents, only if it made them). The secret is printed last, once everything it belongs to
/// exists, and every file that holds it is readable by the owner only.
fn init(dir: &Path, images: &[PathBuf], region: &str) -> anyhow::Result<()> {
    DataDir::refuse_if_taken(dir)?;
    // Load every manifest first, and check what registering needs of each: a bad one must
    // fail before anything is created.
    let manifests = images
        .iter()
        .map(|p| {
            let abs = std::path::absolute(p)?;
            let m = Manifest::load(&abs)?;
            let name = m.name.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "the image manifest {} needs a \"name\" to be given to init",
                    abs.display()
                )
            })?;
            Ok((name, m))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let made = DataDir::create(dir)?;
    match init_in(dir, manifests, region) {
        Ok(report) => {
            print!("{report}");
            Ok(())
        }
        Err(e) => {
            made.undo();
            Err(e)
        }
    }
}

/// What [`init`] made of the data directory, so that a failure can take back exactly that.
struct DataDir {
    dir: PathBuf,
    /// The outermost directory init created (the data directory or one of its parents), if any.
    created: Option<PathBuf>,
}

impl DataDir {
    /// Refuses, with one line, a data directory that already holds anything.
    fn refuse_if_taken(dir: &Path) -> anyhow::Result<()> {
        if dir.join("state.db").exists() {
            anyhow::bail!(
                "{} already holds vireod state; use another --data-dir",
                dir.display()
            );
        }
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
            anyhow::bail!(
                "{} is not empty; give init a new or empty directory",
                dir.display()
            );
        }
        Ok(())
    }

    /// Makes `dir` (and its missing parents) private to the owner, or takes an existing empty
    /// directory and makes it private. Anything else is refused, with one line.
    fn create(dir: &Path) -> anyhow::Result<DataDir> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let abs = std::path::absolute(dir)?;
        match std::fs::read_dir(&abs) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    anyhow::bail!(
                        "{} is not empty; give init a new or empty directory",
                        dir.display()
                    );
                }
                // An existing directory may have been made with wider permissions; the secret
                // is about to be written in it.
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| anyhow::anyhow!("cannot restrict {}: {e}", dir.display()))?;
                Ok(DataDir {
                    dir: abs,
                    created: None,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The outermost ancestor that does not exist yet is what a failure removes.
                let mut outermost = abs.clone();
                while let Some(parent) = outermost.parent() {
                    if parent.exists() {
                        break;
                    }
                    outermost = parent.to_path_buf();
                }
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&abs)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                // The mode above is filtered by the umask; the data directory is private
                // whatever it is.
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o700))?;
                Ok(DataDir {
                    dir: abs,
                    created: Some(outermost),
                })
            }
            Err(e) => anyhow::bail!("cannot use {} as the data directory: {e}", dir.display()),
        }
    }

    /// Takes back what init made: the directory it created, or else what it put in the empty
    /// directory it was given (everything in it, since it was empty when init began).
    fn undo(self) {
        match self.created {
            Some(top) => {
                let _ = std::fs::remove_dir_all(top);
            }
            None => {
                if let Ok(entries) = std::fs::read_dir(&self.dir) {
                    for e in entries.flatten() {
                        let p = e.path();
                        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            }
        }
    }
}

/// The state, the access key and the images, in the data directory [`DataDir::create`] made
/// ready. Returns what to print once all of it exists.
fn init_in(dir: &Path, manifests: Vec<(String, Manifest)>, region: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    // The database holds the secret too: create it private before SQLite opens it (SQLite
    // gives its journal and WAL files the database's permissions).
    let db_path = dir.join("state.db");
    create_private(&db_path, "")?;
    let db = Db::open(&db_path)?;
    let owner = random_string(b"0123456789", 12);
    db.set_setting("owner_id", &owner)?;
    db.set_setting("region", region)?;
    std::fs::create_dir_all(Config::default_import_dir(dir))?;
    let key_id = format!(
        "AKIA{}",
        random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    );
    let secret = random_string(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
    );
    db.add_access_key(&key_id, &secret, &vireo_control::time::now_iso8601())?;
    // Every account has a default VPC with a default subnet in its zone, as on EC2.
    let mut db = db;
    let default_vpc = db.ensure_default_vpc(&format!("{region}a"))?;
    drop(db);
    create_private(
        &dir.join("credentials"),
        &format!("[vireo]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
    )?;
    create_private(
        &dir.join("config"),
        &format!("[profile vireo]\nregion = {region}\n"),
    )?;
    let mut report = String::new();
    writeln!(report, "vireod: state created in {}", dir.display())?;
    writeln!(report, "access key id:     {key_id}")?;
    writeln!(
        report,
        "secret access key: {secret}   (shown once; also in {}/credentials)",
        dir.display()
    )?;
    if let Some(vpc) = default_vpc {
        writeln!(report, "default VPC:       {vpc} (172.31.0.0/16)")?;
    }
    writeln!(
        report,
        "use it: export AWS_SHARED_CREDENTIALS_FILE={d}/credentials AWS_CONFIG_FILE={d}/config AWS_PROFILE=vireo",
        d = dir.display()
    )?;
    if !manifests.is_empty() {
        let svc = Service::open(config(
            dir,
            None,
            Capacity {
                vcpus: 0,
                memory_mib: 0,
            },
            Duration::ZERO,
            region,
            Vec::new(),
            Vec::new(),
        )?)?;
        for (name, m) in manifests {
            let id = svc
                .register_image(RegisterRequest {
                    name: name.clone(),
                    description: m.description,
                    architecture: "x86_64".into(),
                    boot_mode: "legacy-bios".into(),
                    kernel: m.kernel,
                    initrd: m.initrd,
                    root_disk: m.root_disk,
                    cmdline: m.cmdline,
                    tags: Vec::new(),
                })
                .map_err(|e| anyhow::anyhow!("registering {name}: {}", e.message))?;
            writeln!(report, "image {id}: {name}")?;
        }
    }
    Ok(report)
}

/// Creates `path` (it must not exist yet) readable and writable by the owner only.
fn create_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The mode above is filtered by the umask, which can only narrow it; set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn find_vmm(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(std::path::absolute(p)?);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vireo-vmm")))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("vireo-vmm"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            anyhow::anyhow!("cannot find vireo-vmm next to vireod or on $PATH; give --vmm PATH")
        })
}

fn config(
    dir: &Path,
    vmm: Option<PathBuf>,
    capacity: Capacity,
    shutdown_timeout: Duration,
    region: &str,
    hosts: Vec<vireo_control::hosts::Host>,
    import_dirs: Vec<PathBuf>,
) -> anyhow::Result<Config> {
    Ok(Config {
        data_dir: std::path::absolute(dir)?,
        vmm_bin: vmm.unwrap_or_default(),
        capacity,
        shutdown_timeout,
        region: region.to_string(),
        hosts,
        import_dirs,
        public_cidr: None,
    })
}

/// What `vireod serve` was asked for, besides the data directory.
struct ServeOptions {
    listen: String,
    vmm: Option<PathBuf>,
    capacity: Capacity,
    shutdown_timeout: Duration,
    migration_hosts: u32,
    metrics: bool,
    import_dirs: Vec<PathBuf>,
    public_cidr: Option<vireo_control::cidr::Ipv4Cidr>,
    /// The VPC data plane (`--no-network`: none).
    network: bool,
    uplink_netns: Option<String>,
}

/// `vireod remove-hosts`: the VPC data plane of the data directory (namespaces, TAPs, rules,
/// dnsmasq, edges; its VXLAN devices live in the hosts' namespaces), then the migration hosts.
fn remove_hosts(data_dir: &Path) -> anyhow::Result<()> {
    let abs = std::path::absolute(data_dir)?;
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        let hosts = vireo_control::hosts::plan(&abs, vireo_control::hosts::MAX_HOSTS)?;
        vireo_control::service::dataplane::remove_all(&abs, &hosts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    vireo_control::hosts::remove(data_dir).map_err(Into::into)
}

fn serve(dir: &Path, opts: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        listen,
        vmm,
        capacity,
        shutdown_timeout,
        migration_hosts,
        metrics,
        import_dirs,
        public_cidr,
        network,
        uplink_netns,
    } = opts;
    if network {
        vireo_control::service::dataplane::check_host().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(ns) = &uplink_netns {
        if !Path::new("/run/netns").join(ns).exists() {
            anyhow::bail!(
                "--uplink-netns {ns}: no such network namespace (`ip netns add {ns}` makes one)"
            );
        }
    }
    if !dir.join("state.db").exists() {
        anyhow::bail!(
            "{} holds no vireod state: run `vireod init --data-dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let region = Db::open(&dir.join("state.db"))?
        .setting("region")?
        .unwrap_or_else(|| "vireo-local-1".into());
    let abs = std::path::absolute(dir)?;
    let import_dirs = if import_dirs.is_empty() {
        // Made here too for data directories created before there was one.
        let d = Config::default_import_dir(&abs);
        std::fs::create_dir_all(&d)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
        vec![d]
    } else {
        import_dirs
    };
    let import_dirs = vireo_control::import::resolve_dirs(&import_dirs)
        .map_err(|e| anyhow::anyhow!("--import-dir: {e}"))?;
    let vmm = find_vmm(vmm)?;
    let hosts = vireo_control::hosts::plan(&abs, migration_hosts)?;
    vireo_control::hosts::ensure(&abs, &hosts)?;
    let cfg = Config {
        public_cidr,
        ..config(
            dir,
            Some(vmm),
            capacity,
            shutdown_timeout,
            &region,
            hosts,
            import_dirs,
        )?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    // The instance metadata service: a listener in each VPC namespace the data plane makes.
    let imds = vireo_control::imds::Registry::new(rt.handle().clone(), Default::default());
    let plane: vireo_control::service::network::Plane = if network {
        let uplink = uplink_netns.zip(public_cidr).map(|(netns, public_cidr)| {
            vireo_control::service::dataplane::Uplink { netns, public_cidr }
        });
        let p =
            vireo_control::service::dataplane::LinuxPlane::new(&abs, cfg.hosts.clone(), uplink)?;
        p.set_metadata_service(imds.clone());
        p
    } else {
        std::sync::Arc::new(vireo_control::service::network::NoNetworkPlane)
    };
    rt.block_on(async move {
        let svc = Service::open_with_plane(cfg, plane.clone())?;
        let token_key = svc
            .metadata_token_key()
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        imds.serve(std::sync::Arc::new(svc.clone()), token_key);
        // Adoption: every VPC's data plane is made what the database says (idempotently: a
        // namespace deleted while vireod was down is made again), and what the database no
        // longer has is removed.
        svc.adopt_network()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        svc.recover().await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
        tracing::info!(
            "vireod serving the EC2 API on http://{} (capacity {} vCPUs, {} MiB)",
            listener.local_addr()?,
            svc.config().capacity.vcpus,
            svc.config().capacity.memory_mib
        );
        tokio::select! {
            r = vireo_control::api::serve_with(svc, listener, metrics) => r?,
            _ = tokio::signal::ctrl_c() => tracing::info!("vireod stopping; instances keep running"),
        }
        Ok(())
    })
}
