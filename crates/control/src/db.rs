//! vireod's state in embedded SQLite: access keys, images, instances, tags and idempotency tokens.
//! The schema evolves through numbered migrations (rusqlite_migration, tracked in SQLite's
//! `user_version`), applied when the database is opened. VPC networking's tables and queries
//! are in [`network`], key pairs' in [`keypairs`].

pub mod keypairs;
pub mod network;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};
use rusqlite_migration::{Migrations, M};

use crate::model::{
    Image, Instance, InstanceAttributes, InstanceState, MetadataOptions, StateReason, Tag,
};
use crate::process::ProcessId;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("state database holds a bad value: {0}")]
    Corrupt(String),
    /// vireod's paths are stored as text; one that is not UTF-8 cannot be.
    #[error("state database: the path {0:?} is not UTF-8")]
    PathNotUtf8(PathBuf),
}

pub type Result<T> = std::result::Result<T, DbError>;

/// A path as the database stores it (text).
fn path_text(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| DbError::PathNotUtf8(p.to_path_buf()))
}

fn opt_path_text(p: Option<&PathBuf>) -> Result<Option<&str>> {
    p.map(|p| path_text(p)).transpose()
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        // 1: the first schema.
        M::up(
            "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE access_keys(
             access_key_id TEXT PRIMARY KEY,
             secret TEXT NOT NULL,
             created TEXT NOT NULL);
         CREATE TABLE images(
             image_id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             description TEXT NOT NULL DEFAULT '',
             owner_id TEXT NOT NULL,
             state TEXT NOT NULL,
             architecture TEXT NOT NULL,
             boot_mode TEXT NOT NULL,
             kernel TEXT NOT NULL,
             initrd TEXT,
             root_disk TEXT,
             cmdline TEXT NOT NULL,
             creation_date TEXT NOT NULL,
             source_instance_id TEXT,
             deregistered INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE instances(
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             instance_id TEXT NOT NULL UNIQUE,
             reservation_id TEXT NOT NULL,
             owner_id TEXT NOT NULL,
             image_id TEXT NOT NULL,
             instance_type TEXT NOT NULL,
             vcpus INTEGER NOT NULL,
             memory_mib INTEGER NOT NULL,
             state TEXT NOT NULL,
             reason_code TEXT,
             reason_message TEXT,
             launch_time TEXT NOT NULL,
             launch_index INTEGER NOT NULL,
             client_token TEXT,
             user_data BLOB NOT NULL,
             dir TEXT NOT NULL,
             pid INTEGER,
             pid_start INTEGER);
         CREATE INDEX instances_reservation ON instances(reservation_id);
         CREATE TABLE tags(
             resource_id TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             PRIMARY KEY(resource_id, key));
         CREATE TABLE client_tokens(
             owner_id TEXT NOT NULL,
             token TEXT NOT NULL,
             request_hash TEXT NOT NULL,
             reservation_id TEXT NOT NULL,
             PRIMARY KEY(owner_id, token));",
        ),
        // 2: the migration host an instance's VMM runs on (0: vireod's own namespace).
        M::up("ALTER TABLE instances ADD COLUMN host INTEGER NOT NULL DEFAULT 0;"),
        // 3: VPC networking (VPCs, subnets, groups, interfaces, gateways, routes, addresses).
        M::up(network::SCHEMA),
        // 4: key pairs (public halves only).
        M::up(keypairs::SCHEMA),
        // 5: an instance's key pair (its name and public key, kept when the pair is deleted)
        // and the attributes of ModifyInstanceAttribute.
        M::up(
            "ALTER TABLE instances ADD COLUMN key_name TEXT;
             ALTER TABLE instances ADD COLUMN public_key TEXT;
             ALTER TABLE instances ADD COLUMN disable_api_termination INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE instances ADD COLUMN disable_api_stop INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE instances ADD COLUMN shutdown_behavior TEXT NOT NULL DEFAULT 'stop';",
        ),
        // 6: the instance metadata options (RunInstances MetadataOptions, EC2's defaults).
        M::up(
            "ALTER TABLE instances ADD COLUMN imds_tokens_required INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE instances ADD COLUMN imds_hop_limit INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE instances ADD COLUMN imds_endpoint INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE instances ADD COLUMN imds_tags INTEGER NOT NULL DEFAULT 0;",
        ),
    ])
}

/// The open state database.
pub struct Db {
    conn: Connection,
}

