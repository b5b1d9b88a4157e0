//! The EC2 Query API over HTTP: authenticates each request (SigV4 against vireod's keys), reads
//! its parameters, calls the service and writes EC2's XML. Nothing here decides what an action
//! does; it only translates between EC2's wire shapes and the service.

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use base64::Engine;
use vireo_ec2_api::ids::{self, IdKind};
use vireo_ec2_api::query::{Limits, Params};
use vireo_ec2_api::sigv4::{self, RequestParts};
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use crate::error::ApiError;
use crate::model::{Image, Instance, InstanceState};
use crate::service::{self, RegisterRequest, RunRequest, Service, StateChange};

/// The API version vireod speaks (the one the AWS SDKs and CLI send).
pub const API_VERSION: &str = "2016-11-15";

/// Serves the API on `listener` until the process ends, with `GET /metrics`.
pub async fn serve(svc: Service, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_with(svc, listener, true).await
}

/// Serves the API on `listener` until the process ends; `metrics` adds the unauthenticated,
/// read-only `GET /metrics` (Prometheus scrapers cannot sign requests with SigV4).
pub async fn serve_with(
    svc: Service,
    listener: tokio::net::TcpListener,
    metrics: bool,
) -> std::io::Result<()> {
    let mut app = axum::Router::new();
    if metrics {
        app = app.route("/metrics", axum::routing::get(metrics_handler));
    }
    let app = app
        .fallback(handle)
        .with_state(svc)
        .layer(axum::extract::DefaultBodyLimit::max(
            Limits::default().max_body_bytes,
        ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

impl From<ApiError> for Ec2Error {
    fn from(e: ApiError) -> Self {
        let status = e.http_status();
        Ec2Error::new(e.code, e.message, status)
    }
}

fn xml_response(status: u16, body: String) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "text/xml;charset=UTF-8")], body).into_response()
}

async fn metrics_handler(State(svc): State<Service>) -> HttpResponse {
    match crate::metrics::collect(&svc).await {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("vireod cannot read its state: {e}\n"),
        )
            .into_response(),
    }
}

async fn handle(
    State(svc): State<Service>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let request_id = ids::request_id();
    match dispatch(&svc, &method, &uri, &headers, &body, &request_id).await {
        Ok(xml) => xml_response(200, xml),
        Err(e) => {
            tracing::info!("{} {}: {}", method, e.code, e.message);
            xml_response(e.http_status, e.to_xml(&request_id))
        }
    }
}

