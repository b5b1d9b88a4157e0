//! `vireo keys`: key pairs. `create` asks vireod for a new pair and writes its private key,
//! which vireod does not keep, to a file only its owner can read; `import` sends a public key
//! made elsewhere; `list` and `delete`. (CreateKeyPair, ImportKeyPair, DescribeKeyPairs,
//! DeleteKeyPair.)

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::client::{Client, Params};
use crate::commands::{print_json, print_list, CliError, Result};
use crate::model::{opt, tags};
use crate::xmltree::Element;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: Option<KeysCommand>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyKind {
    Ed25519,
    Rsa,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key pair (CreateKeyPair); its private key is written to a new file, mode 0600
    Create {
        name: String,
        /// The kind of key (RSA keys are 2048 bits, as on EC2)
        #[arg(long = "type", value_enum, default_value = "ed25519")]
        kind: KeyKind,
        /// Where to write the private key; an existing file is never overwritten
        /// [default: ./NAME.pem]
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import a public key made elsewhere, e.g. ~/.ssh/id_ed25519.pub (ImportKeyPair)
    Import {
        name: String,
        /// The public key: an OpenSSH `.pub` line or an RFC 4716 block (RSA or Ed25519)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// List key pairs (DescribeKeyPairs; the default)
    List,
    /// Delete a key pair (DeleteKeyPair); instances launched with it keep its key
    Delete { name: String },
}

/// A key pair as `vireo keys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyPair {
    pub key_name: String,
    pub key_pair_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
}

fn key_pair(e: &Element) -> KeyPair {
    KeyPair {
        key_name: e.str("keyName"),
        key_pair_id: e.str("keyPairId"),
        key_type: opt(e, "keyType"),
        fingerprint: e.str("keyFingerprint"),
        create_time: opt(e, "createTime"),
        tags: tags(e),
    }
}

pub fn run(client: &Client, json: bool, action: Option<KeysCommand>) -> Result<()> {
    match action {
        None | Some(KeysCommand::List) => list(client, json),
        Some(KeysCommand::Create { name, kind, out }) => create(client, json, &name, kind, out),
        Some(KeysCommand::Import { name, file }) => import(client, json, &name, &file),
        Some(KeysCommand::Delete { name }) => delete(client, json, &name),
    }
}

fn list(client: &Client, json: bool) -> Result<()> {
    let root = client.call("DescribeKeyPairs", &Params::new())?;
    let pairs: Vec<KeyPair> = root.items("keySet").map(key_pair).collect();
    print_list(
        json,
        &pairs,
        &["NAME", "ID", "TYPE", "FINGERPRINT", "CREATED"],
        |k| {
            vec![
                k.key_name.clone(),
                k.key_pair_id.clone(),
                k.key_type.clone().unwrap_or_default(),
                k.fingerprint.clone(),
                k.create_time.clone().unwrap_or_default(),
            ]
        },
    )
}

/// `./NAME.pem`, for a name that is a plain file name.
fn default_out(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CliError::Usage(format!(
            "the key name '{name}' is not a file name: give --out FILE"
        )));
    }
    Ok(PathBuf::from(format!("{name}.pem")))
}

/// The new file for a private key: created here (never an existing one), mode 0600 from the
/// start so that no one else can read it even for a moment.
fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    pair: &'a KeyPair,
    private_key_file: String,
}

