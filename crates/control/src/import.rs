//! Where RegisterImage may read files from. vireod runs as root and copies an image's files
//! into its store, and an instance launched from the image lets its guest read them: without a
//! bound, any API caller could register `/etc/shadow` as a root disk and read it from inside a
//! VM. So the files an API request names (the manifest and what it lists, or the kernel,
//! initrd and root disk given directly) must lie in one of the import directories that the
//! host's administrator chose (`vireod serve --import-dir`), after every symbolic link is
//! resolved. `vireod init --image` is the administrator's own command on the host and is not
//! bounded.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("the {0} {1} must be given as an absolute path")]
    Relative(&'static str, PathBuf),
    /// Said the same whether the file exists or not, so that the API tells nothing about the
    /// host's files outside the import directories.
    #[error(
        "the {0} {1} is outside the directories vireod imports images from ({2}); \
         put it there or start vireod with --import-dir"
    )]
    Outside(&'static str, PathBuf, String),
    #[error("cannot read the {0} {1}: {2}")]
    Unreadable(&'static str, PathBuf, String),
}

/// The import directories, each resolved to its canonical path (they must exist).
pub fn resolve_dirs(dirs: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|d| {
            let real = d.canonicalize().map_err(|e| {
                std::io::Error::new(e.kind(), format!("import directory {}: {e}", d.display()))
            })?;
            if !real.is_dir() {
                return Err(std::io::Error::other(format!(
                    "import directory {}: not a directory",
                    d.display()
                )));
            }
            Ok(real)
        })
        .collect()
}

/// `path` resolved (symbolic links followed) if it lies in one of `dirs` (canonical paths, see
/// [`resolve_dirs`]); `what` names the file in the error.
pub fn importable(
    dirs: &[PathBuf],
    what: &'static str,
    path: &Path,
) -> Result<PathBuf, ImportError> {
    if !path.is_absolute() {
        return Err(ImportError::Relative(what, path.into()));
    }
    let outside = || {
        let list = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        ImportError::Outside(what, path.into(), list)
    };
    let inside = |p: &Path| dirs.iter().any(|d| p.starts_with(d));
    // `..` could climb out of a directory after the lexical check below.
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(outside());
    }
    match path.canonicalize() {
        Ok(real) if inside(&real) => Ok(real),
        Ok(_) => Err(outside()),
        // A missing file inside an import directory is worth naming; one outside is not.
        Err(e) if inside(path) => Err(ImportError::Unreadable(what, path.into(), e.to_string())),
        Err(_) => Err(outside()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        _tmp: tempfile::TempDir,
        import: PathBuf,
        other: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let import = tmp.path().join("import");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(import.join("sub")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(import.join("sub/kernel"), b"k").unwrap();
        std::fs::write(other.join("secret"), b"s").unwrap();
        let import = import.canonicalize().unwrap();
        let other = other.canonicalize().unwrap();
        Dirs {
            _tmp: tmp,
            import,
            other,
        }
    }

    #[test]
    fn files_in_an_import_directory_are_taken_by_their_real_path() {
        let d = dirs();
        let allowed = resolve_dirs(std::slice::from_ref(&d.import)).unwrap();
        let k = d.import.join("sub/kernel");
        assert_eq!(importable(&allowed, "kernel", &k), Ok(k.clone()));
        // A link inside to a file inside is fine, and resolved.
        std::os::unix::fs::symlink(&k, d.import.join("alias")).unwrap();
        assert_eq!(
            importable(&allowed, "kernel", &d.import.join("alias")),
            Ok(k)
        );
    }

    #[test]
    fn files_outside_are_refused_alike_whether_they_exist_or_not() {
        let d = dirs();
        let allowed = resolve_dirs(std::slice::from_ref(&d.import)).unwrap();
        let secret = d.other.join("secret");
        let missing = d.other.join("missing");
        for p in [&secret, &missing, &PathBuf::from("/etc/passwd")] {
            let e = importable(&allowed, "root disk", p).unwrap_err();
            assert!(matches!(e, ImportError::Outside(..)), "{p:?}: {e}");
            assert!(e.to_string().contains("--import-dir"), "{e}");
        }
        // `..` out of the directory, and a link inside pointing out.
        let climb = d.import.join("sub/../../other/secret");
        assert!(matches!(
            importable(&allowed, "kernel", &climb),
            Err(ImportError::Outside(..))
        ));
        std::os::unix::fs::symlink(&secret, d.import.join("leak")).unwrap();
        assert!(matches!(
            importable(&allowed, "kernel", &d.import.join("leak")),
            Err(ImportError::Outside(..))
        ));
        // A directory whose name only starts like the import directory's.
        let sibling = PathBuf::from(format!("{}-evil", d.import.display()));
        std::fs::create_dir_all(&sibling).unwrap();
        std::fs::write(sibling.join("k"), b"k").unwrap();
        assert!(matches!(
            importable(&allowed, "kernel", &sibling.join("k")),
            Err(ImportError::Outside(..))
        ));
    }

    #[test]
    fn relative_and_missing_paths_inside_say_so() {
        let d = dirs();
        let allowed = resolve_dirs(std::slice::from_ref(&d.import)).unwrap();
        assert!(matches!(
            importable(&allowed, "kernel", Path::new("kernel")),
            Err(ImportError::Relative(..))
        ));
        let e = importable(&allowed, "initrd", &d.import.join("nope")).unwrap_err();
        assert!(matches!(e, ImportError::Unreadable(..)), "{e}");
        assert!(resolve_dirs(&[d.import.join("absent")]).is_err());
    }
}