async fn dispatch(
    svc: &Service,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> Result<String, Ec2Error> {
    let header_list: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query = uri.query().unwrap_or("");
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path(),
        query,
        headers: &header_list,
        body,
    };
    sigv4::verify(&parts, |key| svc.secret_for(key), SystemTime::now())?;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let p = Params::parse(
        method.as_str(),
        content_type,
        query,
        body,
        &Limits::default(),
    )?;
    let action = p.action()?.to_string();
    if let Some(v) = p.version() {
        if v != API_VERSION {
            return Err(Ec2Error::new(
                "InvalidParameterValue",
                format!(
                    "Version {v} is not supported: vireod speaks EC2 API version {API_VERSION}"
                ),
                400,
            ));
        }
    }
    let mut r = Response::new(&action, request_id);
    match action.as_str() {
        "DescribeInstanceTypes" => describe_instance_types(&p, &mut r)?,
        "RegisterImage" => register_image(svc, &p, &mut r)?,
        "DescribeImages" => describe_images(svc, &p, &mut r)?,
        "DeregisterImage" => deregister_image(svc, &p, &mut r)?,
        "CreateImage" => create_image(svc, &p, &mut r).await?,
        "RunInstances" => run_instances(svc, &p, &mut r).await?,
        "DescribeInstances" => describe_instances(svc, &p, &mut r)?,
        "StartInstances" => {
            allow(&p, &["InstanceId", "AdditionalInfo", "DryRun"])?;
            dry_run(&p)?;
            let changes = svc.start_instances(&instance_ids(&p, true)?).await?;
            state_changes(&mut r, "instancesSet", &changes);
        }
        "StopInstances" => {
            allow(&p, &["InstanceId", "Force", "Hibernate", "DryRun"])?;
            dry_run(&p)?;
            let ids = instance_ids(&p, true)?;
            let hibernate = p.bool("Hibernate")?.unwrap_or(false);
            let force = p.bool("Force")?.unwrap_or(false);
            if hibernate && force {
                return Err(Ec2Error::invalid_parameter_combination(
                    "Hibernate and Force cannot be combined",
                ));
            }
            let changes = svc.stop_instances(&ids, force, hibernate).await?;
            state_changes(&mut r, "instancesSet", &changes);
        }
        "RebootInstances" => {
            allow(&p, &["InstanceId", "DryRun"])?;
            dry_run(&p)?;
            svc.reboot_instances(&instance_ids(&p, true)?).await?;
            r.bool_elem("return", true);
        }
        "TerminateInstances" => {
            allow(&p, &["InstanceId", "DryRun"])?;
            dry_run(&p)?;
            let changes = svc.terminate_instances(&instance_ids(&p, true)?).await?;
            state_changes(&mut r, "instancesSet", &changes);
        }
        "GetConsoleOutput" => {
            allow(&p, &["InstanceId", "Latest", "DryRun"])?;
            let id = one_instance_id(&p)?;
            let (bytes, stamp) = svc.console_output(&id)?;
            r.elem("instanceId", &id).elem("timestamp", stamp).elem(
                "output",
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        "DescribeInstanceStatus" => describe_instance_status(svc, &p, &mut r)?,
        "ModifyInstanceAttribute" => modify_instance_attribute(svc, &p, &mut r).await?,
        "DescribeInstanceAttribute" => describe_instance_attribute(svc, &p, &mut r)?,
        "CreateTags" => {
            allow(&p, &["ResourceId", "Tag", "DryRun"])?;
            let resources = resource_ids(&p)?;
            let tags = p.tags("Tag")?;
            if tags.is_empty() {
                return Err(Ec2Error::missing_parameter("Tag"));
            }
            validate_tags(&tags)?;
            svc.create_tags(&resources, &tags)?;
            r.bool_elem("return", true);
        }
        "DeleteTags" => {
            allow(&p, &["ResourceId", "Tag", "DryRun"])?;
            let resources = resource_ids(&p)?;
            let tags = p
                .structs("Tag")?
                .into_iter()
                .map(|t| {
                    Ok((
                        t.required("Key")?.to_string(),
                        t.get("Value").map(str::to_string),
                    ))
                })
                .collect::<Result<Vec<_>, Ec2Error>>()?;
            svc.delete_tags(&resources, &tags)?;
            r.bool_elem("return", true);
        }
        "DescribeTags" => {
            allow(&p, &["Filter", "MaxResults", "NextToken", "DryRun"])?;
            let tags = svc.describe_tags(&p.filters()?)?;
            r.list("tagSet", tags, |r, (id, ty, k, v)| {
                r.elem("resourceId", id)
                    .elem("resourceType", ty)
                    .elem("key", k)
                    .elem("value", v);
            });
        }
        // vireo's own action (`vireo migrate`): live-migrate a running instance to another host.
        "MigrateInstance" => {
            allow(&p, &["InstanceId", "TargetHost", "DowntimeMs"])?;
            let id = one_instance_id(&p)?;
            let target = p.int("TargetHost", 0..=8)?.map(|t| t as u32);
            let downtime = p.int("DowntimeMs", 1..=60_000)?.unwrap_or(50) as u64;
            let (from, to, report) = svc.migrate_instance(&id, target, downtime).await?;
            r.elem("instanceId", &id)
                .elem("sourceHost", from)
                .elem("targetHost", to)
                .opt_elem(
                    "downtimeMs",
                    report.get("downtime_ms").and_then(|v| v.as_u64()),
                )
                .opt_elem("totalMs", report.get("total_ms").and_then(|v| v.as_u64()))
                .opt_elem("rounds", report.get("rounds").and_then(|v| v.as_u64()));
        }
        "DescribeRegions" => {
            let region = svc.config().region.clone();
            r.list("regionInfo", [region], |r, name| {
                r.elem("regionName", name)
                    .elem("regionEndpoint", "localhost");
            });
        }
        "DescribeAvailabilityZones" => {
            let cfg = svc.config();
            r.list(
                "availabilityZoneInfo",
                [cfg.availability_zone()],
                |r, zone| {
                    r.elem("zoneName", zone)
                        .elem("zoneState", "available")
                        .elem("regionName", &cfg.region);
                },
            );
        }
        other => return Err(Ec2Error::invalid_action(other)),
    }
    Ok(r.finish())
}

/// Rejects parameters the action does not take (EC2's UnknownParameter), so that a typo is an
/// error rather than silently ignored. `allowed` are top-level names; `Name.…` is allowed under
/// each.
fn allow(p: &Params, allowed: &[&str]) -> Result<(), Ec2Error> {
    for (name, _) in p.iter() {
        if matches!(name, "Action" | "Version") {
            continue;
        }
        let top = name.split('.').next().unwrap_or(name);
        if !allowed.contains(&top) {
            return Err(Ec2Error::new(
                "UnknownParameter",
                format!("The parameter {name} is not recognized"),
                400,
            ));
        }
    }
    Ok(())
}

/// DryRun=true: the caller has permission (vireod has no IAM), so EC2's answer is DryRunOperation.
fn dry_run(p: &Params) -> Result<(), Ec2Error> {
    if p.bool("DryRun")?.unwrap_or(false) {
        return Err(Ec2Error::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
            412,
        ));
    }
    Ok(())
}

fn instance_ids(p: &Params, required: bool) -> Result<Vec<String>, Ec2Error> {
    let ids: Vec<String> = p
        .list("InstanceId")?
        .into_iter()
        .map(str::to_string)
        .collect();
    if required && ids.is_empty() {
        return Err(Ec2Error::missing_parameter("InstanceId"));
    }
    for id in &ids {
        ids::validate(IdKind::Instance, id)?;
    }
    Ok(ids)
}

fn one_instance_id(p: &Params) -> Result<String, Ec2Error> {
    let id = p.required("InstanceId")?.to_string();
    ids::validate(IdKind::Instance, &id)?;
    Ok(id)
}

fn resource_ids(p: &Params) -> Result<Vec<String>, Ec2Error> {
    let ids: Vec<String> = p
        .list("ResourceId")?
        .into_iter()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(Ec2Error::missing_parameter("ResourceId"));
    }
    for id in &ids {
        if id.starts_with("i-") {
            ids::validate(IdKind::Instance, id)?;
        } else if id.starts_with("ami-") {
            ids::validate(IdKind::Image, id)?;
        } else {
            return Err(Ec2Error::invalid_id(id));
        }
    }
    Ok(ids)
}

