//! The instance metadata service's side of the service: ModifyInstanceMetadataOptions, what an
//! instance's metadata shows ([`crate::imds::Lookup`], read from the database per request) and
//! the key IMDSv2 tokens are made with.

use std::net::Ipv4Addr;

use super::state::Operation;
use super::Service;
use crate::error::ApiResult;
use crate::imds::{InstanceView, InterfaceView, Lookup, TokenKey};
use crate::model::{InstanceState, MetadataOptions};

/// The settings key of the token key.
const TOKEN_KEY_SETTING: &str = "imds_token_key";

/// One change ModifyInstanceMetadataOptions asks for (`None`: keep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataChange {
    pub tokens_required: Option<bool>,
    pub hop_limit: Option<u8>,
    pub endpoint_enabled: Option<bool>,
    pub tags_enabled: Option<bool>,
}

/// A public address's DNS name (EC2: ec2-198-51-100-2.<region>.compute.amazonaws.com).
pub fn public_dns_name(region: &str, ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "ec2-{}-{}-{}-{}.{region}.compute.vireo.internal",
        o[0], o[1], o[2], o[3]
    )
}

impl Service {
    /// ModifyInstanceMetadataOptions: in force for the instance's next metadata request
    /// (running or stopped; not while shutting down or terminated). Returns the options now.
    pub async fn modify_instance_metadata_options(
        &self,
        id: &str,
        change: MetadataChange,
    ) -> ApiResult<MetadataOptions> {
        let _g = self.lock(id).await;
        let inst = self.instance(id)?;
        Operation::ModifyAttribute.check(id, inst.state)?;
        let mut m = inst.metadata_options;
        if let Some(v) = change.tokens_required {
            m.tokens_required = v;
        }
        if let Some(v) = change.hop_limit {
            m.hop_limit = v;
        }
        if let Some(v) = change.endpoint_enabled {
            m.endpoint_enabled = v;
        }
        if let Some(v) = change.tags_enabled {
            m.tags_enabled = v;
        }
        self.db().set_metadata_options(id, &m)?;
        Ok(m)
    }

    /// The key IMDSv2 tokens are made with: made once and kept in the state database, so
    /// that tokens stay good across vireod restarts.
    pub fn metadata_token_key(&self) -> ApiResult<TokenKey> {
        let db = self.db();
        if let Some(k) = db
            .setting(TOKEN_KEY_SETTING)?
            .and_then(|h| TokenKey::from_hex(&h))
        {
            return Ok(k);
        }
        let k = TokenKey::random();
        db.set_setting(TOKEN_KEY_SETTING, &k.to_hex())?;
        Ok(k)
    }

    /// What the metadata of the instance with private address `ip` in `vpc_id` shows.
    pub fn metadata_view(&self, vpc_id: &str, ip: Ipv4Addr) -> ApiResult<Option<InstanceView>> {
        let net = self.net()?;
        let Some(instance_id) = net
            .interfaces
            .iter()
            .find(|e| e.vpc_id == vpc_id && e.private_ip == ip)
            .and_then(|e| e.attachment.as_ref())
            .map(|a| a.instance_id.clone())
        else {
            return Ok(None);
        };
        let Some(inst) = self.db().instance(&instance_id)? else {
            return Ok(None);
        };
        if inst.state == InstanceState::Terminated {
            return Ok(None);
        }
        let region = self.config().region.clone();
        let interfaces = net
            .interfaces_of(&instance_id)
            .into_iter()
            .map(|e| {
                let groups: Vec<_> = e.groups.iter().filter_map(|g| net.group(g)).collect();
                let public_ip = net.public_ip_of(&e.eni_id).map(|a| a.public_ip);
                InterfaceView {
                    device_number: e.attachment.as_ref().map_or(0, |a| a.device_index),
                    eni_id: e.eni_id.clone(),
                    mac: e.mac.to_ascii_lowercase(),
                    private_ip: e.private_ip,
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: net
                        .subnet(&e.subnet_id)
                        .map(|s| s.cidr.to_string())
                        .unwrap_or_default(),
                    vpc_id: e.vpc_id.clone(),
                    vpc_cidr: net
                        .vpc(&e.vpc_id)
                        .map(|v| v.cidr.to_string())
                        .unwrap_or_default(),
                    group_ids: groups.iter().map(|g| g.group_id.clone()).collect(),
                    group_names: groups.iter().map(|g| g.name.clone()).collect(),
                    public_ip,
                    public_dns: public_ip.map(|p| public_dns_name(&region, p)),
                }
            })
            .collect();
        Ok(Some(InstanceView {
            instance_id: inst.instance_id,
            image_id: inst.image_id,
            instance_type: inst.instance_type,
            reservation_id: inst.reservation_id,
            launch_index: inst.launch_index,
            account_id: inst.owner_id,
            launch_time: inst.launch_time,
            availability_zone: self.config().availability_zone(),
            domain: self.dns_domain(),
            region,
            options: inst.metadata_options,
            user_data: inst.user_data,
            key: inst.key_name.zip(inst.public_key),
            tags: inst.tags,
            interfaces,
        }))
    }
}

impl Lookup for Service {
    fn instance_at(&self, vpc_id: &str, ip: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        self.metadata_view(vpc_id, ip).map_err(|e| e.message)
    }
}
