//! The console's JSON API (`/console/api/...`): one handler per page or action, each reading a
//! typed request, calling [`Service`] (the same operations the EC2 API calls, with their
//! validation and EC2 errors) and answering a typed view. Every handler takes [`Authed`], so it
//! runs only for a signed-in browser, and a change only with its CSRF token and Origin.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use vireo_ec2_api::ids::{self, IdKind};

use super::session::{json_body, Authed};
use super::{Console, ConsoleError};
use crate::db::network::NetState;
use crate::filter::Filter;
use crate::model::{Image, Instance, KeyPair, KeyType, Tag};
use crate::netmodel::RuleSource;
use crate::service::{DescribeQuery, InterfaceSpec, RunRequest, StateChange, TagToDelete};

type Answer<T> = Result<Json<T>, ConsoleError>;

/// A tag as the pages show it (as text).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagView {
    pub key: String,
    pub value: String,
}

fn tags(t: &[Tag]) -> Vec<TagView> {
    t.iter()
        .map(|t| TagView {
            key: t.key.clone(),
            value: t.value.clone(),
        })
        .collect()
}

fn name_tag(t: &[Tag]) -> Option<String> {
    t.iter().find(|t| t.key == "Name").map(|t| t.value.clone())
}

/// One row of the instance list.
#[derive(Debug, Serialize)]
pub struct InstanceSummary {
    pub instance_id: String,
    pub name: Option<String>,
    pub state: String,
    pub state_code: u32,
    pub state_reason: Option<String>,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub image_id: String,
    pub launch_time: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub key_name: Option<String>,
    pub tags: Vec<TagView>,
}

fn summary(net: &NetState, i: &Instance) -> InstanceSummary {
    let enis = net.interfaces_of(&i.instance_id);
    let primary = enis
        .iter()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0));
    InstanceSummary {
        instance_id: i.instance_id.clone(),
        name: name_tag(&i.tags),
        state: i.state.name().to_string(),
        state_code: i.state.code(),
        state_reason: i.state_reason.as_ref().map(|r| r.message.clone()),
        instance_type: i.instance_type.clone(),
        vcpus: i.vcpus,
        memory_mib: i.memory_mib,
        image_id: i.image_id.clone(),
        launch_time: i.launch_time.clone(),
        private_ip: primary.map(|e| e.private_ip.to_string()),
        public_ip: primary
            .and_then(|e| net.public_ip_of(&e.eni_id))
            .map(|a| a.public_ip.to_string()),
        key_name: i.key_name.clone(),
        tags: tags(&i.tags),
    }
}

/// The instance list's filters (`?state=running&instance_type=t3.micro&tag_key=env&tag_value=prod`),
/// each one of DescribeInstances' filters; EC2's wildcards `*` and `?` work in the values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFilters {
    pub state: Option<String>,
    pub instance_type: Option<String>,
    pub tag_key: Option<String>,
    pub tag_value: Option<String>,
}