const INSTANCE_COLUMNS: &str =
    "seq, instance_id, reservation_id, owner_id, image_id, instance_type, \
     vcpus, memory_mib, state, reason_code, reason_message, launch_time, launch_index, \
     client_token, user_data, dir, pid, pid_start, host, key_name, public_key, \
     disable_api_termination, disable_api_stop, shutdown_behavior, \
     imds_tokens_required, imds_hop_limit, imds_endpoint, imds_tags";

const IMAGE_COLUMNS: &str =
    "image_id, name, description, owner_id, state, architecture, boot_mode, \
     kernel, initrd, root_disk, cmdline, creation_date, source_instance_id";

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn = Connection::open(path)?;
        // WAL: readers never wait for the writer. FULL: every commit is on disk before it
        // returns, so what the API has acknowledged survives a power loss (NORMAL may lose the
        // last commits, e.g. an image registered just before, while its files stay).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut conn)?;
        Ok(Db { conn })
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn transaction(&mut self) -> Result<rusqlite::Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    // --- settings and keys -----------------------------------------------------------------

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings(key, value) VALUES(?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    pub fn add_access_key(&self, id: &str, secret: &str, created: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO access_keys(access_key_id, secret, created) VALUES(?1, ?2, ?3)",
            [id, secret, created],
        )?;
        Ok(())
    }

    pub fn access_keys(&self) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT access_key_id, secret FROM access_keys")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- tags ----------------------------------------------------------------------------------

    pub fn tags(&self, resource_id: &str) -> Result<Vec<Tag>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value FROM tags WHERE resource_id = ?1 ORDER BY key")?;
        let rows = st.query_map([resource_id], |r| {
            Ok(Tag {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// All tags, as (resource, tag), ordered by resource and key.
    pub fn all_tags(&self) -> Result<Vec<(String, Tag)>> {
        let mut st = self
            .conn
            .prepare("SELECT resource_id, key, value FROM tags ORDER BY resource_id, key")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                Tag {
                    key: r.get(1)?,
                    value: r.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- images --------------------------------------------------------------------------------

    pub fn insert_image(tx: &rusqlite::Transaction<'_>, img: &Image) -> Result<()> {
        tx.execute(
            &format!("INSERT INTO images({IMAGE_COLUMNS}) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"),
            params![
                img.image_id,
                img.name,
                img.description,
                img.owner_id,
                img.state,
                img.architecture,
                img.boot_mode,
                path_text(&img.kernel)?,
                opt_path_text(img.initrd.as_ref())?,
                opt_path_text(img.root_disk.as_ref())?,
                img.cmdline,
                img.creation_date,
                img.source_instance_id
            ],
        )?;
        for t in &img.tags {
            put_tag(tx, &img.image_id, &t.key, &t.value)?;
        }
        Ok(())
    }

    fn image_from_row(r: &Row<'_>) -> rusqlite::Result<Image> {
        Ok(Image {
            image_id: r.get(0)?,
            name: r.get(1)?,
            description: r.get(2)?,
            owner_id: r.get(3)?,
            state: r.get(4)?,
            architecture: r.get(5)?,
            boot_mode: r.get(6)?,
            kernel: PathBuf::from(r.get::<_, String>(7)?),
            initrd: r.get::<_, Option<String>>(8)?.map(PathBuf::from),
            root_disk: r.get::<_, Option<String>>(9)?.map(PathBuf::from),
            cmdline: r.get(10)?,
            creation_date: r.get(11)?,
            source_instance_id: r.get(12)?,
            tags: Vec::new(),
        })
    }

    /// A registered (not deregistered) image.
    pub fn image(&self, image_id: &str) -> Result<Option<Image>> {
        let img = self
            .conn
            .query_row(
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = ?1 AND deregistered = 0"
                ),
                [image_id],
                Self::image_from_row,
            )
            .optional()?;
        match img {
            Some(mut img) => {
                img.tags = self.tags(&img.image_id)?;
                Ok(Some(img))
            }
            None => Ok(None),
        }
    }

    /// Every registered image, oldest first.
    pub fn images(&self) -> Result<Vec<Image>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE deregistered = 0 ORDER BY rowid"
        ))?;
        let mut imgs: Vec<Image> = st
            .query_map([], Self::image_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        for img in &mut imgs {
            img.tags = self.tags(&img.image_id)?;
        }
        Ok(imgs)
    }

    pub fn set_image_state(&self, image_id: &str, state: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE images SET state = ?2 WHERE image_id = ?1",
            [image_id, state],
        )?;
        Ok(())
    }

    /// Marks an image deregistered; its files stay while instances still use them.
    pub fn deregister_image(&self, image_id: &str) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE images SET deregistered = 1 WHERE image_id = ?1 AND deregistered = 0",
            [image_id],
        )?;
        self.conn
            .execute("DELETE FROM tags WHERE resource_id = ?1", [image_id])?;
        Ok(n == 1)
    }

    /// Deregistered images no instance (other than terminated ones) uses any more: their files
    /// can go.
    pub fn unused_deregistered_images(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT image_id FROM images i WHERE deregistered = 1 AND NOT EXISTS
               (SELECT 1 FROM instances n WHERE n.image_id = i.image_id AND n.state != 'terminated')",
        )?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn forget_image(&self, image_id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM images WHERE image_id = ?1", [image_id])?;
        Ok(())
    }

    // --- instances -----------------------------------------------------------------------------

    pub fn insert_instance(tx: &rusqlite::Transaction<'_>, i: &Instance) -> Result<()> {
        tx.execute(
            "INSERT INTO instances(instance_id, reservation_id, owner_id, image_id, instance_type,
                 vcpus, memory_mib, state, reason_code, reason_message, launch_time, launch_index,
                 client_token, user_data, dir, pid, pid_start, key_name, public_key,
                 disable_api_termination, disable_api_stop, shutdown_behavior,
                 imds_tokens_required, imds_hop_limit, imds_endpoint, imds_tags)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,
                    ?23,?24,?25,?26)",
            params![
                i.instance_id,
                i.reservation_id,
                i.owner_id,
                i.image_id,
                i.instance_type,
                i.vcpus,
                i.memory_mib as i64,
                i.state.name(),
                i.state_reason.as_ref().map(|r| &r.code),
                i.state_reason.as_ref().map(|r| &r.message),
                i.launch_time,
                i.launch_index,
                i.client_token,
                i.user_data,
                path_text(&i.dir)?,
                i.pid.map(|p| p.pid),
                i.pid.map(|p| p.start_time as i64),
                i.key_name,
                i.public_key,
                i.attributes.disable_api_termination,
                i.attributes.disable_api_stop,
                i.attributes.shutdown_behavior.name(),
                i.metadata_options.tokens_required,
                i.metadata_options.hop_limit,
                i.metadata_options.endpoint_enabled,
                i.metadata_options.tags_enabled,
            ],
        )?;
        for t in &i.tags {
            put_tag(tx, &i.instance_id, &t.key, &t.value)?;
        }
        Ok(())
    }

    fn instance_from_row(r: &Row<'_>) -> rusqlite::Result<Instance> {
        let state: String = r.get(8)?;
        let state = state.parse::<InstanceState>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, e.into())
        })?;
        let behavior: String = r.get(23)?;
        let shutdown_behavior = behavior.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(23, rusqlite::types::Type::Text, e.into())
        })?;
        let code: Option<String> = r.get(9)?;
        let message: Option<String> = r.get(10)?;
        Ok(Instance {
            seq: r.get(0)?,
            instance_id: r.get(1)?,
            reservation_id: r.get(2)?,
            owner_id: r.get(3)?,
            image_id: r.get(4)?,
            instance_type: r.get(5)?,
            vcpus: r.get(6)?,
            memory_mib: r.get::<_, i64>(7)? as u64,
            state,
            state_reason: code.map(|code| StateReason {
                code,
                message: message.unwrap_or_default(),
            }),
            launch_time: r.get(11)?,
            launch_index: r.get(12)?,
            client_token: r.get(13)?,
            user_data: r.get(14)?,
            dir: PathBuf::from(r.get::<_, String>(15)?),
            // Both or neither are stored; a PID without its start time could be anyone's.
            pid: match (r.get::<_, Option<i32>>(16)?, r.get::<_, Option<i64>>(17)?) {
                (Some(pid), Some(start)) => Some(ProcessId {
                    pid,
                    start_time: start as u64,
                }),
                _ => None,
            },
            host: r.get(18)?,
            tags: Vec::new(),
            key_name: r.get(19)?,
            public_key: r.get(20)?,
            attributes: InstanceAttributes {
                disable_api_termination: r.get(21)?,
                disable_api_stop: r.get(22)?,
                shutdown_behavior,
            },
            metadata_options: MetadataOptions {
                tokens_required: r.get(24)?,
                hop_limit: r.get(25)?,
                endpoint_enabled: r.get(26)?,
                tags_enabled: r.get(27)?,
            },
        })
    }

    pub fn instance(&self, instance_id: &str) -> Result<Option<Instance>> {
        let inst = self
            .conn
            .query_row(
                &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?1"),
                [instance_id],
                Self::instance_from_row,
            )
            .optional()?;
        match inst {
            Some(mut i) => {
                i.tags = self.tags(&i.instance_id)?;
                Ok(Some(i))
            }
            None => Ok(None),
        }
    }

    /// Every instance in launch order, tags included.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY seq"
        ))?;
        let mut list: Vec<Instance> = st
            .query_map([], Self::instance_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        // One pass over the tag table instead of a query per instance.
        let mut st = self.conn.prepare_cached(
            "SELECT resource_id, key, value FROM tags WHERE resource_id LIKE 'i-%' ORDER BY resource_id, key",
        )?;
        let mut tags: std::collections::HashMap<String, Vec<Tag>> =
            std::collections::HashMap::new();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (id, k, v) = row?;
            tags.entry(id).or_default().push(Tag { key: k, value: v });
        }
        for i in &mut list {
            if let Some(t) = tags.remove(&i.instance_id) {
                i.tags = t;
            }
        }
        Ok(list)
    }

    pub fn set_state(
        &self,
        instance_id: &str,
        state: InstanceState,
        reason: Option<&StateReason>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET state = ?2, reason_code = ?3, reason_message = ?4
             WHERE instance_id = ?1",
            params![
                instance_id,
                state.name(),
                reason.map(|r| &r.code),
                reason.map(|r| &r.message)
            ],
        )?;
        Ok(())
    }

    pub fn set_process(&self, instance_id: &str, pid: Option<ProcessId>) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET pid = ?2, pid_start = ?3 WHERE instance_id = ?1",
            params![
                instance_id,
                pid.map(|p| p.pid),
                pid.map(|p| p.start_time as i64)
            ],
        )?;
        Ok(())
    }

    pub fn set_host(&self, instance_id: &str, host: u32) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET host = ?2 WHERE instance_id = ?1",
            params![instance_id, host],
        )?;
        Ok(())
    }

    /// ModifyInstanceAttribute userData (of a stopped instance).
    pub fn set_user_data(&self, instance_id: &str, user_data: &[u8]) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET user_data = ?2 WHERE instance_id = ?1",
            params![instance_id, user_data],
        )?;
        Ok(())
    }

    /// ModifyInstanceAttribute's protections and shutdown behaviour.
    pub fn set_instance_attributes(&self, instance_id: &str, a: &InstanceAttributes) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET disable_api_termination = ?2, disable_api_stop = ?3,
                 shutdown_behavior = ?4 WHERE instance_id = ?1",
            params![
                instance_id,
                a.disable_api_termination,
                a.disable_api_stop,
                a.shutdown_behavior.name()
            ],
        )?;
        Ok(())
    }

    /// ModifyInstanceMetadataOptions.
    pub fn set_metadata_options(&self, instance_id: &str, m: &MetadataOptions) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET imds_tokens_required = ?2, imds_hop_limit = ?3,
                 imds_endpoint = ?4, imds_tags = ?5 WHERE instance_id = ?1",
            params![
                instance_id,
                m.tokens_required,
                m.hop_limit,
                m.endpoint_enabled,
                m.tags_enabled
            ],
        )?;
        Ok(())
    }

    pub fn set_instance_type(
        &self,
        instance_id: &str,
        name: &str,
        vcpus: u32,
        memory_mib: u64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET instance_type = ?2, vcpus = ?3, memory_mib = ?4 WHERE instance_id = ?1",
            params![instance_id, name, vcpus, memory_mib as i64],
        )?;
        Ok(())
    }

    /// vCPUs and MiB held by instances that have a VMM.
    pub fn used_capacity(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(vcpus), 0), COALESCE(SUM(memory_mib), 0) FROM instances
             WHERE state IN ('pending', 'running', 'stopping', 'shutting-down')",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    // --- idempotency tokens --------------------------------------------------------------------

    pub fn client_token(&self, owner: &str, token: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT request_hash, reservation_id FROM client_tokens WHERE owner_id = ?1 AND token = ?2",
                [owner, token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn insert_client_token(
        tx: &rusqlite::Transaction<'_>,
        owner: &str,
        token: &str,
        hash: &str,
        reservation: &str,
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO client_tokens(owner_id, token, request_hash, reservation_id) VALUES(?1,?2,?3,?4)",
            [owner, token, hash, reservation],
        )?;
        Ok(())
    }
}

