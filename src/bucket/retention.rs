//! How much history a bucket keeps: the `historyRetention` policy.
//!
//! A version is kept when it is the head, among the newest `count`
//! versions, younger than `age`, or pinned (a snapshot, a clone's source, a
//! head another replica reported). Everything else is pruned: its manifest
//! is removed and garbage collection then frees the blobs only it used.

use std::time::Duration;

use super::tree::Timestamp;

/// The written form: `count=N`, `age=D` or both, comma-separated; `D` is a
/// number with a unit `s`, `m`, `h` or `d` (`count=100,age=7d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Newest versions kept (the head always is).
    pub count: Option<u32>,
    /// Versions younger than this kept.
    pub age: Option<Duration>,
}

impl Default for Retention {
    /// The newest 100 versions.
    fn default() -> Self {
        Self {
            count: Some(100),
            age: None,
        }
    }
}

impl std::str::FromStr for Retention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Retention {
            count: None,
            age: None,
        };
        for part in s.split(',').map(str::trim) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value (count=N, age=7d)"))?;
            match k.trim() {
                "count" if out.count.is_none() => {
                    out.count = Some(
                        v.trim()
                            .parse()
                            .map_err(|_| format!("count {v:?} is not a whole number"))?,
                    )
                }
                "age" if out.age.is_none() => out.age = Some(parse_age(v.trim())?),
                "count" | "age" => return Err(format!("{k} is given twice")),
                other => return Err(format!("unknown key {other:?} (count, age)")),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.count {
            parts.push(format!("count={c}"));
        }
        if let Some(a) = self.age {
            parts.push(format!("age={}s", a.as_secs()));
        }
        f.write_str(&parts.join(","))
    }
}

fn parse_age(v: &str) -> Result<Duration, String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("age {v:?} is not a number with a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("age {v:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

impl Retention {
    /// Whether the version `rank` places from the newest (0 = newest),
    /// written at `created`, is kept at `now` (pins aside).
    pub fn keeps(&self, rank: usize, created: Timestamp, now: Timestamp) -> bool {
        if rank == 0 {
            return true;
        }
        let by_count = self.count.is_some_and(|c| rank < c as usize);
        let by_age = self
            .age
            .is_some_and(|a| now.secs.saturating_sub(created.secs) < a.as_secs() as i64);
        by_count || by_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let r: Retention = "count=10,age=2h".parse().unwrap();
        assert_eq!(r.count, Some(10));
        assert_eq!(r.age, Some(Duration::from_secs(7200)));
        assert_eq!(r.to_string(), "count=10,age=7200s");
        assert_eq!(r.to_string().parse::<Retention>().unwrap(), r);
        for bad in ["", "10", "count=x", "age=5w", "count=1,count=2", "depth=3"] {
            assert!(bad.parse::<Retention>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_the_head_the_newest_and_the_young() {
        let now = Timestamp {
            secs: 100_000,
            nanos: 0,
        };
        let at = |secs| Timestamp { secs, nanos: 0 };
        let r: Retention = "count=2,age=1h".parse().unwrap();
        assert!(r.keeps(0, at(0), now));
        assert!(r.keeps(1, at(0), now));
        assert!(!r.keeps(2, at(0), now));
        assert!(r.keeps(50, at(99_000), now));
        let only_head = Retention {
            count: Some(0),
            age: None,
        };
        assert!(only_head.keeps(0, at(0), now) && !only_head.keeps(1, now, now));
    }
}