/// EC2's tag rules: keys 1-128 characters, values up to 256, at most 50 tags, no `aws:` prefix.
fn validate_tags(tags: &[(String, String)]) -> Result<(), Ec2Error> {
    if tags.len() > 50 {
        return Err(Ec2Error::new(
            "TagLimitExceeded",
            "A resource can have at most 50 tags",
            400,
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Tag key '{k}' must be 1 to 128 characters"
            )));
        }
        if v.chars().count() > 256 {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The value of tag '{k}' is longer than 256 characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Tag keys starting with 'aws:' are reserved: '{k}'"
            )));
        }
    }
    Ok(())
}

/// The tags of `TagSpecification.N` members for `resource_type`.
fn tag_specifications(p: &Params, resource_type: &str) -> Result<Vec<(String, String)>, Ec2Error> {
    let mut tags = Vec::new();
    for spec in p.structs("TagSpecification")? {
        let ty = spec.required("ResourceType")?;
        if ty != resource_type {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "'{ty}' is not a valid taggable resource type for this operation: use '{resource_type}'"
            )));
        }
        tags.extend(spec.tags("Tag")?);
    }
    validate_tags(&tags)?;
    Ok(tags)
}

fn state_changes(r: &mut Response, name: &str, changes: &[StateChange]) {
    r.list(name, changes, |r, c| {
        r.elem("instanceId", &c.instance_id);
        state(r, "currentState", c.current);
        state(r, "previousState", c.previous);
    });
}

fn state(r: &mut Response, name: &str, s: InstanceState) {
    r.nest(name, |r| {
        r.elem("code", s.code()).elem("name", s.name());
    });
}

// --- instance types -------------------------------------------------------------------------------

