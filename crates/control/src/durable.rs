//! Making file changes durable before vireod acknowledges them: a file's data is flushed with
//! fsync, and a rename or a new directory entry only survives a power loss once the directory
//! holding it is fsynced too. Without this, the database (which commits with
//! `synchronous=FULL`) could say an image is available while its files are still empty.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Flushes a file's data and metadata to disk.
pub fn sync_file(path: &Path) -> io::Result<()> {
    // fsync works on a read-only descriptor; image files are made read-only before this.
    File::open(path)?.sync_all()
}

/// Flushes a directory's entries (files created, renamed or removed in it) to disk.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes every regular file under `dir`, then each directory, deepest first (so an entry is
/// only made durable once what it names is).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            sync_tree(&entry.path())?;
        } else if ty.is_file() {
            sync_file(&entry.path())?;
        }
        // Symbolic links and sockets have no data of their own to flush.
    }
    sync_dir(dir)
}

/// Renames `from` to `to` and flushes the directories that changed.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let (src, dst) = (parent(from), parent(to));
    sync_dir(dst)?;
    if src != dst {
        sync_dir(src)?;
    }
    Ok(())
}

/// Writes a whole file and flushes it and its directory entry.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    sync_dir(parent(path))
}

/// Creates `dir` and any missing parents, flushing the entry of each one created.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    create_dir_all(parent(dir))?;
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    sync_dir(parent(dir))
}

/// The directory holding `p` (`.` for a bare name).
fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_rename_keep_the_data() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        write(&a, b"boot").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"boot");
        let sub = d.path().join("x/y");
        create_dir_all(&sub).unwrap();
        assert!(sub.is_dir());
        create_dir_all(&sub).unwrap(); // already there: fine
        let b = sub.join("b");
        rename(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"boot");
    }

    #[test]
    fn a_tree_is_synced_whole_read_only_files_included() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("staging/inner");
        std::fs::create_dir_all(&inner).unwrap();
        let k = d.path().join("staging/kernel");
        std::fs::write(&k, b"k").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::write(inner.join("mem"), b"m").unwrap();
        std::os::unix::fs::symlink("kernel", d.path().join("staging/link")).unwrap();
        sync_tree(&d.path().join("staging")).unwrap();
    }

    #[test]
    fn missing_paths_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        assert_eq!(
            sync_file(&gone).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(sync_tree(&gone).is_err());
        assert!(rename(&gone, &d.path().join("b")).is_err());
        assert!(write(&gone.join("f"), b"x").is_err());
    }
}
