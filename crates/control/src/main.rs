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
        Cmd::RemoveHosts { data_dir } => {
            vireo_control::hosts::remove(&data_dir).map_err(Into::into)
        }
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
        } => {
            if !(cpu_overcommit > 0.0 && memory_overcommit > 0.0) {
                Err(anyhow::anyhow!("overcommit ratios must be positive"))
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

fn init(dir: &Path, images: &[PathBuf], region: &str) -> anyhow::Result<()> {
    if dir.join("state.db").exists() {
        anyhow::bail!(
            "{} already holds vireod state; use another --data-dir",
            dir.display()
        );
    }
    // Load every manifest first: a bad one must not leave a half-initialised directory.
    let manifests = images
        .iter()
        .map(|p| {
            let abs = std::path::absolute(p)?;
            Ok(Manifest::load(&abs)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let result = (|| -> anyhow::Result<()> {
        let db = Db::open(&dir.join("state.db"))?;
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
        drop(db);
        write_private(
            &dir.join("credentials"),
            &format!("[vireo]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
        )?;
        write_private(
            &dir.join("config"),
            &format!("[profile vireo]\nregion = {region}\n"),
        )?;
        println!("vireod: state created in {}", dir.display());
        println!("access key id:     {key_id}");
        println!(
            "secret access key: {secret}   (shown once; also in {}/credentials)",
            dir.display()
        );
        println!(
            "use it: export AWS_SHARED_CREDENTIALS_FILE={d}/credentials AWS_CONFIG_FILE={d}/config AWS_PROFILE=vireo",
            d = dir.display()
        );
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
            for m in manifests {
                let name = m.name.clone().ok_or_else(|| {
                    anyhow::anyhow!("an image manifest given to init needs a \"name\"")
                })?;
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
                println!("image {id}: {name}");
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // Nothing half-created stays behind.
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
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
    } = opts;
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
    let cfg = config(
        dir,
        Some(vmm),
        capacity,
        shutdown_timeout,
        &region,
        hosts,
        import_dirs,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let svc = Service::open(cfg)?;
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