fn describe_instance_types(p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceType",
            "Filter",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let names: Vec<String> = p
        .list("InstanceType")?
        .into_iter()
        .map(str::to_string)
        .collect();
    let filters = p.filters()?;
    for f in &filters {
        if !matches!(
            f.name.as_str(),
            "instance-type" | "vcpu-info.default-vcpus" | "memory-info.size-in-mib"
        ) {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "The filter '{}' is invalid",
                f.name
            )));
        }
    }
    use crate::filter::FilterMatch;
    let types = service::instance_types(&names)?;
    let types = types.into_iter().filter(|t| {
        filters.iter().all(|f| match f.name.as_str() {
            "instance-type" => f.matches_any([t.name]),
            "vcpu-info.default-vcpus" => f.matches_any([t.vcpus.to_string().as_str()]),
            _ => f.matches_any([t.memory_mib.to_string().as_str()]),
        })
    });
    r.list("instanceTypeSet", types, |r, t| {
        r.elem("instanceType", t.name)
            .bool_elem("currentGeneration", true)
            .bool_elem("freeTierEligible", false)
            .nest("supportedUsageClasses", |r| {
                r.elem("item", "on-demand");
            })
            .nest("supportedRootDeviceTypes", |r| {
                r.elem("item", "ebs");
            })
            .nest("supportedVirtualizationTypes", |r| {
                r.elem("item", "hvm");
            })
            .bool_elem("bareMetal", false)
            .elem("hypervisor", "kvm")
            .nest("processorInfo", |r| {
                r.nest("supportedArchitectures", |r| {
                    r.elem("item", "x86_64");
                });
            })
            .nest("vCpuInfo", |r| {
                r.elem("defaultVCpus", t.vcpus)
                    .elem("defaultCores", t.cores())
                    .elem("defaultThreadsPerCore", t.threads_per_core());
            })
            .nest("memoryInfo", |r| {
                r.elem("sizeInMiB", t.memory_mib);
            })
            .bool_elem("instanceStorageSupported", false)
            .bool_elem("burstablePerformanceSupported", t.burstable)
            .bool_elem("hibernationSupported", false)
            .nest("supportedBootModes", |r| {
                r.elem("item", "legacy-bios");
            });
    });
    Ok(())
}

// --- images ---------------------------------------------------------------------------------------

fn register_image(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "Name",
            "Description",
            "Architecture",
            "BootMode",
            "ImageLocation",
            "KernelId",
            "RamdiskId",
            "RootDeviceName",
            "VirtualizationType",
            "TagSpecification",
            "DryRun",
            // vireo's own parameters (the `vireo` CLI sends them; EC2's model has no place for them)
            "RootDisk",
            "KernelCommandLine",
        ],
    )?;
    dry_run(p)?;
    let name = p.required("Name")?.to_string();
    // Only files in the import directories: vireod copies them as root into an image, and
    // the image's guests can read them.
    let importable = |what: &'static str, path: &Path| {
        crate::import::importable(&svc.config().import_dirs, what, path)
            .map_err(|e| Ec2Error::invalid_parameter_value(e.to_string()))
    };
    let mut req = RegisterRequest {
        name,
        description: p.get("Description").unwrap_or("").to_string(),
        architecture: p.get("Architecture").unwrap_or("x86_64").to_string(),
        boot_mode: p.get("BootMode").unwrap_or("legacy-bios").to_string(),
        tags: tag_specifications(p, "image")?,
        ..Default::default()
    };
    if let Some(vt) = p.get("VirtualizationType") {
        if vt != "hvm" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "VirtualizationType '{vt}' is not supported: use hvm"
            )));
        }
    }
    // An image is described either by a manifest (ImageLocation naming a JSON file on this host,
    // as EC2's ImageLocation once named an image manifest) or by its parts.
    if let Some(loc) = p.get("ImageLocation") {
        for clash in ["KernelId", "RamdiskId", "RootDisk", "KernelCommandLine"] {
            if p.get(clash).is_some() {
                return Err(Ec2Error::invalid_parameter_combination(format!(
                    "ImageLocation (an image manifest) cannot be combined with {clash}"
                )));
            }
        }
        let manifest = importable("image manifest", Path::new(loc))?;
        let m = crate::manifest::Manifest::load(&manifest)
            .map_err(|e| Ec2Error::invalid_parameter_value(e.to_string()))?;
        req.kernel = importable("kernel", &m.kernel)?;
        req.initrd = m.initrd.map(|p| importable("initrd", &p)).transpose()?;
        req.root_disk = m
            .root_disk
            .map(|p| importable("root disk", &p))
            .transpose()?;
        req.cmdline = m.cmdline;
    } else {
        req.kernel = importable("kernel", Path::new(p.required("KernelId")?))?;
        req.initrd = p
            .get("RamdiskId")
            .map(|p| importable("initrd", Path::new(p)))
            .transpose()?;
        req.root_disk = p
            .get("RootDisk")
            .map(|p| importable("root disk", Path::new(p)))
            .transpose()?;
        req.cmdline = p.get("KernelCommandLine").unwrap_or("").to_string();
    }
    if let Some(dev) = p.get("RootDeviceName") {
        if dev != "/dev/vda" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "RootDeviceName '{dev}' is not supported: the root disk is /dev/vda"
            )));
        }
    }
    let id = svc.register_image(req)?;
    r.elem("imageId", id);
    Ok(())
}

