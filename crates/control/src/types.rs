//! The instance types vireod offers: EC2's t3, c5, m5 and r5 families with EC2's vCPU counts and
//! memory sizes, so that scripts written for EC2 pick the same names and get the same shapes.

/// One instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Burstable (t3): EC2 reports these as `burstablePerformanceSupported`.
    pub burstable: bool,
}

const fn t(name: &'static str, vcpus: u32, memory_mib: u64, burstable: bool) -> InstanceType {
    InstanceType {
        name,
        vcpus,
        memory_mib,
        burstable,
    }
}

/// Every type, in the order DescribeInstanceTypes lists them.
pub const CATALOG: &[InstanceType] = &[
    t("t3.nano", 2, 512, true),
    t("t3.micro", 2, 1024, true),
    t("t3.small", 2, 2048, true),
    t("t3.medium", 2, 4096, true),
    t("t3.large", 2, 8192, true),
    t("t3.xlarge", 4, 16384, true),
    t("t3.2xlarge", 8, 32768, true),
    t("c5.large", 2, 4096, false),
    t("c5.xlarge", 4, 8192, false),
    t("c5.2xlarge", 8, 16384, false),
    t("c5.4xlarge", 16, 32768, false),
    t("m5.large", 2, 8192, false),
    t("m5.xlarge", 4, 16384, false),
    t("m5.2xlarge", 8, 32768, false),
    t("m5.4xlarge", 16, 65536, false),
    t("r5.large", 2, 16384, false),
    t("r5.xlarge", 4, 32768, false),
    t("r5.2xlarge", 8, 65536, false),
    t("r5.4xlarge", 16, 131072, false),
];

/// The type called `name`, if vireod offers it.
pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    CATALOG.iter().find(|t| t.name == name)
}

impl InstanceType {
    /// EC2 reports vCPUs as cores x threads; every type here has two threads per core except
    /// where there is a single vCPU.
    pub fn cores(&self) -> u32 {
        self.vcpus.div_ceil(2)
    }
    pub fn threads_per_core(&self) -> u32 {
        if self.vcpus >= 2 {
            2
        } else {
            1
        }
    }
    pub fn family(&self) -> &'static str {
        self.name.split('.').next().unwrap_or(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_matches_ec2_shapes() {
        let micro = lookup("t3.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib), (2, 1024));
        let c5 = lookup("c5.4xlarge").unwrap();
        assert_eq!((c5.vcpus, c5.memory_mib), (16, 32768));
        let r5 = lookup("r5.large").unwrap();
        assert_eq!((r5.vcpus, r5.memory_mib), (2, 16384));
        assert!(lookup("t3.huge").is_none());
        assert_eq!(CATALOG.iter().filter(|t| t.family() == "t3").count(), 7);
        for f in ["c5", "m5", "r5"] {
            assert_eq!(CATALOG.iter().filter(|t| t.family() == f).count(), 4);
        }
        let mut names: Vec<_> = CATALOG.iter().map(|t| t.name).collect();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
    }
}
