//! Node IPAM: each node's pod range (`spec.podCIDR`), a subnet of the cluster's
//! (`--cluster-cidr`) of `--node-cidr-mask-size` bits, as kube-controller-manager's range
//! allocator gives them. The decisions are here, pure; the controller that applies them is
//! `run/ipam.rs`.
//!
//! What is taken is read from the nodes themselves (every node's `spec.podCIDR` inside the
//! cluster range), plus what this process has handed out and not yet seen come back through
//! its informer: a restart rebuilds the picture from the API alone, and a deleted node's
//! range is free again once its deletion is seen.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use client::obj::Obj;

/// An IPv4 network, `a.b.c.d/n`, its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net {
    pub base: u32,
    pub bits: u8,
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.bits)
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let (ip, bits) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let bits: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let base = u32::from(ip) & mask(bits);
        if base != u32::from(ip) {
            return Err(format!("{s:?} has host bits set (did you mean {}/{bits}?)", Ipv4Addr::from(base)));
        }
        Ok(Net { base, bits })
    }
}

fn mask(bits: u8) -> u32 {
    if bits == 0 { 0 } else { u32::MAX << (32 - bits) }
}

impl Net {
    /// Whether `other` lies wholly inside this network.
    pub fn contains(&self, other: &Net) -> bool {
        other.bits >= self.bits && other.base & mask(self.bits) == self.base
    }
}

/// The allocator's settings: the cluster range and the size of each node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub cluster: Net,
    pub node_bits: u8,
}

impl Ranges {
    /// `--cluster-cidr` and `--node-cidr-mask-size`, checked as kube-controller-manager checks
    /// them: the node size must be a subnet of the cluster's, and not more than 2^16 nodes.
    pub fn new(cluster: &str, node_bits: u8) -> Result<Ranges, String> {
        let cluster: Net = cluster.parse()?;
        if node_bits < cluster.bits || node_bits > 30 {
            return Err(format!("--node-cidr-mask-size {node_bits} must be between the cluster range's prefix ({}) and 30", cluster.bits));
        }
        if node_bits - cluster.bits > 16 {
            return Err(format!("--node-cidr-mask-size {node_bits}: the cluster range {cluster} would hold more than 65,536 node ranges"));
        }
        Ok(Ranges { cluster, node_bits })
    }

    /// How many node ranges the cluster range holds.
    pub fn capacity(&self) -> u32 {
        1 << (self.node_bits - self.cluster.bits)
    }

    /// The `i`th node range.
    pub fn nth(&self, i: u32) -> Net {
        Net { base: self.cluster.base + (i << (32 - self.node_bits)), bits: self.node_bits }
    }

    /// The index of the node range `n` occupies, if it is one of ours. A range of another
    /// size inside the cluster's (set by hand) occupies every one of ours it overlaps.
    fn occupied(&self, n: &Net) -> std::ops::Range<u32> {
        if !self.cluster.contains(n) && !n.contains(&self.cluster) {
            return 0..0;
        }
        let (lo, hi) = (n.base.max(self.cluster.base), (n.base | !mask(n.bits)).min(self.cluster.base | !mask(self.cluster.bits)));
        let shift = 32 - self.node_bits;
        ((lo - self.cluster.base) >> shift)..(((hi - self.cluster.base) >> shift) + 1)
    }

    /// The lowest node range none of `taken` (nodes' `spec.podCIDR`s; unparsable ones are
    /// ignored) overlaps, or None when the cluster range is full.
    pub fn first_free<'a>(&self, taken: impl IntoIterator<Item = &'a str>) -> Option<Net> {
        let mut used = HashSet::new();
        for t in taken {
            if let Ok(n) = t.parse::<Net>() {
                used.extend(self.occupied(&n));
            }
        }
        (0..self.capacity()).find(|i| !used.contains(i)).map(|i| self.nth(i))
    }
}

/// The label hollow nodes carry: their pods have no network to address, and 5,000 of them
/// would exhaust a /16, so they get no range.
pub const HOLLOW_LABEL: &str = "capstan.io/hollow";

/// Whether `node` is one the allocator gives a range to: it has none, and it is not hollow.
pub fn wants_range(node: &Obj) -> bool {
    node["spec"]["podCIDR"].as_str().is_none_or(str::is_empty) && node["metadata"]["labels"][HOLLOW_LABEL] != "true"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_without_a_range_want_one_unless_hollow() {
        use serde_json::json;
        assert!(wants_range(&Obj::from(json!({"metadata": {"name": "a"}, "spec": {}}))));
        assert!(wants_range(&Obj::from(json!({"metadata": {"name": "a", "labels": {HOLLOW_LABEL: "false"}}, "spec": {"podCIDR": ""}}))));
        assert!(!wants_range(&Obj::from(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.1.0/24"}}))));
        assert!(!wants_range(&Obj::from(json!({"metadata": {"name": "a", "labels": {HOLLOW_LABEL: "true"}}, "spec": {}}))));
    }

    #[test]
    fn cidrs_parse_and_refuse_what_is_not_one() {
        assert_eq!("10.244.0.0/16".parse::<Net>().unwrap(), Net { base: u32::from(Ipv4Addr::new(10, 244, 0, 0)), bits: 16 });
        for bad in ["10.244.0.0", "10.244.0.1/16", "10.244.0.0/33", "x/8", "10.244.0.0/-1", "::1/64"] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
        assert!(Ranges::new("10.244.0.0/16", 24).is_ok());
        for (c, b) in [("10.244.0.0/16", 15), ("10.244.0.0/16", 31), ("10.0.0.0/8", 25), ("nonsense", 24)] {
            assert!(Ranges::new(c, b).is_err(), "{c} {b}");
        }
    }

    #[test]
    fn the_lowest_free_range_is_given_and_a_full_cluster_range_gives_none() {
        let r = Ranges::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(r.capacity(), 256);
        assert_eq!(r.first_free([]).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(r.first_free(["10.244.0.0/24", "10.244.2.0/24"]).unwrap().to_string(), "10.244.1.0/24");
        // Ranges outside the cluster's, or not CIDRs, take nothing.
        assert_eq!(r.first_free(["10.245.0.0/24", "junk", ""]).unwrap().to_string(), "10.244.0.0/24");
        // A wider range set by hand occupies every node range it overlaps.
        assert_eq!(r.first_free(["10.244.0.0/23"]).unwrap().to_string(), "10.244.2.0/24");
        // A narrower one occupies the node range it falls in.
        assert_eq!(r.first_free(["10.244.0.128/25"]).unwrap().to_string(), "10.244.1.0/24");
        let small = Ranges::new("10.1.0.0/23", 24).unwrap();
        assert_eq!(small.first_free(["10.1.0.0/24"]).unwrap().to_string(), "10.1.1.0/24");
        assert_eq!(small.first_free(["10.1.0.0/24", "10.1.1.0/24"]), None);
        // A range wider than the cluster's covers it all.
        assert_eq!(small.first_free(["10.0.0.0/8"]), None);
    }
}