fn describe_images(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "ImageId",
            "Owner",
            "ExecutableBy",
            "Filter",
            "IncludeDeprecated",
            "IncludeDisabled",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let ids: Vec<String> = p.list("ImageId")?.into_iter().map(str::to_string).collect();
    for id in &ids {
        ids::validate(IdKind::Image, id)?;
    }
    let owners: Vec<String> = p.list("Owner")?.into_iter().map(str::to_string).collect();
    let images = svc.describe_images(&ids, &owners, &p.filters()?)?;
    r.list("imagesSet", &images, image_xml);
    Ok(())
}

fn image_xml(r: &mut Response, i: &Image) {
    r.elem("imageId", &i.image_id)
        .elem("imageLocation", format!("{}/{}", i.owner_id, i.name))
        .elem("imageState", &i.state)
        .elem("imageOwnerId", &i.owner_id)
        .elem("creationDate", &i.creation_date)
        .bool_elem("isPublic", false)
        .elem("architecture", &i.architecture)
        .elem("imageType", "machine")
        .elem("name", &i.name)
        .elem("description", &i.description)
        .elem("rootDeviceType", "ebs")
        .elem("rootDeviceName", "/dev/vda")
        .elem("virtualizationType", "hvm")
        .elem("hypervisor", "kvm")
        .elem("bootMode", &i.boot_mode)
        .opt_elem("sourceInstanceId", i.source_instance_id.as_deref());
    r.list("blockDeviceMapping", i.root_disk.iter(), |r, disk| {
        let size_gib = std::fs::metadata(disk)
            .map(|m| m.len().div_ceil(1 << 30))
            .unwrap_or(1);
        r.elem("deviceName", "/dev/vda").nest("ebs", |r| {
            r.elem("volumeSize", size_gib)
                .bool_elem("deleteOnTermination", true)
                .elem("volumeType", "standard");
        });
    });
    r.tag_set(i.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

fn deregister_image(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(p, &["ImageId", "DeleteAssociatedSnapshots", "DryRun"])?;
    dry_run(p)?;
    let id = p.required("ImageId")?;
    ids::validate(IdKind::Image, id)?;
    svc.deregister_image(id)?;
    r.bool_elem("return", true);
    Ok(())
}

async fn create_image(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceId",
            "Name",
            "Description",
            "NoReboot",
            "TagSpecification",
            "BlockDeviceMapping",
            "DryRun",
        ],
    )?;
    dry_run(p)?;
    let id = one_instance_id(p)?;
    let name = p.required("Name")?.to_string();
    let tags = tag_specifications(p, "image")?;
    let image = svc
        .create_image(
            &id,
            &name,
            p.get("Description").unwrap_or(""),
            p.bool("NoReboot")?.unwrap_or(false),
            tags,
        )
        .await?;
    r.elem("imageId", image);
    Ok(())
}

// --- instances ------------------------------------------------------------------------------------

