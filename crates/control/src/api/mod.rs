//! The EC2 Query API over HTTP: authenticates each request (SigV4 against vireod's keys), reads
//! its parameters, calls the service and writes EC2's XML. Nothing here decides what an action
//! does; it only translates between EC2's wire shapes and the service.
//!
//! This module serves HTTP, verifies signatures and dispatches: each action is one call into the
//! module of its resource ([`instances`], [`images`], [`tags`], [`regions`], [`instance_types`],
//! [`migration`], [`key_pairs`], [`metadata_options`]; VPC networking: [`vpcs`], [`subnets`], [`security_groups`],
//! [`sg_modify`], [`network_interfaces`], [`internet_gateways`], [`route_tables`],
//! [`addresses`]); the parameter rules every action shares are in [`params`] and, for the
//! network resources, [`netparams`].

mod addresses;
mod images;
mod instance_types;
mod instances;
mod internet_gateways;
mod key_pairs;
mod metadata_options;
mod metrics;
mod migration;
mod netparams;
mod network_interfaces;
mod params;
mod regions;
mod route_tables;
mod security_groups;
mod sg_modify;
mod subnets;
mod tags;
mod vpcs;

use std::net::SocketAddr;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use vireo_ec2_api::ids;
use vireo_ec2_api::query::{Limits, Params};
use vireo_ec2_api::sigv4::{self, RequestParts};
use vireo_ec2_api::xml::Response;
use vireo_ec2_api::Ec2Error;

use crate::error::ApiError;
use crate::service::Service;

/// The API version vireod speaks (the one the AWS SDKs and CLI send).
pub const API_VERSION: &str = "2016-11-15";

/// Serves the API on `listener` until the process ends, with `GET /metrics`.
pub async fn serve(svc: Service, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_with(svc, listener, true).await
}

