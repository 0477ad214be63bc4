//! Who a replica is: member ids, the cluster id, the `--initial-cluster` flag, and the
//! `CLUSTER` file that binds a data directory to one member of one cluster.
//!
//! Ids are derived, not assigned, so that replicas started from the same flags agree without
//! talking: a member's id is a hash of its name; a cluster's id is a hash of its token and its
//! initial members (as etcd derives its cluster id). A member added later learns the cluster
//! id from the first peer that contacts it.

use std::path::Path;

use crate::types::NodeId;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// A member's id: a hash of its name (names are unique in a cluster).
pub fn member_id(name: &str) -> NodeId {
    fnv1a(&[b"member", name.as_bytes()])
}

/// The id of a member added by its peer URL alone (etcd's MemberAdd carries no name): a hash
/// of the URL's authority. The member adopts it when it joins (it finds its peer URL in the
/// membership) and records it in its `CLUSTER` file.
pub fn member_id_for_peer_url(url: &str) -> NodeId {
    fnv1a(&[b"member-url", crate::network::authority(url).as_bytes()])
}

/// A cluster's id: a hash of its token and initial members (in name order).
pub fn cluster_id(token: &str, initial: &[(String, String)]) -> u64 {
    let mut members: Vec<String> = initial.iter().map(|(n, u)| format!("{n}={u}")).collect();
    members.sort();
    let joined = members.join(",");
    fnv1a(&[b"cluster", token.as_bytes(), joined.as_bytes()])
}

/// Parses `a=http://h:p,b=http://h:p` (etcd's `--initial-cluster`).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| format!("--initial-cluster entry {part:?} is not NAME=URL"))?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(format!("--initial-cluster member name {name:?} must be letters, digits, '-', '_' or '.'"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(format!("--initial-cluster URL {url:?} of {name} is not http(s)://HOST:PORT"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("--initial-cluster names {name} twice"));
        }
        if out.iter().any(|(_, u)| u == url) {
            return Err(format!("--initial-cluster gives {url} to two members"));
        }
        out.push((name.to_string(), url.to_string()));
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(out)
}

/// What `CLUSTER` in a replica's data directory says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: u64,
    pub name: String,
    /// The member's id: `member_id(name)` unless it joined as a member added by peer URL.
    /// (Files written before ids were recorded have no `id` line: theirs is `member_id(name)`.)
    pub id: NodeId,
}

impl Identity {
    /// A member whose id is its name's.
    pub fn named(cluster: u64, name: &str) -> Identity {
        Identity { cluster, name: name.to_string(), id: member_id(name) }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    fn encode(&self) -> String {
        let body = format!("capstan-cluster 1\ncluster {:016x}\nname {}\nid {:016x}\n", self.cluster, self.name, self.id);
        format!("{body}crc {}\n", crc32c::crc32c(body.as_bytes()))
    }

    fn decode(text: &str) -> Result<Identity, String> {
        let (body, crc) = text.trim_end().rsplit_once('\n').ok_or("no checksum line")?;
        let body = format!("{body}\n");
        let crc: u32 = crc.strip_prefix("crc ").and_then(|c| c.parse().ok()).ok_or("malformed checksum line")?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return Err("checksum mismatch".into());
        }
        let mut cluster = None;
        let mut name = None;
        let mut id = None;
        for line in body.lines() {
            match line.split_once(' ') {
                Some(("capstan-cluster", "1")) => {}
                Some(("cluster", v)) => cluster = u64::from_str_radix(v, 16).ok(),
                Some(("name", v)) => name = Some(v.to_string()),
                Some(("id", v)) => id = Some(u64::from_str_radix(v, 16).ok().filter(|i| *i != 0).ok_or_else(|| format!("malformed id line {line:?}"))?),
                _ => return Err(format!("unknown line {line:?}")),
            }
        }
        let name: String = name.ok_or("no name line")?;
        let id = id.unwrap_or_else(|| member_id(&name));
        Ok(Identity { cluster: cluster.ok_or("no cluster line")?, name, id })
    }

    pub fn read(dir: &Path) -> Result<Option<Identity>, String> {
        let path = dir.join("CLUSTER");
        match std::fs::read_to_string(&path) {
            Ok(t) => Identity::decode(&t).map(Some).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join("CLUSTER.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("CLUSTER"))?;
        storage::wal::fsync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_the_cluster_id_ignores_member_order() {
        let a = parse_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2").unwrap();
        let b = parse_initial_cluster("b=http://127.0.0.1:2, a=http://127.0.0.1:1").unwrap();
        assert_eq!(cluster_id("t", &a), cluster_id("t", &b));
        assert_ne!(cluster_id("t", &a), cluster_id("u", &a));
        assert_ne!(member_id("a"), member_id("b"));
    }

    #[test]
    fn bad_initial_clusters_are_refused_with_the_reason() {
        for (s, why) in [
            ("", "empty"),
            ("a", "NAME=URL"),
            ("a=ftp://x", "http"),
            ("a=http://h:1,a=http://h:2", "twice"),
            ("a=http://h:1,b=http://h:1", "two members"),
            ("a b=http://h:1", "letters"),
        ] {
            let e = parse_initial_cluster(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn identity_round_trips_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::named(0xabc, "m1");
        id.write(dir.path()).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(id.clone()));
        // A member that adopted a peer URL's id keeps it across restarts.
        let joined = Identity { cluster: 0xabc, name: "m1".into(), id: member_id_for_peer_url("http://h:1") };
        joined.write(dir.path()).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap().map(|i| i.id()), Some(member_id_for_peer_url("http://h:1")));
        // A file written before ids were recorded: the id is its name's.
        let body = "capstan-cluster 1\ncluster 0000000000000abc\nname m1\n";
        std::fs::write(dir.path().join("CLUSTER"), format!("{body}crc {}\n", crc32c::crc32c(body.as_bytes()))).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(Identity::named(0xabc, "m1")));
        id.write(dir.path()).unwrap();
        let p = dir.path().join("CLUSTER");
        let t = std::fs::read_to_string(&p).unwrap().replace("m1", "m2");
        std::fs::write(&p, t).unwrap();
        assert!(Identity::read(dir.path()).unwrap_err().contains("checksum"));
    }
}

/// The store snapshot's raft position for a cluster restored from a backup: every initial
/// member's store says the same thing, that the log up to `index` (term 0) is applied with
/// `initial` as the voting membership, so each starts with an empty log that follows it and
/// counts as initialized (none calls `initialize`; the first election is term 1). Members
/// added later receive a snapshot, as the log before it is gone.
pub fn restored_meta(initial: &[(String, String)], index: u64) -> bytes::Bytes {
    use std::collections::{BTreeMap, BTreeSet};
    let log_id = openraft::LogId::new(crate::types::LeaderId { term: 0, node_id: 0 }, index.max(1));
    let voters: BTreeSet<crate::types::NodeId> = initial.iter().map(|(n, _)| member_id(n)).collect();
    let nodes: BTreeMap<crate::types::NodeId, crate::types::Member> =
        initial.iter().map(|(n, u)| (member_id(n), crate::types::Member { name: n.clone(), peer_url: u.clone(), ..Default::default() })).collect();
    let membership = crate::types::Membership::new(vec![voters], nodes).expect("every voter is a node");
    let stored = crate::types::StoredMembership::new(Some(log_id), membership);
    crate::codec::applied_meta(&Some(log_id), &stored)
}
