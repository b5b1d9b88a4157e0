//! Image manifests: a JSON file on the host naming an image's kernel, initramfs, root disk and
//! kernel command line. RegisterImage's `ImageLocation` points at one (as EC2's ImageLocation once
//! pointed at an image manifest), and `vireod init --image` registers them at set-up.
//!
//! ```json
//! {"name": "vireo-debian-12", "description": "...", "kernel": "vmlinux",
//!  "initrd": "initrd.cpio.gz", "root_disk": "rootfs.ext4", "cmdline": "console=ttyS0"}
//! ```
//! Relative paths are relative to the manifest's directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: Option<String>,
    pub description: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub root_disk: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    #[serde(default)]
    description: String,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    root_disk: Option<PathBuf>,
    #[serde(default)]
    cmdline: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the image manifest {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the image manifest {0} is not valid: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error("the image manifest {0} must be given as an absolute path")]
    Relative(PathBuf),
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        if !path.is_absolute() {
            return Err(ManifestError::Relative(path.into()));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| ManifestError::Read(path.into(), e))?;
        let raw: Raw =
            serde_json::from_str(&text).map_err(|e| ManifestError::Parse(path.into(), e))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        Ok(Manifest {
            name: raw.name,
            description: raw.description,
            kernel: abs(raw.kernel),
            initrd: raw.initrd.map(abs),
            root_disk: raw.root_disk.map(abs),
            cmdline: raw.cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_paths_and_rejects_unknown_fields() {
        let dir = std::env::temp_dir().join(format!("vireo-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join("img.json");
        std::fs::write(
            &m,
            r#"{"name":"x-img","kernel":"k","initrd":"/abs/i","cmdline":"console=ttyS0"}"#,
        )
        .unwrap();
        let got = Manifest::load(&m).unwrap();
        assert_eq!(got.kernel, dir.join("k"));
        assert_eq!(got.initrd.as_deref(), Some(Path::new("/abs/i")));
        assert_eq!(got.root_disk, None);
        std::fs::write(&m, r#"{"kernel":"k","kernal":"typo"}"#).unwrap();
        assert!(matches!(Manifest::load(&m), Err(ManifestError::Parse(..))));
        assert!(matches!(
            Manifest::load(Path::new("rel.json")),
            Err(ManifestError::Relative(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
