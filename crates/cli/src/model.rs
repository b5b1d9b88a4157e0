//! The fields the CLI shows, picked out of EC2 response shapes (API version 2016-11-15).

use std::collections::BTreeMap;

use base64::Engine;
use serde::Serialize;

use crate::xmltree::Element;

/// The text at `path`, unless it is absent or empty.
pub(crate) fn opt(e: &Element, path: &str) -> Option<String> {
    e.text_at(path)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A resource's `tagSet` as key to value.
pub(crate) fn tags(e: &Element) -> BTreeMap<String, String> {
    e.items("tagSet")
        .map(|t| (t.str("key"), t.str("value")))
        .collect()
}

/// `nextToken`, when there are more pages.
pub fn next_token(root: &Element) -> Option<String> {
    opt(root, "nextToken")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub instance_id: String,
    pub state: String,
    pub instance_type: String,
    pub image_id: String,
    pub launch_time: String,
    pub reservation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// The ids of the primary interface's security groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// The key pair it was launched with (RunInstances KeyName).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    fn from_item(item: &Element, reservation_id: &str) -> Instance {
        Instance {
            instance_id: item.str("instanceId"),
            state: item.str("instanceState/name"),
            instance_type: item.str("instanceType"),
            image_id: item.str("imageId"),
            launch_time: item.str("launchTime"),
            reservation_id: reservation_id.to_string(),
            private_ip: opt(item, "privateIpAddress"),
            public_ip: opt(item, "ipAddress"),
            vpc_id: opt(item, "vpcId"),
            subnet_id: opt(item, "subnetId"),
            security_groups: item.items("groupSet").map(|g| g.str("groupId")).collect(),
            availability_zone: opt(item, "placement/availabilityZone"),
            state_reason: opt(item, "stateReason/message").or_else(|| opt(item, "reason")),
            key_name: opt(item, "keyName"),
            tags: tags(item),
        }
    }

    pub fn name(&self) -> &str {
        self.tags.get("Name").map(String::as_str).unwrap_or("")
    }
}