/// Serves the API on `listener` until the process ends, with the web console under `/console`;
/// `metrics` adds the unauthenticated, read-only `GET /metrics` (Prometheus scrapers cannot
/// sign requests with SigV4).
pub async fn serve_with(
    svc: Service,
    listener: tokio::net::TcpListener,
    metrics: bool,
) -> std::io::Result<()> {
    let mut app = axum::Router::new();
    if metrics {
        app = app.route("/metrics", axum::routing::get(metrics::handler));
    }
    // The web console (docs/console.md): its pages and its JSON API under /console.
    let app = app
        .merge(crate::console::router(
            svc.clone(),
            crate::console::ConsoleConfig::default(),
        ))
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

/// EC2's tag rules (key and value lengths, at most 50, no `aws:` prefix), for the web console's
/// tag editing: the same rules CreateTags applies.
pub(crate) fn validate_tags(tags: &[crate::model::Tag]) -> Result<(), Ec2Error> {
    params::validate_tags(tags)
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
    let p = &p;
    let mut response = Response::new(&action, request_id);
    let r = &mut response;
    match action.as_str() {
        "DescribeInstanceTypes" => instance_types::describe(p, r)?,
        "RegisterImage" => images::register(svc, p, r)?,
        "DescribeImages" => images::describe(svc, p, r)?,
        "DeregisterImage" => images::deregister(svc, p, r)?,
        "CreateImage" => images::create(svc, p, r).await?,
        "RunInstances" => instances::run(svc, p, r).await?,
        "DescribeInstances" => instances::describe(svc, p, r)?,
        "StartInstances" => instances::start(svc, p, r).await?,
        "StopInstances" => instances::stop(svc, p, r).await?,
        "RebootInstances" => instances::reboot(svc, p, r).await?,
        "TerminateInstances" => instances::terminate(svc, p, r).await?,
        "GetConsoleOutput" => instances::console_output(svc, p, r)?,
        "DescribeInstanceStatus" => instances::describe_status(svc, p, r)?,
        "ModifyInstanceAttribute" => instances::modify_attribute(svc, p, r).await?,
        "DescribeInstanceAttribute" => instances::describe_attribute(svc, p, r)?,
        "ModifyInstanceMetadataOptions" => metadata_options::modify(svc, p, r).await?,
        "CreateKeyPair" => key_pairs::create(svc, p, r).await?,
        "ImportKeyPair" => key_pairs::import(svc, p, r)?,
        "DescribeKeyPairs" => key_pairs::describe(svc, p, r)?,
        "DeleteKeyPair" => key_pairs::delete(svc, p, r)?,
        "CreateTags" => tags::create(svc, p, r)?,
        "DeleteTags" => tags::delete(svc, p, r)?,
        "DescribeTags" => tags::describe(svc, p, r)?,
        "CreateVpc" => vpcs::create(svc, p, r)?,
        "DescribeVpcs" => vpcs::describe(svc, p, r)?,
        "DeleteVpc" => vpcs::delete(svc, p, r)?,
        "DescribeVpcAttribute" => vpcs::describe_attribute(svc, p, r)?,
        "ModifyVpcAttribute" => vpcs::modify_attribute(svc, p, r)?,
        "DescribeNetworkAcls" => vpcs::describe_network_acls(svc, p, r)?,
        "CreateSubnet" => subnets::create(svc, p, r)?,
        "DescribeSubnets" => subnets::describe(svc, p, r)?,
        "DeleteSubnet" => subnets::delete(svc, p, r)?,
        "ModifySubnetAttribute" => subnets::modify_attribute(svc, p, r)?,
        "CreateSecurityGroup" => security_groups::create(svc, p, r)?,
        "DeleteSecurityGroup" => security_groups::delete(svc, p, r).await?,
        "DescribeSecurityGroups" => security_groups::describe(svc, p, r)?,
        "AuthorizeSecurityGroupIngress" => security_groups::authorize(svc, p, r, false).await?,
        "AuthorizeSecurityGroupEgress" => security_groups::authorize(svc, p, r, true).await?,
        "RevokeSecurityGroupIngress" => security_groups::revoke(svc, p, r, false).await?,
        "RevokeSecurityGroupEgress" => security_groups::revoke(svc, p, r, true).await?,
        "DescribeSecurityGroupRules" => security_groups::describe_rules(svc, p, r)?,
        "ModifySecurityGroupRules" => sg_modify::modify_rules(svc, p, r).await?,
        "UpdateSecurityGroupRuleDescriptionsIngress" => {
            sg_modify::update_descriptions(svc, p, r, false)?
        }
        "UpdateSecurityGroupRuleDescriptionsEgress" => {
            sg_modify::update_descriptions(svc, p, r, true)?
        }
        "DescribeNetworkInterfaces" => network_interfaces::describe(svc, p, r)?,
        "CreateInternetGateway" => internet_gateways::create(svc, p, r)?,
        "AttachInternetGateway" => internet_gateways::attach(svc, p, r)?,
        "DetachInternetGateway" => internet_gateways::detach(svc, p, r)?,
        "DeleteInternetGateway" => internet_gateways::delete(svc, p, r)?,
        "DescribeInternetGateways" => internet_gateways::describe(svc, p, r)?,
        "CreateRouteTable" => route_tables::create(svc, p, r)?,
        "DeleteRouteTable" => route_tables::delete(svc, p, r)?,
        "CreateRoute" => route_tables::create_route(svc, p, r)?,
        "DeleteRoute" => route_tables::delete_route(svc, p, r)?,
        "ReplaceRoute" => route_tables::replace_route(svc, p, r)?,
        "AssociateRouteTable" => route_tables::associate(svc, p, r)?,
        "DisassociateRouteTable" => route_tables::disassociate(svc, p, r)?,
        "ReplaceRouteTableAssociation" => route_tables::replace_association(svc, p, r)?,
        "DescribeRouteTables" => route_tables::describe(svc, p, r)?,
        "AllocateAddress" => addresses::allocate(svc, p, r)?,
        "AssociateAddress" => addresses::associate(svc, p, r)?,
        "DisassociateAddress" => addresses::disassociate(svc, p, r)?,
        "ReleaseAddress" => addresses::release(svc, p, r)?,
        "DescribeAddresses" => addresses::describe(svc, p, r)?,
        // vireo's own action (`vireo migrate`): live-migrate a running instance to another host.
        "MigrateInstance" => migration::migrate_instance(svc, p, r).await?,
        "DescribeRegions" => regions::describe_regions(svc, r),
        "DescribeAvailabilityZones" => regions::describe_availability_zones(svc, r),
        other => return Err(Ec2Error::invalid_action(other)),
    }
    Ok(response.finish())
}
