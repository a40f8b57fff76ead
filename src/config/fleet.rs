//! The fleet keys: `instance_id` (which instance of a fleet this proxy is; the cancel keys it
//! mints carry it) and `peers` (the other instances, where CancelRequests minted by them are
//! forwarded). Their YAML shape, `${VAR}` expansion of the parts a deployment sets, and
//! validation. Pure.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::Problem;
use crate::cancel::MAX_INSTANCE_ID;

/// `instance_id` as written: a number, or text with `${VAR}` (a StatefulSet's pod ordinal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct InstanceId(pub(super) String);

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        Ok(InstanceId(match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        }))
    }
}

impl InstanceId {
    pub fn new(text: impl Into<String>) -> InstanceId {
        InstanceId(text.into())
    }

    /// The id, when it is one (1..=[`MAX_INSTANCE_ID`]).
    pub fn get(&self) -> Option<u16> {
        self.0
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|id| (1..=MAX_INSTANCE_ID).contains(id))
    }
}

/// Another instance of the fleet.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its `instance_id`.
    pub id: u16,
    /// `host:port` of its client listener; the host may be a name (resolved at each forward)
    /// and `${VAR}` is expanded. An IPv6 address is written in brackets: `[2001:db8::7]:6432`.
    pub address: String,
    /// Send a PROXY v2 header (command `LOCAL`) before a forwarded request: the peer lists this
    /// instance's address in its `proxy_protocol.trusted`, so it expects a header from it.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `host:port` split, the host without brackets.
pub fn split_address(address: &str) -> Result<(String, u16), String> {
    let bad = || format!("{address:?} is not host:port (an IPv6 address goes in brackets)");
    if let Ok(addr) = address.parse::<std::net::SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("{address:?}: the port must be 1-65535"))
        } else {
            Ok((addr.ip().to_string(), addr.port()))
        };
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !name_ok {
        return Err(bad());
    }
    if port == 0 {
        return Err(format!("{address:?}: the port must be 1-65535"));
    }
    Ok((host.to_owned(), port))
}

impl super::Config {
    /// This instance's id, or 0 outside a fleet.
    pub fn instance_id(&self) -> u16 {
        self.instance_id
            .as_ref()
            .and_then(InstanceId::get)
            .unwrap_or(0)
    }

    /// The peers cancel requests go to, without this instance's own entry (one `peers` list
    /// may serve the whole fleet). Call on a validated configuration.
    pub fn other_peers(&self) -> Vec<crate::cancel::Peer> {
        let own = self.instance_id();
        self.peers
            .iter()
            .filter(|p| p.id != own)
            .filter_map(|p| {
                let (host, port) = split_address(&p.address).ok()?;
                Some(crate::cancel::Peer {
                    id: p.id,
                    host,
                    port,
                    proxy_protocol: p.proxy_protocol,
                })
            })
            .collect()
    }
}

/// Every problem of the fleet keys.
pub(super) fn check(config: &super::Config, p: &mut Vec<Problem>) {
    let range = format!("must be a number from 1 to {MAX_INSTANCE_ID}");
    match &config.instance_id {
        Some(id) if id.get().is_none() => {
            p.push(Problem::new(
                "instance_id",
                format!("{range}, not {:?}", id.0),
            ));
        }
        None if !config.peers.is_empty() => p.push(Problem::new(
            "instance_id",
            "is required with `peers`: it goes into the cancel keys this instance mints, so that its peers know where to forward them",
        )),
        _ => {}
    }
    for (i, t) in config.cancel_forward_from.iter().enumerate() {
        if let Err(e) = super::parse_cidr(t) {
            p.push(Problem::new(format!("cancel_forward_from[{i}]"), e));
        }
    }
    let mut ids: HashMap<u16, usize> = HashMap::new();
    let mut addresses: HashMap<(String, u16), usize> = HashMap::new();
    for (i, peer) in config.peers.iter().enumerate() {
        let path = format!("peers[{i}]");
        if !(1..=MAX_INSTANCE_ID).contains(&peer.id) {
            p.push(Problem::new(format!("{path}.id"), range.clone()));
        } else if let Some(first) = ids.insert(peer.id, i) {
            p.push(Problem::new(
                format!("{path}.id"),
                format!("instance {} is listed twice (also peers[{first}])", peer.id),
            ));
        }
        match split_address(&peer.address) {
            Err(e) => p.push(Problem::new(format!("{path}.address"), e)),
            Ok(at) => {
                if let Some(first) = addresses.insert(at, i) {
                    p.push(Problem::new(
                        format!("{path}.address"),
                        format!("{:?} is also the address of peers[{first}]", peer.address),
                    ));
                }
            }
        }
    }
}
