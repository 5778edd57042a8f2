//! StorageClass parameters, capacity ranges and capabilities: parsing and
//! validation for CreateVolume, with the spec's error codes.

use std::collections::{BTreeMap, HashMap};

use tonic::Status;

use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::{CapacityRange, VolumeCapability};
use super::status::shown;
use crate::bucket::{Retention, DEFAULT_CHUNK_SIZE};

/// StorageClass parameter: chunk size in bytes (power of two, 64 KiB – 16 MiB).
pub const PARAM_CHUNK_SIZE: &str = "chunkSize";
/// StorageClass parameter: other replicas an fsync waits for (0 to
/// `replicas` - 1; fixed when the volume is created).
pub use crate::db::replicas::PARAM_SYNC_REPLICAS;
/// StorageClass and mutable parameter: how many nodes keep a volume
/// (default 2; 1 is "no redundancy"). See `db::placement`.
pub use crate::db::replicas::{DEFAULT_REPLICAS, MAX_REPLICAS, PARAM_REPLICAS};
pub use crate::db::PARAM_HISTORY_RETENTION;
/// Parameters ControllerModifyVolume may change.
pub const MUTABLE_PARAMETERS: &[&str] =
    &[PARAM_HISTORY_RETENTION, PARAM_REPLICAS, PARAM_SYNC_REPLICAS];
/// StorageClass parameter: the name of the Secret holding the tenant KEK;
/// its `tenantKey` entry arrives in the CreateVolume secrets.
pub const PARAM_TENANT_KEY_SECRET: &str = "tenantKeySecret";
/// The key inside the provisioner secret that holds the tenant KEK (64 hex).
pub const SECRET_TENANT_KEY: &str = "tenantKey";
/// Prefix of parameters the Kubernetes sidecars add; passed through untouched.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// The tenant KEK in a request's `secrets`, if it carries one.
pub fn tenant_from(
    secrets: &HashMap<String, String>,
) -> Result<Option<crate::crypto::Kek>, Status> {
    let Some(hex_key) = secrets.get(SECRET_TENANT_KEY) else {
        return Ok(None);
    };
    // Every copy of the key's bytes is wiped when it goes.
    let decoded = zeroize::Zeroizing::new(hex::decode(hex_key.trim()).unwrap_or_default());
    let bytes: zeroize::Zeroizing<[u8; 32]> =
        zeroize::Zeroizing::new(decoded.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "secrets: {SECRET_TENANT_KEY:?} must be 64 hex characters"
            ))
        })?);
    Ok(Some(crate::crypto::Kek::new(
        crate::crypto::SecretKey::from_bytes(*bytes),
    )))
}

/// Capacity given when the request names none: 1 GiB.
pub const DEFAULT_CAPACITY: i64 = 1 << 30;
/// Smallest volume: 1 MiB.
pub const MIN_CAPACITY: i64 = 1 << 20;
/// Largest volume: 1 PiB.
pub const MAX_CAPACITY: i64 = 1 << 50;

/// Validated StorageClass parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParams {
    pub chunk_size: u32,
    pub tenant_key_secret: Option<String>,
    pub history_retention: Option<Retention>,
    /// Everything as given, in canonical order (for idempotency checks).
    pub canonical: String,
}

pub fn parse_parameters(params: &HashMap<String, String>) -> Result<VolumeParams, Status> {
    let bad =
        |k: &str, why: &str| Status::invalid_argument(format!("parameter {}: {why}", shown(k)));
    let mut chunk_size = DEFAULT_CHUNK_SIZE;
    let mut tenant_key_secret = None;
    let mut history_retention = None;
    let mut replicas = DEFAULT_REPLICAS;
    let mut sync_replicas = 0;
    for (k, v) in params {
        match k.as_str() {
            PARAM_CHUNK_SIZE => {
                let n: u32 = v.parse().map_err(|_| bad(k, "not a number of bytes"))?;
                if !n.is_power_of_two() || !(64 << 10..=16 << 20).contains(&n) {
                    return Err(bad(k, "must be a power of two from 65536 to 16777216"));
                }
                chunk_size = n;
            }
            PARAM_REPLICAS => {
                replicas = parse_replicas(k, v)?;
            }
            PARAM_SYNC_REPLICAS => {
                sync_replicas = parse_sync_replicas(k, v)?;
            }
            PARAM_HISTORY_RETENTION => history_retention = Some(parse_retention(k, v)?),
            PARAM_TENANT_KEY_SECRET => {
                if v.is_empty() {
                    return Err(bad(k, "must name a Secret"));
                }
                tenant_key_secret = Some(v.clone());
            }
            other if other.starts_with(SIDECAR_PREFIX) => {}
            other => return Err(bad(other, "unknown parameter")),
        }
    }
    if sync_replicas >= replicas {
        return Err(bad(
            PARAM_SYNC_REPLICAS,
            &format!(
                "an fsync can wait for at most {} other replicas of {replicas} \
                 (replicas - 1)",
                replicas - 1
            ),
        ));
    }
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    Ok(VolumeParams {
        chunk_size,
        tenant_key_secret,
        history_retention,
        canonical: serde_json::to_string(&sorted).expect("string map serializes"),
    })
}