async fn run_instances(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "ImageId",
            "InstanceType",
            "MinCount",
            "MaxCount",
            "UserData",
            "TagSpecification",
            "ClientToken",
            "DryRun",
            "InstanceInitiatedShutdownBehavior",
        ],
    )?;
    dry_run(p)?;
    let image_id = p.required("ImageId")?.to_string();
    ids::validate(IdKind::Image, &image_id)?;
    let min = p
        .int("MinCount", 1..=1000)?
        .ok_or_else(|| Ec2Error::missing_parameter("MinCount"))?;
    let max = p
        .int("MaxCount", 1..=1000)?
        .ok_or_else(|| Ec2Error::missing_parameter("MaxCount"))?;
    let user_data = match p.get("UserData") {
        Some(b64) => {
            // The SDKs send user data base64-encoded; 16 KiB is EC2's limit on the decoded bytes.
            if b64.len() > service::MAX_USER_DATA.div_ceil(3) * 4 + 4 {
                return Err(ApiError::invalid_value(format!(
                    "User data is limited to {} bytes",
                    service::MAX_USER_DATA
                ))
                .into());
            }
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| {
                    Ec2Error::invalid_parameter_value("Invalid BASE64 encoding of user data")
                })?
        }
        None => Vec::new(),
    };
    if let Some(b) = p.get("InstanceInitiatedShutdownBehavior") {
        if b != "stop" {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "InstanceInitiatedShutdownBehavior '{b}' is not supported: a guest that powers off is stopped"
            )));
        }
    }
    let client_token = p.get("ClientToken").map(str::to_string);
    if let Some(t) = &client_token {
        if t.len() > 64 || !t.is_ascii() {
            return Err(Ec2Error::invalid_parameter_value(
                "ClientToken must be at most 64 ASCII characters",
            ));
        }
    }
    let req = RunRequest {
        image_id,
        instance_type: p.get("InstanceType").unwrap_or("t3.micro").to_string(),
        min_count: min as u32,
        max_count: max as u32,
        user_data,
        tags: tag_specifications(p, "instance")?,
        client_token,
    };
    let instances = svc.run_instances(req).await?;
    let first = instances.first();
    r.elem(
        "reservationId",
        first.map(|i| i.reservation_id.as_str()).unwrap_or(""),
    )
    .elem("ownerId", svc.owner_id())
    .list("groupSet", std::iter::empty::<()>(), |_, _| {});
    let cfg = svc.config();
    r.list("instancesSet", &instances, |r, i| {
        instance_xml(r, i, &cfg.availability_zone())
    });
    Ok(())
}

