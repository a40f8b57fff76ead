//! The GeoIP database: a MaxMind City `.mmdb` file, looked up per client address and reopened
//! when the file (or its configured path) changes. Never fails a login: a lookup that finds
//! nothing just leaves the proxy's region in charge.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::config::Region;

/// How often the file is checked for changes.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What a lookup found; `as_str` is a metric label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    Found(Region),
    /// The address is not in the database, or its record has no coordinates.
    NotFound,
    /// No database is configured.
    Off,
    /// The database could not be read at this record.
    Error,
}

impl Lookup {
    pub fn as_str(&self) -> &'static str {
        match self {
            Lookup::Found(_) => "found",
            Lookup::NotFound => "not_found",
            Lookup::Off => "off",
            Lookup::Error => "error",
        }
    }
}

/// Identifies a version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The part of a City record we use (decoding only this is cheaper, and tolerant of how
/// other fields were typed by whichever tool wrote the file).
#[derive(serde::Deserialize)]
struct Record {
    #[serde(default)]
    location: Option<Coordinates>,
}

#[derive(serde::Deserialize)]
struct Coordinates {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

struct Db {
    path: PathBuf,
    stamp: Stamp,
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Default)]
pub struct GeoIp {
    db: ArcSwapOption<Db>,
}

fn open(path: &Path) -> Result<Db, String> {
    let stamp = stamp(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let reader = maxminddb::Reader::open_readfile(path)
        .map_err(|e| format!("{} is not a MaxMind database: {e}", path.display()))?;
    Ok(Db {
        path: path.to_owned(),
        stamp,
        reader,
    })
}

impl GeoIp {
    /// Opens the configured database; an unreadable file is an error at startup.
    pub fn open(path: Option<&Path>) -> Result<GeoIp, String> {
        let g = GeoIp::default();
        if let Some(p) = path {
            g.db.store(Some(Arc::new(open(p)?)));
        }
        Ok(g)
    }

    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        let guard = self.db.load();
        let Some(db) = guard.as_ref() else {
            return Lookup::Off;
        };
        let result = match db.reader.lookup(ip.to_canonical()) {
            Ok(r) => r,
            Err(_) => return Lookup::Error,
        };
        match result.decode::<Record>() {
            Ok(Some(Record {
                location: Some(location),
            })) => match (location.latitude, location.longitude) {
                (Some(lat), Some(lon)) => Lookup::Found(Region { lat, lon }),
                _ => Lookup::NotFound,
            },
            Ok(None | Some(Record { location: None })) => Lookup::NotFound,
            Err(_) => Lookup::Error,
        }
    }

    /// Reopens the database if `path` differs from the open one or the file changed on disk.
    /// Returns whether a new database is now in use. A file that cannot be read keeps the old
    /// one serving (it may be mid-copy); the error says why.
    pub fn refresh(&self, path: Option<&Path>) -> Result<bool, String> {
        let current = self.db.load_full();
        let Some(path) = path else {
            let had = current.is_some();
            self.db.store(None);
            return Ok(had);
        };
        if let Some(db) = &current {
            let same_file = db.path == path
                && stamp(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
                    == db.stamp;
            if same_file {
                return Ok(false);
            }
        }
        let db = open(path)?;
        self.db.store(Some(Arc::new(db)));
        Ok(true)
    }
}

/// Keeps the database in step with the file and the live configuration, until `stop`.
pub async fn watch(shared: Arc<crate::app::Shared>) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECHECK) => {}
            _ = shared.drain.cancelled() => return,
        }
        let path = shared.topology.load().geoip.clone();
        let s = shared.clone();
        let outcome = tokio::task::spawn_blocking(move || s.geoip.refresh(path.as_deref()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match outcome {
            Ok(true) => {
                last_error = None;
                tracing::info!("GeoIP database (re)opened");
            }
            Ok(false) => last_error = None,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "GeoIP database not reloaded; the previous one stays in use");
                }
                last_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_db(path: &Path, lat: f64, lon: f64) {
        use mmdb_writer::{ipnet::IpNet, ReservedNetworks, Writer};
        let mut w = Writer::builder("GeoIP2-City")
            .reserved_networks(ReservedNetworks::Included)
            .build();
        let record = serde_json::json!({ "location": { "latitude": lat, "longitude": lon } });
        w.insert("192.0.2.0/24".parse::<IpNet>().unwrap(), &record)
            .unwrap();
        // Replace atomically, as deployment tools do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, w.to_bytes().unwrap()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn lookups_follow_the_file_and_survive_a_bad_copy() {
        let dir = std::env::temp_dir().join(format!("pgm-geoip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("city.mmdb");
        write_db(&path, 48.85, 2.35);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let g = GeoIp::open(Some(&path)).unwrap();
        assert_eq!(
            g.lookup(ip),
            Lookup::Found(Region {
                lat: 48.85,
                lon: 2.35
            })
        );
        assert_eq!(g.lookup("198.51.100.1".parse().unwrap()), Lookup::NotFound);
        assert_eq!(g.lookup("::ffff:192.0.2.1".parse().unwrap()), g.lookup(ip));
        assert_eq!(g.refresh(Some(&path)), Ok(false), "unchanged file");
        write_db(&path, 35.68, 139.69);
        assert_eq!(g.refresh(Some(&path)), Ok(true), "replaced file");
        assert_eq!(
            g.lookup(ip),
            Lookup::Found(Region {
                lat: 35.68,
                lon: 139.69
            })
        );
        std::fs::write(&path, b"half a file").unwrap();
        assert!(g.refresh(Some(&path)).is_err(), "a broken file is reported");
        assert_eq!(
            g.lookup(ip),
            Lookup::Found(Region {
                lat: 35.68,
                lon: 139.69
            }),
            "and the old one keeps serving"
        );
        assert!(GeoIp::open(Some(&dir.join("missing.mmdb"))).is_err());
        assert_eq!(g.refresh(None), Ok(true));
        assert_eq!(g.lookup(ip), Lookup::Off);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