impl InstanceFilters {
    /// The DescribeInstances filters these stand for.
    pub fn to_filters(&self) -> Vec<Filter> {
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let mut out = Vec::new();
        let mut add = |name: String, value: String| {
            out.push(Filter {
                name,
                values: vec![value],
            })
        };
        if let Some(s) = given(&self.state) {
            add("instance-state-name".into(), s);
        }
        if let Some(t) = given(&self.instance_type) {
            add("instance-type".into(), t);
        }
        match (given(&self.tag_key), given(&self.tag_value)) {
            (Some(k), Some(v)) => add(format!("tag:{k}"), v),
            (Some(k), None) => add("tag-key".into(), k),
            (None, Some(v)) => add("tag-value".into(), v),
            (None, None) => {}
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct InstanceList {
    pub instances: Vec<InstanceSummary>,
}

pub(super) async fn list_instances(
    State(c): State<Console>,
    _a: Authed,
    Query(f): Query<InstanceFilters>,
) -> Answer<InstanceList> {
    let (list, _) = c.svc.describe_instances(&[], &f.to_filters(), None, None)?;
    let net = c.svc.instance_networks()?;
    Ok(Json(InstanceList {
        instances: list.iter().map(|i| summary(&net, i)).collect(),
    }))
}

/// An instance's detail page.
#[derive(Debug, Serialize)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub summary: InstanceSummary,
    pub reservation_id: String,
    pub launch_index: u32,
    pub availability_zone: String,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub security_groups: Vec<GroupName>,
    pub network_interfaces: Vec<String>,
    pub disable_api_termination: bool,
    pub disable_api_stop: bool,
    pub shutdown_behavior: String,
    pub http_tokens: String,
    pub http_endpoint: String,
    pub http_put_response_hop_limit: u8,
    pub user_data_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct GroupName {
    pub group_id: String,
    pub group_name: String,
}

fn valid_instance_id(id: &str) -> Result<(), ConsoleError> {
    ids::validate(IdKind::Instance, id)?;
    Ok(())
}

pub(super) async fn instance_detail(
    State(c): State<Console>,
    _a: Authed,
    Path(id): Path<String>,
) -> Answer<InstanceDetail> {
    valid_instance_id(&id)?;
    let (list, _) = c
        .svc
        .describe_instances(std::slice::from_ref(&id), &[], None, None)?;
    let i = list
        .into_iter()
        .next()
        .ok_or_else(|| crate::error::ApiError::instance_not_found(&id))?;
    let net = c.svc.instance_networks()?;
    let enis = net.interfaces_of(&i.instance_id);
    let primary = enis
        .iter()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0));
    let security_groups = primary
        .map(|e| {
            e.groups
                .iter()
                .map(|g| GroupName {
                    group_id: g.clone(),
                    group_name: net.group(g).map(|g| g.name.clone()).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(InstanceDetail {
        summary: summary(&net, &i),
        reservation_id: i.reservation_id.clone(),
        launch_index: i.launch_index,
        availability_zone: c.svc.config().availability_zone(),
        vpc_id: primary.map(|e| e.vpc_id.clone()),
        subnet_id: primary.map(|e| e.subnet_id.clone()),
        security_groups,
        network_interfaces: enis.iter().map(|e| e.eni_id.clone()).collect(),
        disable_api_termination: i.attributes.disable_api_termination,
        disable_api_stop: i.attributes.disable_api_stop,
        shutdown_behavior: i.attributes.shutdown_behavior.name().to_string(),
        http_tokens: i.metadata_options.http_tokens().to_string(),
        http_endpoint: i.metadata_options.http_endpoint().to_string(),
        http_put_response_hop_limit: i.metadata_options.hop_limit,
        user_data_bytes: i.user_data.len(),
    }))
}

/// The last 64 KiB of an instance's serial console (GetConsoleOutput), as text: bytes that are
/// not UTF-8 become U+FFFD.
#[derive(Debug, Serialize)]
pub struct ConsoleOutput {
    pub instance_id: String,
    pub timestamp: String,
    pub output: String,
}

pub(super) async fn console_output(
    State(c): State<Console>,
    _a: Authed,
    Path(id): Path<String>,
) -> Answer<ConsoleOutput> {
    valid_instance_id(&id)?;
    let (bytes, timestamp) = c.svc.console_output(&id)?;
    Ok(Json(ConsoleOutput {
        instance_id: id,
        timestamp,
        output: String::from_utf8_lossy(&bytes).into_owned(),
    }))
}

/// POST /console/api/instances/action: one lifecycle operation on some instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: InstanceAction,
    pub instance_ids: Vec<String>,
    /// Stop only: StopInstances' `Force`.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstanceAction {
    Start,
    Stop,
    Hibernate,
    Reboot,
    Terminate,
}

#[derive(Debug, Serialize)]
pub struct StateChangeView {
    pub instance_id: String,
    pub previous_state: String,
    pub current_state: String,
}

#[derive(Debug, Serialize)]
pub struct ActionAnswer {
    pub changes: Vec<StateChangeView>,
}

fn changes(list: Vec<StateChange>) -> Vec<StateChangeView> {
    list.into_iter()
        .map(|c| StateChangeView {
            instance_id: c.instance_id,
            previous_state: c.previous.name().to_string(),
            current_state: c.current.name().to_string(),
        })
        .collect()
}

/// The most instances one console action names (EC2's API takes no more in practice).
const MAX_ACTION_IDS: usize = 1000;

pub(super) async fn instance_action(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<ActionAnswer> {
    let req: ActionRequest = json_body(&headers, &body)?;
    if req.instance_ids.is_empty() || req.instance_ids.len() > MAX_ACTION_IDS {
        return Err(ConsoleError::bad_request(format!(
            "name 1 to {MAX_ACTION_IDS} instances"
        )));
    }
    for id in &req.instance_ids {
        valid_instance_id(id)?;
    }
    let ids = &req.instance_ids;
    let svc = &c.svc;
    let changes = match req.action {
        InstanceAction::Start => changes(svc.start_instances(ids).await?),
        InstanceAction::Stop => changes(svc.stop_instances(ids, req.force, false).await?),
        InstanceAction::Hibernate => changes(svc.stop_instances(ids, false, true).await?),
        InstanceAction::Terminate => changes(svc.terminate_instances(ids).await?),
        InstanceAction::Reboot => {
            svc.reboot_instances(ids).await?;
            Vec::new()
        }
    };
    Ok(Json(ActionAnswer { changes }))
}

/// POST /console/api/instances: the launch form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub image_id: String,
    pub instance_type: String,
    pub count: u32,
    /// The user data as text (the form's text area), at most 16 KiB.
    #[serde(default)]
    pub user_data: String,
    pub key_name: Option<String>,
    /// None: the default subnet of the default VPC.
    pub subnet_id: Option<String>,
    /// None: the VPC's `default` group.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LaunchAnswer {
    pub reservation_id: Option<String>,
    pub instance_ids: Vec<String>,
}

pub(super) async fn launch(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<LaunchAnswer> {
    let req: LaunchRequest = json_body(&headers, &body)?;
    ids::validate(IdKind::Image, &req.image_id)?;
    if !(1..=1000).contains(&req.count) {
        return Err(ConsoleError::bad_request("count must be 1 to 1000"));
    }
    let blank = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let subnet_id = blank(req.subnet_id);
    if let Some(s) = &subnet_id {
        ids::validate(IdKind::Subnet, s)?;
    }
    for g in &req.security_group_ids {
        ids::validate(IdKind::SecurityGroup, g)?;
    }
    let interfaces = if subnet_id.is_none() && req.security_group_ids.is_empty() {
        Vec::new()
    } else {
        vec![InterfaceSpec {
            device_index: 0,
            subnet_id,
            group_ids: req.security_group_ids,
            delete_on_termination: true,
            ..Default::default()
        }]
    };
    let instances = c
        .svc
        .run_instances(RunRequest {
            image_id: req.image_id,
            instance_type: req.instance_type,
            min_count: req.count,
            max_count: req.count,
            user_data: req.user_data.into_bytes(),
            key_name: blank(req.key_name),
            interfaces,
            ..Default::default()
        })
        .await?;
    Ok(Json(LaunchAnswer {
        reservation_id: instances.first().map(|i| i.reservation_id.clone()),
        instance_ids: instances.into_iter().map(|i| i.instance_id).collect(),
    }))
}

/// POST /console/api/tags: adds tags to a resource or changes their values (CreateTags, with
/// its rules).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTagsRequest {
    pub resource_id: String,
    pub tags: Vec<TagView>,
}

/// POST /console/api/tags/delete: removes the tags of these keys from a resource (DeleteTags).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTagsRequest {
    pub resource_id: String,
    pub keys: Vec<String>,
}

/// A resource's tags after a change.
#[derive(Debug, Serialize)]
pub struct TagsAnswer {
    pub resource_id: String,
    pub tags: Vec<TagView>,
}

fn tags_of(c: &Console, resource_id: &str) -> Result<TagsAnswer, ConsoleError> {
    let filter = Filter {
        name: "resource-id".into(),
        values: vec![resource_id.to_string()],
    };
    let mut list: Vec<TagView> = c
        .svc
        .describe_tags(&[filter])?
        .into_iter()
        .filter(|t| t.resource_id == resource_id)
        .map(|t| TagView {
            key: t.tag.key,
            value: t.tag.value,
        })
        .collect();
    list.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(TagsAnswer {
        resource_id: resource_id.to_string(),
        tags: list,
    })
}

pub(super) async fn set_tags(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<TagsAnswer> {
    let req: SetTagsRequest = json_body(&headers, &body)?;
    if req.tags.is_empty() {
        return Err(ConsoleError::bad_request("give at least one tag"));
    }
    let new: Vec<Tag> = req
        .tags
        .into_iter()
        .map(|t| Tag {
            key: t.key,
            value: t.value,
        })
        .collect();
    crate::api::validate_tags(&new)?;
    c.svc
        .create_tags(std::slice::from_ref(&req.resource_id), &new)?;
    Ok(Json(tags_of(&c, &req.resource_id)?))
}

pub(super) async fn delete_tags(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<TagsAnswer> {
    let req: DeleteTagsRequest = json_body(&headers, &body)?;
    // DeleteTags without tags removes them all; the console names the keys it removes.
    if req.keys.is_empty() {
        return Err(ConsoleError::bad_request("give at least one tag key"));
    }
    let keys: Vec<TagToDelete> = req
        .keys
        .into_iter()
        .map(|key| TagToDelete { key, value: None })
        .collect();
    c.svc
        .delete_tags(std::slice::from_ref(&req.resource_id), &keys)?;
    Ok(Json(tags_of(&c, &req.resource_id)?))
}

#[derive(Debug, Serialize)]
pub struct ImageView {
    pub image_id: String,
    pub name: String,
    pub description: String,
    pub state: String,
    pub architecture: String,
    pub boot_mode: String,
    pub owner_id: String,
    pub creation_date: String,
    pub source_instance_id: Option<String>,
    pub tags: Vec<TagView>,
}

fn image_view(i: &Image) -> ImageView {
    ImageView {
        image_id: i.image_id.clone(),
        name: i.name.clone(),
        description: i.description.clone(),
        state: i.state.clone(),
        architecture: i.architecture.clone(),
        boot_mode: i.boot_mode.clone(),
        owner_id: i.owner_id.clone(),
        creation_date: i.creation_date.clone(),
        source_instance_id: i.source_instance_id.clone(),
        tags: tags(&i.tags),
    }
}

#[derive(Debug, Serialize)]
pub struct ImageList {
    pub images: Vec<ImageView>,
}

pub(super) async fn list_images(State(c): State<Console>, _a: Authed) -> Answer<ImageList> {
    let images = c.svc.describe_images(&[], &[], &[])?;
    Ok(Json(ImageList {
        images: images.iter().map(image_view).collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct InstanceTypeView {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub burstable: bool,
}

#[derive(Debug, Serialize)]
pub struct InstanceTypeList {
    pub instance_types: Vec<InstanceTypeView>,
}

pub(super) async fn list_instance_types(_a: Authed) -> Answer<InstanceTypeList> {
    let types = crate::service::instance_types(&[])?;
    Ok(Json(InstanceTypeList {
        instance_types: types
            .iter()
            .map(|t| InstanceTypeView {
                name: t.name.to_string(),
                vcpus: t.vcpus,
                memory_mib: t.memory_mib,
                burstable: t.burstable,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct KeyPairView {
    pub key_pair_id: String,
    pub key_name: String,
    pub key_type: String,
    pub fingerprint: String,
    pub create_time: String,
    pub tags: Vec<TagView>,
}

fn key_pair_view(k: &KeyPair) -> KeyPairView {
    KeyPairView {
        key_pair_id: k.key_pair_id.clone(),
        key_name: k.key_name.clone(),
        key_type: k.key_type.name().to_string(),
        fingerprint: k.fingerprint.clone(),
        create_time: k.create_time.clone(),
        tags: tags(&k.tags),
    }
}

#[derive(Debug, Serialize)]
pub struct KeyPairList {
    pub key_pairs: Vec<KeyPairView>,
}

pub(super) async fn list_key_pairs(State(c): State<Console>, _a: Authed) -> Answer<KeyPairList> {
    let pairs = c.svc.describe_key_pairs(&[], &[], &[])?;
    Ok(Json(KeyPairList {
        key_pairs: pairs.iter().map(key_pair_view).collect(),
    }))
}

/// POST /console/api/key-pairs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyPairRequest {
    pub key_name: String,
    /// `rsa` (default) or `ed25519`.
    pub key_type: Option<String>,
}

/// A new key pair with its private key, which is in this answer only: vireod keeps none.
#[derive(Serialize)]
pub struct CreatedKeyPair {
    #[serde(flatten)]
    pub key_pair: KeyPairView,
    pub private_key: String,
}

pub(super) async fn create_key_pair(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<CreatedKeyPair> {
    let req: CreateKeyPairRequest = json_body(&headers, &body)?;
    let kind: KeyType = req
        .key_type
        .as_deref()
        .unwrap_or("rsa")
        .parse()
        .map_err(|e: String| crate::error::ApiError::invalid_value(e))?;
    let (pair, private_key) = c
        .svc
        .create_key_pair(&req.key_name, kind, Vec::new())
        .await?;
    Ok(Json(CreatedKeyPair {
        key_pair: key_pair_view(&pair),
        private_key: private_key.to_string(),
    }))
}

/// POST /console/api/key-pairs/delete.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteKeyPairRequest {
    pub key_name: String,
}

#[derive(Debug, Serialize)]
pub struct DeletedKeyPair {
    pub key_pair_id: Option<String>,
}

pub(super) async fn delete_key_pair(
    State(c): State<Console>,
    _a: Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer<DeletedKeyPair> {
    let req: DeleteKeyPairRequest = json_body(&headers, &body)?;
    let id = c
        .svc
        .delete_key_pair(&crate::service::KeyPairRef::Name(req.key_name))?;
    Ok(Json(DeletedKeyPair { key_pair_id: id }))
}

#[derive(Debug, Serialize)]
pub struct VpcView {
    pub vpc_id: String,
    pub cidr_block: String,
    pub is_default: bool,
    pub enable_dns_support: bool,
    pub enable_dns_hostnames: bool,
    pub tags: Vec<TagView>,
}

#[derive(Debug, Serialize)]
pub struct VpcList {
    pub vpcs: Vec<VpcView>,
}

pub(super) async fn list_vpcs(State(c): State<Console>, _a: Authed) -> Answer<VpcList> {
    let (vpcs, _) = c.svc.describe_vpcs(&DescribeQuery::default())?;
    Ok(Json(VpcList {
        vpcs: vpcs
            .iter()
            .map(|v| VpcView {
                vpc_id: v.vpc_id.clone(),
                cidr_block: v.cidr.to_string(),
                is_default: v.is_default,
                enable_dns_support: v.enable_dns_support,
                enable_dns_hostnames: v.enable_dns_hostnames,
                tags: tags(&v.tags),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct SubnetView {
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr_block: String,
    pub availability_zone: String,
    pub available_ip_address_count: u64,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
    pub tags: Vec<TagView>,
}

#[derive(Debug, Serialize)]
pub struct SubnetList {
    pub subnets: Vec<SubnetView>,
}

pub(super) async fn list_subnets(State(c): State<Console>, _a: Authed) -> Answer<SubnetList> {
    let (subnets, _) = c.svc.describe_subnets(&DescribeQuery::default())?;
    Ok(Json(SubnetList {
        subnets: subnets
            .iter()
            .map(|(s, free)| SubnetView {
                subnet_id: s.subnet_id.clone(),
                vpc_id: s.vpc_id.clone(),
                cidr_block: s.cidr.to_string(),
                availability_zone: s.availability_zone.clone(),
                available_ip_address_count: *free,
                default_for_az: s.default_for_az,
                map_public_ip_on_launch: s.map_public_ip_on_launch,
                tags: tags(&s.tags),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct RuleView {
    pub rule_id: String,
    pub egress: bool,
    /// EC2's spelling: `tcp`, `udp`, `icmp`, `-1` (all) or a protocol number.
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    /// A CIDR block or a security group id.
    pub peer: String,
    pub description: String,
}

#[derive(Debug, Serialize)]
pub struct SecurityGroupView {
    pub group_id: String,
    pub group_name: String,
    pub description: String,
    pub vpc_id: String,
    pub tags: Vec<TagView>,
    pub rules: Vec<RuleView>,
}

#[derive(Debug, Serialize)]
pub struct SecurityGroupList {
    pub security_groups: Vec<SecurityGroupView>,
}

pub(super) async fn list_security_groups(
    State(c): State<Console>,
    _a: Authed,
) -> Answer<SecurityGroupList> {
    let (groups, rules, _) = c
        .svc
        .describe_security_groups(&DescribeQuery::default(), &[])?;
    Ok(Json(SecurityGroupList {
        security_groups: groups
            .iter()
            .map(|g| SecurityGroupView {
                group_id: g.group_id.clone(),
                group_name: g.name.clone(),
                description: g.description.clone(),
                vpc_id: g.vpc_id.clone(),
                tags: tags(&g.tags),
                rules: rules
                    .iter()
                    .filter(|r| r.group_id == g.group_id)
                    .map(|r| RuleView {
                        rule_id: r.rule_id.clone(),
                        egress: r.egress,
                        protocol: r.protocol.to_string(),
                        from_port: r.from_port,
                        to_port: r.to_port,
                        peer: match &r.source {
                            RuleSource::Cidr(c) => c.to_string(),
                            RuleSource::Group(id) => id.clone(),
                        },
                        description: r.description.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod unit;