/// Parameters of a request that takes none of ours (CreateSnapshot,
/// CreateVolumeGroupSnapshot): only the sidecars' own keys pass.
pub fn check_no_parameters(params: &HashMap<String, String>) -> Result<(), Status> {
    match params.keys().find(|k| !k.starts_with(SIDECAR_PREFIX)) {
        Some(k) => Err(Status::invalid_argument(format!(
            "parameter {}: unknown parameter (this request takes none)",
            shown(k)
        ))),
        None => Ok(()),
    }
}

fn parse_replicas(k: &str, v: &str) -> Result<u32, Status> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(Status::invalid_argument(format!(
            "parameter {k}: must be a whole number from 1 (no redundancy) to {MAX_REPLICAS}"
        ))),
    }
}

fn parse_retention(k: &str, v: &str) -> Result<Retention, Status> {
    v.parse::<Retention>()
        .map_err(|why| Status::invalid_argument(format!("parameter {k}: {why}")))
}

/// Mutable parameters (CreateVolume's `mutable_parameters`, or
/// ControllerModifyVolume's): known mutable keys only, each valid.
/// Returns them in canonical JSON.
/// `syncReplicas`: other replicas an fsync waits for (0: none).
fn parse_sync_replicas(k: &str, v: &str) -> Result<u32, Status> {
    v.trim().parse::<u32>().map_err(|_| {
        Status::invalid_argument(format!(
            "parameter {}: must be a whole number of replicas (0: none)",
            shown(k)
        ))
    })
}

pub fn parse_mutable(params: &HashMap<String, String>) -> Result<String, Status> {
    for (k, v) in params {
        match k.as_str() {
            PARAM_HISTORY_RETENTION => {
                parse_retention(k, v)?;
            }
            PARAM_REPLICAS => {
                parse_replicas(k, v)?;
            }
            PARAM_SYNC_REPLICAS => {
                parse_sync_replicas(k, v)?;
            }
            PARAM_CHUNK_SIZE | PARAM_TENANT_KEY_SECRET => {
                return Err(Status::invalid_argument(format!(
                    "mutable parameter {k}: it is fixed when the volume is created (mutable: {})",
                    MUTABLE_PARAMETERS.join(", ")
                )))
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "mutable parameter {}: unknown (mutable: {})",
                    shown(other),
                    MUTABLE_PARAMETERS.join(", ")
                )))
            }
        }
    }
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    Ok(serde_json::to_string(&sorted).expect("string map serializes"))
}

/// A capacity range that is well-formed: no negative value
/// (INVALID_ARGUMENT), required no more than the limit (OUT_OF_RANGE).
pub fn check_range(r: &CapacityRange) -> Result<(), Status> {
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range values must not be negative",
        ));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Status::out_of_range(format!(
            "capacity_range: required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(())
}

/// The capacity to provision for `range` (default 1 GiB), or OUT_OF_RANGE.
pub fn capacity_for(range: Option<&CapacityRange>) -> Result<i64, Status> {
    let Some(r) = range else {
        return Ok(DEFAULT_CAPACITY);
    };
    check_range(r)?;
    let want = if r.required_bytes > 0 {
        r.required_bytes
    } else if r.limit_bytes > 0 {
        r.limit_bytes.min(DEFAULT_CAPACITY)
    } else {
        DEFAULT_CAPACITY
    };
    let want = want.max(MIN_CAPACITY);
    if r.limit_bytes > 0 && want > r.limit_bytes {
        return Err(Status::out_of_range(format!(
            "capacity_range: limit_bytes {} is below the smallest volume ({MIN_CAPACITY} bytes)",
            r.limit_bytes
        )));
    }
    if want > MAX_CAPACITY {
        return Err(Status::out_of_range(format!(
            "capacity_range: {want} bytes is above the largest volume ({MAX_CAPACITY} bytes)"
        )));
    }
    Ok(want)
}

/// True if a volume of `capacity` bytes satisfies `range`.
pub fn capacity_fits(capacity: i64, range: Option<&CapacityRange>) -> bool {
    match range {
        None => true,
        Some(r) => {
            capacity >= r.required_bytes && (r.limit_bytes == 0 || capacity <= r.limit_bytes)
        }
    }
}

/// Check one capability: mount access only, a known access mode.
pub fn check_capability(cap: &VolumeCapability) -> Result<Mode, Status> {
    match &cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => return Err(Status::invalid_argument(
            "volume_capabilities: block access is not supported (jax-csi volumes are file systems)",
        )),
        None => {
            return Err(Status::invalid_argument(
                "volume_capabilities: access_type (mount) is required",
            ))
        }
    }
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume_capabilities: access_mode is required"))?
        .mode;
    match Mode::try_from(mode) {
        Ok(Mode::Unknown) | Err(_) => Err(Status::invalid_argument(format!(
            "volume_capabilities: access_mode {mode} is not a known mode"
        ))),
        Ok(m) => Ok(m),
    }
}

