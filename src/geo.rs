//! Where a client is: its requested region or coordinates (startup options), else a GeoIP
//! lookup, else the proxy's own region. Pure decisions here; the GeoIP file is `geo/geoip.rs`.

pub mod geoip;

use std::collections::BTreeMap;

use crate::config::Region;

/// Where a session's location came from; a metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeoSource {
    /// `pgmeridian.region` or `pgmeridian.location` in the startup packet.
    StartupOption,
    /// The client address found in the GeoIP database.
    GeoIp,
    /// Nothing better was known: the proxy's own `region`.
    ProxyRegion,
}

impl GeoSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GeoSource::StartupOption => "startup_option",
            GeoSource::GeoIp => "geoip",
            GeoSource::ProxyRegion => "proxy_region",
        }
    }
}

/// A session's location and how it was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLocation {
    pub at: Region,
    pub source: GeoSource,
}

/// What a client asked for in its startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    Region(String),
    /// `LAT,LON` as written.
    Location(String),
}

/// Chooses the session's location: the client's request (which must make sense: an unknown
/// region is an error, not a silent fallback), then GeoIP, then the proxy's region.
pub fn locate(
    requested: Option<&Requested>,
    regions: &BTreeMap<String, Region>,
    geoip: Option<Region>,
    proxy: Region,
) -> Result<ClientLocation, String> {
    let at = match requested {
        Some(Requested::Region(name)) => match regions.get(name) {
            Some(r) => *r,
            None => {
                let known: Vec<&str> = regions.keys().map(String::as_str).collect();
                return Err(format!(
                    "unknown pgmeridian.region {name:?} (known regions: {})",
                    known.join(", ")
                ));
            }
        },
        Some(Requested::Location(text)) => parse_location(text)?,
        None => {
            return Ok(match geoip {
                Some(at) => ClientLocation {
                    at,
                    source: GeoSource::GeoIp,
                },
                None => ClientLocation {
                    at: proxy,
                    source: GeoSource::ProxyRegion,
                },
            })
        }
    };
    Ok(ClientLocation {
        at,
        source: GeoSource::StartupOption,
    })
}

/// `LAT,LON` in decimal degrees, such as `48.85,2.35`.
pub fn parse_location(text: &str) -> Result<Region, String> {
    let bad = || {
        format!("pgmeridian.location {text:?} is not LAT,LON in degrees (for example 48.85,2.35)")
    };
    let (lat, lon) = text.split_once(',').ok_or_else(bad)?;
    let lat: f64 = lat.trim().parse().map_err(|_| bad())?;
    let lon: f64 = lon.trim().parse().map_err(|_| bad())?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!(
            "pgmeridian.location {text:?} is out of range (latitude -90..90, longitude -180..180)"
        ));
    }
    Ok(Region { lat, lon })
}

const REGION_KEY: &str = "pgmeridian.region";
const LOCATION_KEY: &str = "pgmeridian.location";
const TOKEN_KEY: &str = crate::causal::PARAMETER;

/// Takes `pgmeridian.region` / `pgmeridian.location` out of the startup parameters, whether
/// sent as their own parameters or inside `options` (`-c name=value`, `-cname=value`,
/// `--name=value`), so backends never see them. Names match as PostgreSQL matches setting
/// names (any case, `-` for `_`). As in PostgreSQL, a parameter of its own is applied after
/// `options`, so it wins; within each, the last one wins.
pub fn take_requested(params: &mut Vec<(String, String)>) -> Option<Requested> {
    take_ours(params).location
}

/// What the proxy itself takes out of a startup packet.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    pub location: Option<Requested>,
    /// `pgmeridian.causal_token` (checked by the caller).
    pub causal_token: Option<String>,
}

/// Like [`take_requested`], also taking `pgmeridian.causal_token`.
pub fn take_ours(params: &mut Vec<(String, String)>) -> Taken {
    let mut found = None;
    let mut token = None;
    let mut note = |name: &str, value: &str| match normalized(name).as_str() {
        REGION_KEY => found = Some(Requested::Region(value.to_owned())),
        LOCATION_KEY => found = Some(Requested::Location(value.to_owned())),
        TOKEN_KEY => token = Some(value.to_owned()),
        _ => {}
    };
    if let Some(i) = params.iter().position(|(k, _)| k == "options") {
        let tokens = split_options(&params[i].1);
        let count = tokens.len();
        let mut kept = Vec::with_capacity(tokens.len());
        let mut it = tokens.into_iter();
        while let Some(t) = it.next() {
            let (setting, raw) = if t == "-c" {
                match it.next() {
                    Some(next) => (Some(next.clone()), vec![t, next]),
                    None => (None, vec![t]),
                }
            } else if let Some(rest) = t.strip_prefix("--").or_else(|| t.strip_prefix("-c")) {
                (Some(rest.to_owned()), vec![t])
            } else {
                (None, vec![t])
            };
            match setting.as_deref().and_then(|s| s.split_once('=')) {
                Some((name, value)) if is_ours(name) => note(name, value),
                _ => kept.extend(raw),
            }
        }
        if kept.is_empty() {
            params.remove(i);
        } else if kept.len() != count {
            // Only rewritten when something was taken out.
            params[i].1 = join_options(&kept);
        }
    }
    for (k, v) in params.iter() {
        if k != "options" {
            note(k, v);
        }
    }
    params.retain(|(k, _)| k == "options" || !is_ours(k));
    Taken {
        location: found,
        causal_token: token,
    }
}

fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

fn is_ours(name: &str) -> bool {
    let n = normalized(name);
    n == REGION_KEY || n == LOCATION_KEY || n == TOKEN_KEY
}

/// The server's `isspace` (C locale), which is what splits `options`.
fn is_option_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// Splits an `options` value the way the server does: at whitespace, with `\` escaping the
/// next character.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                cur.push(next);
            }
            in_token = true;
        } else if is_option_space(c) {
            if in_token {
                out.push(std::mem::take(&mut cur));
                in_token = false;
            }
        } else {
            cur.push(c);
            in_token = true;
        }
    }
    if in_token {
        out.push(cur);
    }
    out
}

fn join_options(tokens: &[String]) -> String {
    let escaped: Vec<String> = tokens
        .iter()
        .map(|t| {
            let mut e = String::with_capacity(t.len());
            for c in t.chars() {
                if c == '\\' || is_option_space(c) {
                    e.push('\\');
                }
                e.push(c);
            }
            e
        })
        .collect();
    escaped.join(" ")
}

#[cfg(test)]
mod tests;