/// The instances of a DescribeInstances (`reservationSet/item/instancesSet/item`) or a
/// RunInstances (`instancesSet/item` under the reservation at the root) response.
pub fn instances(root: &Element) -> Vec<Instance> {
    if root.child("reservationSet").is_some() {
        root.items("reservationSet")
            .flat_map(|r| {
                let rid = r.str("reservationId");
                r.items("instancesSet")
                    .map(|i| Instance::from_item(i, &rid))
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        let rid = root.str("reservationId");
        root.items("instancesSet")
            .map(|i| Instance::from_item(i, &rid))
            .collect()
    }
}

/// One item of Start/Stop/TerminateInstances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChange {
    pub instance_id: String,
    pub previous_state: String,
    pub current_state: String,
}

pub fn state_changes(root: &Element) -> Vec<StateChange> {
    root.items("instancesSet")
        .map(|i| StateChange {
            instance_id: i.str("instanceId"),
            previous_state: i.str("previousState/name"),
            current_state: i.str("currentState/name"),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub image_id: String,
    pub name: String,
    pub state: String,
    pub architecture: String,
    pub creation_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramdisk_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_device_name: Option<String>,
    pub tags: BTreeMap<String, String>,
}

pub fn images(root: &Element) -> Vec<Image> {
    root.items("imagesSet")
        .map(|i| Image {
            image_id: i.str("imageId"),
            name: i.str("name"),
            state: i.str("imageState"),
            architecture: i.str("architecture"),
            creation_date: i.str("creationDate"),
            description: opt(i, "description"),
            image_location: opt(i, "imageLocation"),
            kernel_id: opt(i, "kernelId"),
            ramdisk_id: opt(i, "ramdiskId"),
            root_device_name: opt(i, "rootDeviceName"),
            tags: tags(i),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceType {
    pub instance_type: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

pub fn instance_types(root: &Element) -> Vec<InstanceType> {
    root.items("instanceTypeSet")
        .map(|t| InstanceType {
            instance_type: t.str("instanceType"),
            vcpus: t
                .text_at("vCpuInfo/defaultVCpus")
                .and_then(|s| s.parse().ok()),
            memory_mib: t
                .text_at("memoryInfo/sizeInMiB")
                .and_then(|s| s.parse().ok()),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleOutput {
    pub instance_id: String,
    pub timestamp: String,
    pub output: String,
}

/// GetConsoleOutput; `output` is base64 in the response (and absent when there is none yet).
pub fn console_output(root: &Element) -> Result<ConsoleOutput, String> {
    let encoded: String = root
        .str("output")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| format!("the console output is not valid base64: {e}"))?;
    Ok(ConsoleOutput {
        instance_id: root.str("instanceId"),
        timestamp: root.str("timestamp"),
        output: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: &str) -> Element {
        Element::parse(doc).unwrap()
    }

    // Shaped as EC2 documents them for API version 2016-11-15.
    const DESCRIBE_INSTANCES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
    <reservationSet>
        <item>
            <reservationId>r-1234567890abcdef0</reservationId>
            <ownerId>123456789012</ownerId>
            <groupSet/>
            <instancesSet>
                <item>
                    <instanceId>i-1234567890abcdef0</instanceId>
                    <imageId>ami-bff32ccc</imageId>
                    <instanceState><code>16</code><name>running</name></instanceState>
                    <privateDnsName>ip-192-168-1-88.eu-west-1.compute.internal</privateDnsName>
                    <dnsName>ec2-54-194-252-215.eu-west-1.compute.amazonaws.com</dnsName>
                    <reason/>
                    <keyName>my_keypair</keyName>
                    <amiLaunchIndex>0</amiLaunchIndex>
                    <productCodes/>
                    <instanceType>t2.micro</instanceType>
                    <launchTime>2018-05-08T16:46:19.000Z</launchTime>
                    <placement><availabilityZone>eu-west-1c</availabilityZone><groupName/><tenancy>default</tenancy></placement>
                    <monitoring><state>disabled</state></monitoring>
                    <privateIpAddress>192.168.1.88</privateIpAddress>
                    <ipAddress>54.194.252.215</ipAddress>
                    <tagSet>
                        <item><key>Name</key><value>Server_1</value></item>
                        <item><key>env</key><value>a &amp; b</value></item>
                    </tagSet>
                </item>
                <item>
                    <instanceId>i-0598c7d356eba48d7</instanceId>
                    <imageId>ami-bff32ccc</imageId>
                    <instanceState><code>80</code><name>stopped</name></instanceState>
                    <reason>User initiated (2018-05-08 16:50:00 GMT)</reason>
                    <instanceType>t2.micro</instanceType>
                    <launchTime>2018-05-08T16:46:19.000Z</launchTime>
                    <stateReason><code>Client.UserInitiatedShutdown</code><message>Client.UserInitiatedShutdown: User initiated shutdown</message></stateReason>
                    <tagSet/>
                </item>
            </instancesSet>
        </item>
        <item>
            <reservationId>r-0a1b2c3d4e5f60718</reservationId>
            <instancesSet>
                <item>
                    <instanceId>i-0a1b2c3d4e5f60718</instanceId>
                    <imageId>ami-0123456789abcdef0</imageId>
                    <instanceState><code>0</code><name>pending</name></instanceState>
                    <instanceType>t3.micro</instanceType>
                    <launchTime>2024-01-02T03:04:05.000Z</launchTime>
                </item>
            </instancesSet>
        </item>
    </reservationSet>
    <nextToken>eyJvZmZzZXQiOjN9</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn describe_instances() {
        let root = parse(DESCRIBE_INSTANCES);
        let all = instances(&root);
        assert_eq!(all.len(), 3);
        let a = &all[0];
        assert_eq!(a.instance_id, "i-1234567890abcdef0");
        assert_eq!(a.state, "running");
        assert_eq!(a.instance_type, "t2.micro");
        assert_eq!(a.image_id, "ami-bff32ccc");
        assert_eq!(a.launch_time, "2018-05-08T16:46:19.000Z");
        assert_eq!(a.reservation_id, "r-1234567890abcdef0");
        assert_eq!(a.private_ip.as_deref(), Some("192.168.1.88"));
        assert_eq!(a.public_ip.as_deref(), Some("54.194.252.215"));
        assert_eq!(a.availability_zone.as_deref(), Some("eu-west-1c"));
        assert_eq!(a.state_reason, None);
        assert_eq!(a.name(), "Server_1");
        assert_eq!(a.tags["env"], "a & b");
        assert_eq!(all[1].state, "stopped");
        assert_eq!(all[1].name(), "");
        assert_eq!(
            all[1].state_reason.as_deref(),
            Some("Client.UserInitiatedShutdown: User initiated shutdown")
        );
        assert_eq!(all[2].reservation_id, "r-0a1b2c3d4e5f60718");
        assert_eq!(next_token(&root).as_deref(), Some("eyJvZmZzZXQiOjN9"));
    }

    #[test]
    fn run_instances() {
        let root = parse(
            r#"<RunInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <reservationId>r-1234567890abcdef0</reservationId>
  <ownerId>123456789012</ownerId>
  <groupSet/>
  <instancesSet>
    <item>
      <instanceId>i-1234567890abcdef0</instanceId>
      <imageId>ami-1a2b3c4d</imageId>
      <instanceState><code>0</code><name>pending</name></instanceState>
      <instanceType>t3.micro</instanceType>
      <launchTime>2024-01-02T03:04:05.000Z</launchTime>
      <tagSet><item><key>Name</key><value>web</value></item></tagSet>
    </item>
  </instancesSet>
</RunInstancesResponse>"#,
        );
        let got = instances(&root);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].reservation_id, "r-1234567890abcdef0");
        assert_eq!(got[0].state, "pending");
        assert_eq!(got[0].name(), "web");
        assert_eq!(next_token(&root), None);
    }

    #[test]
    fn state_change_responses() {
        let root = parse(
            r#"<StopInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <instancesSet>
    <item>
      <instanceId>i-1234567890abcdef0</instanceId>
      <currentState><code>64</code><name>stopping</name></currentState>
      <previousState><code>16</code><name>running</name></previousState>
    </item>
  </instancesSet>
</StopInstancesResponse>"#,
        );
        assert_eq!(
            state_changes(&root),
            vec![StateChange {
                instance_id: "i-1234567890abcdef0".into(),
                previous_state: "running".into(),
                current_state: "stopping".into()
            }]
        );
    }

    #[test]
    fn describe_images() {
        let root = parse(
            r#"<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <imagesSet>
    <item>
      <imageId>ami-0123456789abcdef0</imageId>
      <imageLocation>/var/lib/vireo/images/debian.raw</imageLocation>
      <imageState>available</imageState>
      <imageOwnerId>123456789012</imageOwnerId>
      <creationDate>2024-01-02T03:04:05.000Z</creationDate>
      <isPublic>false</isPublic>
      <architecture>x86_64</architecture>
      <imageType>machine</imageType>
      <kernelId>/var/lib/vireo/images/vmlinux</kernelId>
      <name>debian-12</name>
      <description>Debian 12 &lt;cloud&gt;</description>
      <rootDeviceType>ebs</rootDeviceType>
      <rootDeviceName>/dev/vda</rootDeviceName>
      <blockDeviceMapping/>
      <virtualizationType>hvm</virtualizationType>
      <tagSet><item><key>vireo:cmdline</key><value>console=ttyS0</value></item></tagSet>
    </item>
    <item>
      <imageId>ami-1234abcd</imageId>
      <imageState>pending</imageState>
      <name>snap</name>
    </item>
  </imagesSet>
</DescribeImagesResponse>"#,
        );
        let got = images(&root);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].image_id, "ami-0123456789abcdef0");
        assert_eq!(got[0].name, "debian-12");
        assert_eq!(got[0].state, "available");
        assert_eq!(got[0].architecture, "x86_64");
        assert_eq!(got[0].description.as_deref(), Some("Debian 12 <cloud>"));
        assert_eq!(
            got[0].kernel_id.as_deref(),
            Some("/var/lib/vireo/images/vmlinux")
        );
        assert_eq!(got[0].ramdisk_id, None);
        assert_eq!(got[0].tags["vireo:cmdline"], "console=ttyS0");
        assert_eq!(got[1].state, "pending");
        assert_eq!(got[1].architecture, "");
    }

    #[test]
    fn describe_instance_types() {
        let root = parse(
            r#"<DescribeInstanceTypesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <instanceTypeSet>
    <item>
      <instanceType>t3.micro</instanceType>
      <vCpuInfo><defaultVCpus>2</defaultVCpus><defaultCores>1</defaultCores></vCpuInfo>
      <memoryInfo><sizeInMiB>1024</sizeInMiB></memoryInfo>
    </item>
    <item><instanceType>odd</instanceType></item>
  </instanceTypeSet>
  <nextToken>next</nextToken>
</DescribeInstanceTypesResponse>"#,
        );
        assert_eq!(
            instance_types(&root),
            vec![
                InstanceType {
                    instance_type: "t3.micro".into(),
                    vcpus: Some(2),
                    memory_mib: Some(1024)
                },
                InstanceType {
                    instance_type: "odd".into(),
                    vcpus: None,
                    memory_mib: None
                }
            ]
        );
        assert_eq!(next_token(&root).as_deref(), Some("next"));
    }

    #[test]
    fn get_console_output() {
        let root = parse(
            r#"<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <instanceId>i-1234567890abcdef0</instanceId>
  <timestamp>2024-01-02T03:04:05.000Z</timestamp>
  <output>TGludXggdmVyc2lvbiA2LjEK
VklSRU8tUkVBRFkK</output>
</GetConsoleOutputResponse>"#,
        );
        let c = console_output(&root).unwrap();
        assert_eq!(c.instance_id, "i-1234567890abcdef0");
        assert_eq!(c.timestamp, "2024-01-02T03:04:05.000Z");
        assert_eq!(c.output, "Linux version 6.1\nVIREO-READY\n");

        let empty = parse(
            "<GetConsoleOutputResponse><instanceId>i-1</instanceId></GetConsoleOutputResponse>",
        );
        assert_eq!(console_output(&empty).unwrap().output, "");
        let bad =
            parse("<GetConsoleOutputResponse><output>!!!</output></GetConsoleOutputResponse>");
        assert!(console_output(&bad).is_err());
    }
}
