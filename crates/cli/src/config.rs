//! Where to connect and as whom, resolved the way the AWS CLI resolves it.
//!
//! - Endpoint: `--endpoint`, else `VIREO_ENDPOINT`, else `http://127.0.0.1:8787`.
//! - Credentials: an explicit `--profile` reads that profile; otherwise `AWS_ACCESS_KEY_ID` and
//!   `AWS_SECRET_ACCESS_KEY` when both are set; otherwise the profile `AWS_PROFILE` names, or
//!   `vireo` (the profile `vireod init` writes), from the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`).
//! - Region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in the config
//!   file (`AWS_CONFIG_FILE`, else `~/.aws/config`; section `[profile NAME]`, or `[default]`), the
//!   same key in the credentials file, else `us-east-1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vireo_ec2_api::sigv4::Credentials;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8787";
pub const DEFAULT_PROFILE: &str = "vireo";
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `vireod init` to write the '{profile}' profile to {file}")]
    NoCredentials { profile: String, file: String },
    #[error("profile '{profile}' in {file} lacks {key}")]
    IncompleteProfile {
        profile: String,
        file: String,
        key: &'static str,
    },
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file} line {line}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("the endpoint '{0}' is not http://HOST[:PORT][/PATH] (vireo speaks plain HTTP to a local vireod)")]
    BadEndpoint(String),
}

/// What the CLI was given on its command line.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
}

/// The environment, passed in so tests do not depend on (or change) the process's.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

/// A parsed `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The Host header: `host[:port]`, without `:80`.
    pub host: String,
    /// The base path, `/` when none.
    pub path: String,
    /// The URL requests go to.
    pub url: String,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, ConfigError> {
        let bad = || ConfigError::BadEndpoint(s.to_string());
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || path.contains(['?', '#'])
            || authority.chars().any(|c| c.is_whitespace())
        {
            return Err(bad());
        }
        let host = match authority.rsplit_once(':') {
            // An IPv6 literal's colons are inside brackets; a port follows the last `]`.
            Some((h, port)) if !port.contains(']') => {
                let port: u16 = port.parse().map_err(|_| bad())?;
                if h.is_empty() {
                    return Err(bad());
                }
                if port == 80 {
                    h.to_string()
                } else {
                    format!("{h}:{port}")
                }
            }
            _ => authority.to_string(),
        };
        Ok(Endpoint {
            url: format!("http://{host}{path}"),
            host,
            path: path.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    pub region: String,
}

/// Sections by name, each a map of keys to values.
type Ini = HashMap<String, HashMap<String, String>>;

fn home_file(env: &dyn Env, var: &str, rel: &str) -> PathBuf {
    if let Some(p) = env.var(var) {
        return PathBuf::from(p);
    }
    let home = env.var("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(rel)
}

/// Sections of an AWS-style INI file: `[name]` then `key = value` lines; `#` and `;` start
/// comments; indented lines (nested settings such as `s3 =`'s) are skipped.
fn parse_ini(text: &str, file: &str) -> Result<Ini, ConfigError> {
    let mut out: Ini = HashMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && current.is_some() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| ConfigError::Syntax {
                file: file.into(),
                line: i + 1,
                reason: "a section header must end with ']'".into(),
            })?;
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                file: file.into(),
                line: i + 1,
                reason: "expected 'key = value'".into(),
            });
        };
        if let Some(section) = &current {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Ok(out)
}

fn read_ini(path: &Path) -> Result<Option<Ini>, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_ini(&text, &file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Unreadable {
            file,
            reason: e.to_string(),
        }),
    }
}