fn describe_instances(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &["InstanceId", "Filter", "MaxResults", "NextToken", "DryRun"],
    )?;
    let ids = instance_ids(p, false)?;
    let max = p.int("MaxResults", 5..=1000)?;
    if max.is_some() && !ids.is_empty() {
        return Err(Ec2Error::invalid_parameter_combination(
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    let (page, next) = svc.describe_instances(
        &ids,
        &p.filters()?,
        max.map(|m| m as u32),
        p.get("NextToken"),
    )?;
    let zone = svc.config().availability_zone();
    r.list(
        "reservationSet",
        service::by_reservation(page),
        |r, (rid, owner, list)| {
            r.elem("reservationId", rid)
                .elem("ownerId", owner)
                .list("groupSet", std::iter::empty::<()>(), |_, _| {})
                .list("instancesSet", &list, |r, i| instance_xml(r, i, &zone));
        },
    );
    r.opt_elem("nextToken", next);
    Ok(())
}

fn instance_xml(r: &mut Response, i: &Instance, zone: &str) {
    let ty = crate::types::lookup(&i.instance_type);
    r.elem("instanceId", &i.instance_id)
        .elem("imageId", &i.image_id);
    state(r, "instanceState", i.state);
    r.elem("privateDnsName", "")
        .elem("dnsName", "")
        .elem(
            "reason",
            i.state_reason
                .as_ref()
                .map(|s| s.message.as_str())
                .unwrap_or(""),
        )
        .elem("amiLaunchIndex", i.launch_index)
        .elem("instanceType", &i.instance_type)
        .elem("launchTime", &i.launch_time)
        .nest("placement", |r| {
            r.elem("availabilityZone", zone).elem("tenancy", "default");
        })
        .nest("monitoring", |r| {
            r.elem("state", "disabled");
        })
        .elem("architecture", "x86_64")
        .elem("rootDeviceType", "ebs")
        .elem("rootDeviceName", "/dev/vda")
        .elem("virtualizationType", "hvm")
        .elem("hypervisor", "kvm")
        .elem("bootMode", "legacy-bios")
        .opt_elem("clientToken", i.client_token.as_deref());
    if let Some(s) = &i.state_reason {
        r.nest("stateReason", |r| {
            r.elem("code", &s.code).elem("message", &s.message);
        });
    }
    r.nest("cpuOptions", |r| {
        let (cores, threads) = ty
            .map(|t| (t.cores(), t.threads_per_core()))
            .unwrap_or((i.vcpus, 1));
        r.elem("coreCount", cores).elem("threadsPerCore", threads);
    });
    r.tag_set(i.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

fn describe_instance_status(svc: &Service, p: &Params, r: &mut Response) -> Result<(), Ec2Error> {
    allow(
        p,
        &[
            "InstanceId",
            "IncludeAllInstances",
            "Filter",
            "MaxResults",
            "NextToken",
            "DryRun",
        ],
    )?;
    let ids = instance_ids(p, false)?;
    let all = p.bool("IncludeAllInstances")?.unwrap_or(false);
    let max = p.int("MaxResults", 5..=1000)?;
    let (page, next) = svc.describe_instances(
        &ids,
        &p.filters()?,
        max.map(|m| m as u32),
        p.get("NextToken"),
    )?;
    let zone = svc.config().availability_zone();
    let shown = page
        .into_iter()
        .filter(|i| all || i.state == InstanceState::Running);
    r.list("instanceStatusSet", shown, |r, i| {
        let status = if i.state == InstanceState::Running {
            "ok"
        } else {
            "not-applicable"
        };
        r.elem("instanceId", &i.instance_id)
            .elem("availabilityZone", &zone);
        state(r, "instanceState", i.state);
        for name in ["systemStatus", "instanceStatus"] {
            r.nest(name, |r| {
                r.elem("status", status).list("details", [()], |r, _| {
                    r.elem("name", "reachability").elem(
                        "status",
                        if status == "ok" {
                            "passed"
                        } else {
                            "not-applicable"
                        },
                    );
                });
            });
        }
    });
    r.opt_elem("nextToken", next);
    Ok(())
}

async fn modify_instance_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(
        p,
        &["InstanceId", "InstanceType", "Attribute", "Value", "DryRun"],
    )?;
    dry_run(p)?;
    let id = one_instance_id(p)?;
    // The SDKs send InstanceType.Value=…; the older form is Attribute=instanceType&Value=….
    let new_type = match (
        p.get("InstanceType.Value"),
        p.get("Attribute"),
        p.get("Value"),
    ) {
        (Some(t), None, None) => t.to_string(),
        (None, Some("instanceType"), Some(t)) => t.to_string(),
        (None, Some(a), _) => {
            return Err(ApiError::new(
                "UnsupportedOperation",
                format!("Modifying the attribute '{a}' is not supported: only instanceType"),
            )
            .into())
        }
        _ => return Err(Ec2Error::missing_parameter("InstanceType.Value")),
    };
    svc.modify_instance_type(&id, &new_type).await?;
    r.bool_elem("return", true);
    Ok(())
}

fn describe_instance_attribute(
    svc: &Service,
    p: &Params,
    r: &mut Response,
) -> Result<(), Ec2Error> {
    allow(p, &["InstanceId", "Attribute", "DryRun"])?;
    let id = one_instance_id(p)?;
    let attr = p.required("Attribute")?;
    let (list, _) = svc.describe_instances(std::slice::from_ref(&id), &[], None, None)?;
    let inst = list
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::instance_not_found(&id))?;
    r.elem("instanceId", &id);
    match attr {
        "instanceType" => {
            r.nest("instanceType", |r| {
                r.elem("value", &inst.instance_type);
            });
        }
        "userData" => {
            let data = svc.user_data(&id)?;
            r.nest("userData", |r| {
                if !data.is_empty() {
                    r.elem("value", base64::engine::general_purpose::STANDARD.encode(&data));
                }
            });
        }
        other => {
            return Err(Ec2Error::invalid_parameter_value(format!(
                "Value ({other}) for parameter attribute is invalid: vireod reports instanceType and userData"
            )))
        }
    }
    Ok(())
}