/// Sets one tag (EC2: a resource has at most one value per key; setting again overwrites).
pub fn put_tag(conn: &Connection, resource: &str, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO tags(resource_id, key, value) VALUES(?1, ?2, ?3)
         ON CONFLICT(resource_id, key) DO UPDATE SET value = excluded.value",
        [resource, key, value],
    )?;
    Ok(())
}

/// Deletes one tag; with `value`, only when the tag has that value (EC2's DeleteTags).
pub fn delete_tag(conn: &Connection, resource: &str, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => conn.execute(
            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2 AND value = ?3",
            [resource, key, v],
        )?,
        None => conn.execute(
            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2",
            [resource, key],
        )?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_reopen_is_idempotent() {
        migrations().validate().unwrap();
        let dir = std::env::temp_dir().join(format!("vireo-db-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let db = Db::open(&path).unwrap();
            db.set_setting("owner_id", "123456789012").unwrap();
            assert_eq!(db.schema_version().unwrap(), 6);
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(
            db.setting("owner_id").unwrap().as_deref(),
            Some("123456789012")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A commit vireod has acknowledged must survive a power loss: WAL with `synchronous=FULL`
    /// (NORMAL may lose the last transactions, e.g. an image registered just before).
    #[test]
    fn commits_are_synced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db")).unwrap();
        let sync: i64 = db
            .conn()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous must be FULL (2)");
        let mode: String = db
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// An instance's typed fields (its VMM process, directory and tags) come back as stored,
    /// and a process is recorded and cleared as one.
    #[test]
    fn instances_round_trip_with_their_process_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("state.db")).unwrap();
        let pid = ProcessId {
            pid: 4242,
            start_time: 1_234_567,
        };
        let inst = Instance {
            seq: 0,
            instance_id: "i-0123456789abcdef0".into(),
            reservation_id: "r-0123456789abcdef0".into(),
            owner_id: "123456789012".into(),
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.micro".into(),
            vcpus: 2,
            memory_mib: 1024,
            state: InstanceState::Pending,
            state_reason: None,
            launch_time: "2024-01-01T00:00:00.000Z".into(),
            launch_index: 0,
            client_token: None,
            user_data: b"#!/bin/sh".to_vec(),
            dir: dir.path().join("instances/i-0123456789abcdef0"),
            pid: Some(pid),
            host: 0,
            tags: vec![Tag::new("Name", "web"), Tag::new("env", "")],
            key_name: Some("my-key".into()),
            public_key: Some("ssh-ed25519 AAAA my-key".into()),
            attributes: InstanceAttributes {
                disable_api_termination: true,
                disable_api_stop: false,
                shutdown_behavior: crate::model::ShutdownBehavior::Terminate,
            },
            metadata_options: MetadataOptions {
                tokens_required: true,
                hop_limit: 2,
                endpoint_enabled: false,
                tags_enabled: true,
            },
        };
        let tx = db.transaction().unwrap();
        Db::insert_instance(&tx, &inst).unwrap();
        tx.commit().unwrap();
        let got = db.instance(&inst.instance_id).unwrap().unwrap();
        assert_eq!(
            got,
            Instance {
                seq: got.seq,
                ..inst.clone()
            }
        );
        assert_eq!(db.instances().unwrap(), vec![got]);
        db.set_process(&inst.instance_id, None).unwrap();
        assert_eq!(db.instance(&inst.instance_id).unwrap().unwrap().pid, None);
        db.set_instance_attributes(&inst.instance_id, &InstanceAttributes::default())
            .unwrap();
        assert_eq!(
            db.instance(&inst.instance_id).unwrap().unwrap().attributes,
            InstanceAttributes::default()
        );
        db.set_metadata_options(&inst.instance_id, &MetadataOptions::default())
            .unwrap();
        assert_eq!(
            db.instance(&inst.instance_id)
                .unwrap()
                .unwrap()
                .metadata_options,
            MetadataOptions::default()
        );
    }
}