/// The endpoint alone, for commands that need no credentials (`vireo top`).
pub fn resolve_endpoint(flags: &Flags, env: &dyn Env) -> Result<Endpoint, ConfigError> {
    Endpoint::parse(
        &flags
            .endpoint
            .clone()
            .or_else(|| env.var("VIREO_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
    )
}

pub fn resolve(flags: &Flags, env: &dyn Env) -> Result<Resolved, ConfigError> {
    let endpoint = resolve_endpoint(flags, env)?;
    let profile = flags
        .profile
        .clone()
        .or_else(|| env.var("AWS_PROFILE"))
        .unwrap_or_else(|| DEFAULT_PROFILE.into());
    let creds_path = home_file(env, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_path = home_file(env, "AWS_CONFIG_FILE", ".aws/config");
    let creds_file = read_ini(&creds_path)?;
    let creds_section = creds_file.as_ref().and_then(|f| f.get(&profile));

    let from_env = match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(a), Some(s)) if flags.profile.is_none() => Some(Credentials {
            access_key_id: a,
            secret_access_key: s,
        }),
        _ => None,
    };
    let credentials = match from_env {
        Some(c) => c,
        None => {
            let file = creds_path.display().to_string();
            let section = creds_section.ok_or_else(|| ConfigError::NoCredentials {
                profile: profile.clone(),
                file: file.clone(),
            })?;
            let get = |key: &'static str| {
                section
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| ConfigError::IncompleteProfile {
                        profile: profile.clone(),
                        file: file.clone(),
                        key,
                    })
            };
            Credentials {
                access_key_id: get("aws_access_key_id")?,
                secret_access_key: get("aws_secret_access_key")?,
            }
        }
    };

    let config_section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let region_from_config = read_ini(&config_path)?.and_then(|f| {
        f.get(&config_section)
            .and_then(|s| s.get("region").cloned())
    });
    let region = flags
        .region
        .clone()
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or(region_from_config)
        .or_else(|| creds_section.and_then(|s| s.get("region").cloned()))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| DEFAULT_REGION.into());
    Ok(Resolved {
        endpoint,
        credentials,
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("127.0.0.1:8787", "/"));
        assert_eq!(e.url, "http://127.0.0.1:8787/");
        let e = Endpoint::parse("http://localhost:80/api").unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("localhost", "/api"));
        let e = Endpoint::parse("http://[::1]:9000/").unwrap();
        assert_eq!(e.host, "[::1]:9000");
        let e = Endpoint::parse("http://[::1]/").unwrap();
        assert_eq!(e.host, "[::1]");
        for bad in [
            "https://x",
            "127.0.0.1:8787",
            "http://",
            "http://:80",
            "http://h:port",
            "http://h:99999",
            "http://u@h",
            "http://h/?a",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ini_files() {
        let ini = parse_ini(
            "# comment\n[vireo]\naws_access_key_id = AK\naws_secret_access_key=SK = with equals\n; c\n[profile other]\nregion = eu\ns3 =\n  max_concurrent_requests = 2\n",
            "f",
        )
        .unwrap();
        assert_eq!(ini["vireo"]["aws_access_key_id"], "AK");
        assert_eq!(ini["vireo"]["aws_secret_access_key"], "SK = with equals");
        assert_eq!(ini["profile other"]["region"], "eu");
        assert!(!ini["profile other"].contains_key("max_concurrent_requests"));
        assert!(parse_ini("[broken\n", "f").is_err());
        assert!(parse_ini("[a]\nnot a pair\n", "f").is_err());
    }

    #[test]
    fn resolution_order() {
        let d = tmpdir("resolve");
        let creds = d.join("credentials");
        let config = d.join("config");
        std::fs::write(
            &creds,
            "[vireo]\naws_access_key_id=AKVIREO\naws_secret_access_key=SKVIREO\n[other]\naws_access_key_id=AKOTHER\naws_secret_access_key=SKOTHER\nregion=from-creds\n[half]\naws_access_key_id=AKHALF\n",
        )
        .unwrap();
        std::fs::write(&config, "[profile vireo]\nregion = vireo-local\n").unwrap();
        let cp = creds.to_str().unwrap();
        let fp = config.to_str().unwrap();
        let base: HashMap<&str, &str> =
            [("AWS_SHARED_CREDENTIALS_FILE", cp), ("AWS_CONFIG_FILE", fp)].into();

        let r = resolve(&Flags::default(), &base).unwrap();
        assert_eq!(r.credentials.access_key_id, "AKVIREO");
        assert_eq!(r.region, "vireo-local");
        assert_eq!(r.endpoint.url, "http://127.0.0.1:8787/");

        let mut env = base.clone();
        env.insert("AWS_ACCESS_KEY_ID", "AKENV");
        env.insert("AWS_SECRET_ACCESS_KEY", "SKENV");
        env.insert("VIREO_ENDPOINT", "http://127.0.0.1:9999");
        env.insert("AWS_DEFAULT_REGION", "env-region");
        let r = resolve(&Flags::default(), &env).unwrap();
        assert_eq!(r.credentials.access_key_id, "AKENV");
        assert_eq!(r.region, "env-region");
        assert_eq!(r.endpoint.host, "127.0.0.1:9999");

        // An explicit --profile wins over the environment's keys, as in the AWS CLI.
        let flags = Flags {
            profile: Some("other".into()),
            region: Some("flag-region".into()),
            endpoint: Some("http://localhost:1".into()),
        };
        let r = resolve(&flags, &env).unwrap();
        assert_eq!(r.credentials.access_key_id, "AKOTHER");
        assert_eq!(r.region, "flag-region");
        assert_eq!(r.endpoint.host, "localhost:1");

        let mut env = base.clone();
        env.insert("AWS_PROFILE", "other");
        let r = resolve(&Flags::default(), &env).unwrap();
        assert_eq!(r.region, "from-creds");

        env.insert("AWS_PROFILE", "half");
        let e = resolve(&Flags::default(), &env).unwrap_err();
        assert!(e.to_string().contains("lacks aws_secret_access_key"), "{e}");

        env.insert("AWS_PROFILE", "nobody");
        let e = resolve(&Flags::default(), &env).unwrap_err();
        assert!(matches!(e, ConfigError::NoCredentials { .. }), "{e}");

        let none: HashMap<&str, &str> = [
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/vireo/credentials",
            ),
            ("AWS_CONFIG_FILE", "/nonexistent/vireo/config"),
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
        ]
        .into();
        let r = resolve(&Flags::default(), &none).unwrap();
        assert_eq!(r.region, DEFAULT_REGION);
        let _ = std::fs::remove_dir_all(&d);
    }
}