fn create(
    client: &Client,
    json: bool,
    name: &str,
    kind: KeyKind,
    out: Option<PathBuf>,
) -> Result<()> {
    let path = match out {
        Some(p) => p,
        None => default_out(name)?,
    };
    // Checked before the pair exists, so that a refusal leaves nothing behind.
    let mut file = new_private_file(&path).map_err(|e| {
        CliError::Usage(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists: not overwriting it (give --out FILE)",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        })
    })?;
    let mut p = Params::new();
    p.set("KeyName", name).set(
        "KeyType",
        match kind {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::Rsa => "rsa",
        },
    );
    let root = match client.call("CreateKeyPair", &p) {
        Ok(root) => root,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    let material = root.str("keyMaterial");
    let written = if material.is_empty() {
        Err(std::io::Error::other(
            "CreateKeyPair answered without keyMaterial",
        ))
    } else {
        file.write_all(material.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
    };
    if let Err(e) = written {
        // The private key exists nowhere else: a pair whose key could not be saved is useless,
        // so it is deleted again.
        drop(file);
        let _ = std::fs::remove_file(&path);
        let mut d = Params::new();
        d.set("KeyName", name);
        let undone = match client.call("DeleteKeyPair", &d) {
            Ok(_) => "the key pair was deleted again".to_string(),
            Err(de) => format!("deleting the key pair failed too: {de}"),
        };
        return Err(CliError::Failed(format!(
            "cannot write the private key to {}: {e}; {undone}",
            path.display()
        )));
    }
    let pair = key_pair(&root);
    if json {
        print_json(&Created {
            pair: &pair,
            private_key_file: path.display().to_string(),
        })
    } else {
        println!(
            "{}  {}  private key in {}",
            pair.key_pair_id,
            pair.fingerprint,
            path.display()
        );
        Ok(())
    }
}

fn import(client: &Client, json: bool, name: &str, file: &Path) -> Result<()> {
    let key =
        std::fs::read(file).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let mut p = Params::new();
    p.set("KeyName", name).set(
        "PublicKeyMaterial",
        base64::engine::general_purpose::STANDARD.encode(key),
    );
    let pair = key_pair(&client.call("ImportKeyPair", &p)?);
    if json {
        print_json(&pair)
    } else {
        println!("{}  {}", pair.key_pair_id, pair.fingerprint);
        Ok(())
    }
}

fn delete(client: &Client, json: bool, name: &str) -> Result<()> {
    let mut p = Params::new();
    p.set("KeyName", name);
    let root = client.call("DeleteKeyPair", &p)?;
    crate::commands::expect_true(&root, "DeleteKeyPair")?;
    let id = opt(&root, "keyPairId");
    if json {
        let mut m = std::collections::BTreeMap::new();
        m.insert("keyName", Some(name.to_string()));
        m.insert("keyPairId", id);
        return print_json(&m);
    }
    match id {
        Some(id) => println!("{id}  deleted"),
        // EC2 answers a missing pair's deletion with success too; say so.
        None => println!("no key pair named {name}: nothing to delete"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_key_files_are_new_and_private() {
        let dir = std::env::temp_dir().join(format!("vireo-cli-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.pem");
        drop(new_private_file(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"keep me").unwrap();
        let e = new_private_file(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn parse(args: &[&str]) -> std::result::Result<crate::Cli, clap::Error> {
        use clap::Parser;
        crate::Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
    }

    #[test]
    fn command_lines() {
        let crate::Command::Keys(k) = parse(&["keys"]).unwrap().command else {
            panic!()
        };
        assert!(k.action.is_none());
        let crate::Command::Keys(k) =
            parse(&["keys", "create", "web", "--type", "rsa", "-o", "w.pem"])
                .unwrap()
                .command
        else {
            panic!()
        };
        let Some(KeysCommand::Create { name, kind, out }) = k.action else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), kind, out),
            ("web", KeyKind::Rsa, Some(PathBuf::from("w.pem")))
        );
        let crate::Command::Keys(k) = parse(&["keys", "create", "web"]).unwrap().command else {
            panic!()
        };
        assert!(matches!(
            k.action,
            Some(KeysCommand::Create {
                kind: KeyKind::Ed25519,
                out: None,
                ..
            })
        ));
        for bad in [
            &["keys", "create"][..],
            &["keys", "create", "a", "--type", "dsa"],
            &["keys", "import", "a"],
            &["keys", "delete"],
            &["run", "--image", "ami-1", "--key"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        // `vireo run --key` is RunInstances' KeyName.
        let crate::Command::Run(args) = parse(&["run", "--image", "ami-1", "--key", "web"])
            .unwrap()
            .command
        else {
            panic!()
        };
        let p = crate::commands::run_params(&args, None, "tok");
        assert_eq!(p.get("KeyName"), Some("web"));
    }

    #[test]
    fn default_file_names() {
        assert_eq!(default_out("web").unwrap(), PathBuf::from("web.pem"));
        for bad in ["", "a/b", "..", "."] {
            assert_eq!(default_out(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }
}
