//! Delivering UserData to a Linux guest: the image's initramfs with one more gzip'd cpio archive
//! appended, holding `/etc/vireo/user-data`. The kernel unpacks concatenated archives in order,
//! so the file appears in the guest's root file system before its init starts; the image's
//! untouched initramfs is shared by every instance.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use cpio::newc::{trailer, Builder};
use flate2::write::GzEncoder;
use flate2::Compression;

/// Writes `out` = `initrd` followed by an archive with `/etc/vireo/user-data` = `data`.
pub fn initrd_with_user_data(initrd: &Path, data: &[u8], out: &Path) -> io::Result<()> {
    let tmp = out.with_extension("tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        io::copy(&mut File::open(initrd)?, &mut f)?;
        f.write_all(&user_data_archive(data)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A gzip'd newc cpio archive with the directories and the user-data file (mode 0600).
pub fn user_data_archive(data: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("user data too large"))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for (ino, dir) in [(1, "etc"), (2, "etc/vireo")] {
        let w = Builder::new(dir)
            .ino(ino)
            .mode(0o040755)
            .nlink(2)
            .write(&mut gz, 0);
        w.finish()?;
    }
    let mut w = Builder::new("etc/vireo/user-data")
        .ino(3)
        .mode(0o100600)
        .nlink(1)
        .write(&mut gz, len);
    w.write_all(data)?;
    w.finish()?;
    trailer(&mut gz)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_holds_the_user_data() {
        let gz = user_data_archive(b"#!/bin/sh\necho hi\n").unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut rest = &raw[..];
        let mut names = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            let name = r.entry().name().to_string();
            if r.entry().is_trailer() {
                break;
            }
            if name == "etc/vireo/user-data" {
                let mut body = String::new();
                r.read_to_string(&mut body).unwrap();
                assert_eq!(body, "#!/bin/sh\necho hi\n");
            }
            names.push(name);
            rest = r.finish().unwrap();
        }
        assert_eq!(names, ["etc", "etc/vireo", "etc/vireo/user-data"]);
    }
}
