//! The types openraft is configured with.

use std::fmt;

use bytes::Bytes;

/// A raft entry's application payload: a batch of store commands, encoded once by the proposer
/// (`storage::command`), carried as bytes through the log and the network, decoded when applied.
/// Its crc32c is computed once, where the bytes are made (or first checked, on a follower), so
/// every later encoding of the entry checksums only its small header.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub bytes: Bytes,
    pub crc: u32,
}

impl Batch {
    pub fn new(bytes: Bytes) -> Batch {
        let crc = crc32c::crc32c(&bytes);
        Batch { bytes, crc }
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Batch({} bytes)", self.bytes.len())
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.bytes.len())
    }
}

/// What applying an entry answered, one answer per command of its batch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Answers(pub Vec<storage::Applied>);

/// A member of the cluster as the membership records it.
#[derive(Clone, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Member {
    pub name: String,
    /// Where its peers reach it (`http://host:port`).
    pub peer_url: String,
    /// Where its Kubernetes API is served (empty until it says).
    pub api_url: String,
    /// Where it serves etcd's API (etcd's client URL; empty until it says, or if it does not).
    pub client_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_url)
    }
}

openraft::declare_raft_types!(
    /// capstan's raft: node ids are `u64` (a hash of the member's name), entries carry batches.
    pub TypeConfig:
        D = Batch,
        R = Answers,
        NodeId = u64,
        Node = Member,
);

pub type NodeId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