/// Check a non-empty capability list; returns the access modes, sorted and deduplicated.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<Vec<i32>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    let mut modes = caps
        .iter()
        .map(|c| check_capability(c).map(|m| m as i32))
        .collect::<Result<Vec<_>, _>>()?;
    modes.sort();
    modes.dedup();
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::retention_of;

    #[test]
    fn capacity_ranges() {
        assert_eq!(capacity_for(None).unwrap(), DEFAULT_CAPACITY);
        let r = |req, lim| CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(capacity_for(Some(&r(5 << 30, 0))).unwrap(), 5 << 30);
        assert_eq!(capacity_for(Some(&r(0, 1 << 29))).unwrap(), 1 << 29);
        assert_eq!(capacity_for(Some(&r(10, 0))).unwrap(), MIN_CAPACITY);
        assert_eq!(
            capacity_for(Some(&r(10, 100))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity_for(Some(&r(200, 100))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity_for(Some(&r(MAX_CAPACITY + 1, 0)))
                .unwrap_err()
                .code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity_for(Some(&r(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn parameters() {
        let p = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            parse_parameters(&p(&[])).unwrap().chunk_size,
            DEFAULT_CHUNK_SIZE
        );
        assert_eq!(
            parse_parameters(&p(&[("chunkSize", "262144")]))
                .unwrap()
                .chunk_size,
            262144
        );
        assert!(parse_parameters(&p(&[("chunkSize", "1000")])).is_err());
        assert!(parse_parameters(&p(&[("bogus", "1")]))
            .unwrap_err()
            .message()
            .contains("bogus"));
        assert!(parse_parameters(&p(&[("csi.storage.k8s.io/pvc/name", "x")])).is_ok());
        assert!(parse_parameters(&p(&[("replicas", "1")])).is_ok());
        assert!(parse_parameters(&p(&[("replicas", "3")])).is_ok());
        for bad in ["0", "17", "two", "-1"] {
            let why = parse_parameters(&p(&[("replicas", bad)])).unwrap_err();
            assert!(why.message().contains("from 1"), "{}", why.message());
        }
        assert!(parse_parameters(&p(&[("syncReplicas", "0")])).is_ok());
        assert!(parse_parameters(&p(&[("syncReplicas", "1")])).is_ok());
        let why = parse_parameters(&p(&[("syncReplicas", "2")])).unwrap_err();
        assert!(why.message().contains("at most 1"), "{}", why.message());
        assert!(parse_parameters(&p(&[("syncReplicas", "2"), ("replicas", "3")])).is_ok());
        assert!(parse_parameters(&p(&[("syncReplicas", "x")])).is_err());
        assert!(parse_mutable(&p(&[("replicas", "3")])).is_ok());
        assert!(parse_mutable(&p(&[("replicas", "0")])).is_err());
        assert!(parse_parameters(&p(&[("historyRetention", "count=5")])).is_ok());
        assert!(parse_parameters(&p(&[("historyRetention", "lots")])).is_err());
        assert!(parse_mutable(&p(&[("historyRetention", "age=1d")])).is_ok());
        for bad in [
            ("chunkSize", "65536"),
            ("color", "red"),
            ("historyRetention", "x"),
        ] {
            let e = parse_mutable(&p(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(
            retention_of(
                r#"{"historyRetention":"count=3"}"#,
                r#"{"historyRetention":"count=7"}"#
            )
            .count,
            Some(7)
        );
        assert_eq!(retention_of("{}", "{}"), Retention::default());
    }
}
