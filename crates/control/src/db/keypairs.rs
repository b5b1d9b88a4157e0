//! Key pairs in the state database: the public half, its kind, EC2's fingerprint and the pair's
//! id (schema migration 4). Private keys are never stored. Tags are in the shared `tags` table.

use rusqlite::{params, OptionalExtension, Row};

use super::{put_tag, Db, DbError, Result};
use crate::model::{KeyPair, KeyType};

/// Migration 4. Names are unique (EC2: one pair of a name per account and region), compared
/// exactly (case matters, as on EC2).
pub const SCHEMA: &str = "CREATE TABLE key_pairs(
    key_pair_id TEXT PRIMARY KEY,
    key_name TEXT NOT NULL UNIQUE,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    create_time TEXT NOT NULL);";

const COLUMNS: &str = "key_pair_id, key_name, key_type, public_key, fingerprint, create_time";

fn from_row(r: &Row<'_>) -> rusqlite::Result<KeyPair> {
    let ty: String = r.get(2)?;
    let key_type = ty.parse::<KeyType>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(KeyPair {
        key_pair_id: r.get(0)?,
        key_name: r.get(1)?,
        key_type,
        public_key: r.get(3)?,
        fingerprint: r.get(4)?,
        create_time: r.get(5)?,
        tags: Vec::new(),
    })
}

impl Db {
    /// Adds a key pair with its tags; `Ok(false)` when a pair of that name exists (nothing is
    /// written then).
    pub fn insert_key_pair(&mut self, k: &KeyPair) -> Result<bool> {
        let tx = self.transaction()?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM key_pairs WHERE key_name = ?1)",
            [&k.key_name],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(false);
        }
        tx.execute(
            &format!("INSERT INTO key_pairs({COLUMNS}) VALUES(?1,?2,?3,?4,?5,?6)"),
            params![
                k.key_pair_id,
                k.key_name,
                k.key_type.name(),
                k.public_key,
                k.fingerprint,
                k.create_time
            ],
        )?;
        for t in &k.tags {
            put_tag(&tx, &k.key_pair_id, &t.key, &t.value)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every key pair, oldest first, with its tags.
    pub fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        let mut st = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM key_pairs ORDER BY rowid"))?;
        let mut list: Vec<KeyPair> = st
            .query_map([], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        for k in &mut list {
            k.tags = self.tags(&k.key_pair_id)?;
        }
        Ok(list)
    }

    pub fn key_pair_by_name(&self, name: &str) -> Result<Option<KeyPair>> {
        self.one_key_pair("key_name", name)
    }

    pub fn key_pair_by_id(&self, id: &str) -> Result<Option<KeyPair>> {
        self.one_key_pair("key_pair_id", id)
    }

    fn one_key_pair(&self, column: &str, value: &str) -> Result<Option<KeyPair>> {
        let k = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM key_pairs WHERE {column} = ?1"),
                [value],
                from_row,
            )
            .optional()?;
        match k {
            Some(mut k) => {
                k.tags = self.tags(&k.key_pair_id)?;
                Ok(Some(k))
            }
            None => Ok(None),
        }
    }

    /// Deletes a key pair and its tags; whether it existed.
    pub fn delete_key_pair(&mut self, id: &str) -> Result<bool> {
        let tx = self.transaction()?;
        let n = tx.execute("DELETE FROM key_pairs WHERE key_pair_id = ?1", [id])?;
        tx.execute("DELETE FROM tags WHERE resource_id = ?1", [id])?;
        tx.commit().map_err(DbError::from)?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tag;

    fn pair(id: &str, name: &str) -> KeyPair {
        KeyPair {
            key_pair_id: id.into(),
            key_name: name.into(),
            key_type: KeyType::Ed25519,
            public_key: format!("ssh-ed25519 AAAA {name}"),
            fingerprint: "fp=".into(),
            create_time: "2024-01-01T00:00:00.000Z".into(),
            tags: vec![Tag::new("team", "a")],
        }
    }

    #[test]
    fn key_pairs_round_trip_names_are_unique_and_delete_takes_the_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("state.db")).unwrap();
        let a = pair("key-0123456789abcdef0", "a");
        assert!(db.insert_key_pair(&a).unwrap());
        assert!(
            !db.insert_key_pair(&pair("key-0123456789abcdef1", "a"))
                .unwrap(),
            "a second pair named a"
        );
        // Names are compared exactly.
        let upper = pair("key-0123456789abcdef2", "A");
        assert!(db.insert_key_pair(&upper).unwrap());
        assert_eq!(db.key_pairs().unwrap(), vec![a.clone(), upper]);
        assert_eq!(db.key_pair_by_name("a").unwrap(), Some(a.clone()));
        assert_eq!(db.key_pair_by_id(&a.key_pair_id).unwrap(), Some(a.clone()));
        assert!(db.delete_key_pair(&a.key_pair_id).unwrap());
        assert!(!db.delete_key_pair(&a.key_pair_id).unwrap());
        assert_eq!(db.key_pair_by_name("a").unwrap(), None);
        assert!(db.tags(&a.key_pair_id).unwrap().is_empty());
    }
}
