//! The leader's replica placement (#28): which nodes keep each volume.
//!
//! A volume asks for `replicas` copies. A node that stages it holds one;
//! the leader assigns more on other live nodes, in zones not used yet
//! where nodes carry `topology.kubernetes.io/zone`, then on those with the
//! most free space. An assignment on a node whose heartbeat is older than
//! the replica timeout (or that was removed) is taken back and replaced:
//! the new node catches up from every holder at once. One beyond the count
//! is taken back only once the others are in sync.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::replicas::Holder;
use super::{Db, DbResult};

/// The zone of a node from its Kubernetes labels (as recorded in Postgres),
/// if it has one: the standard label, else the deprecated beta one.
pub fn zone(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get("topology.kubernetes.io/zone")
        .or_else(|| labels.get("failure-domain.beta.kubernetes.io/zone"))
        .map(String::as_str)
}

/// A live node a replica may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub zone: Option<String>,
    pub free_bytes: i64,
}

/// What the leader changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    Assign { volume: String, node: String },
    Unassign { volume: String, node: String },
}

/// The moves that bring every volume of `wanted` to its replica count,
/// given who holds what (`holders`, with liveness) and the live nodes.
pub fn plan(wanted: &[(String, u32)], holders: &[Holder], nodes: &[Candidate]) -> Vec<Move> {
    let mut by_volume: HashMap<&str, Vec<&Holder>> = HashMap::new();
    for h in holders {
        by_volume.entry(h.volume_id.as_str()).or_default().push(h);
    }
    let zone_of: HashMap<&str, Option<&str>> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.zone.as_deref()))
        .collect();
    let mut moves = Vec::new();
    for (volume, count) in wanted {
        let hs = by_volume.get(volume.as_str()).cloned().unwrap_or_default();
        // Lost nodes' assignments go; their copies no longer count.
        for h in hs.iter().filter(|h| h.assigned && !h.live) {
            moves.push(Move::Unassign {
                volume: volume.clone(),
                node: h.node_id.clone(),
            });
        }
        let live: Vec<&&Holder> = hs.iter().filter(|h| h.live).collect();
        let held: HashSet<&str> = live.iter().map(|h| h.node_id.as_str()).collect();
        let want = *count as usize;
        if held.len() < want {
            let mut zones: HashSet<Option<&str>> = held
                .iter()
                .filter_map(|n| zone_of.get(n).copied().flatten())
                .map(Some)
                .collect();
            let mut free: Vec<&Candidate> = nodes
                .iter()
                .filter(|n| !held.contains(n.id.as_str()))
                .collect();
            for _ in held.len()..want {
                // A zone not used yet first, then the most free space.
                free.sort_by_key(|n| {
                    let new_zone = n.zone.is_some() && !zones.contains(&n.zone.as_deref());
                    (!new_zone, std::cmp::Reverse(n.free_bytes), n.id.clone())
                });
                let Some(pick) = free.first().copied() else {
                    break;
                };
                free.remove(0);
                zones.insert(pick.zone.as_deref());
                moves.push(Move::Assign {
                    volume: volume.clone(),
                    node: pick.id.clone(),
                });
            }
        } else if held.len() > want {
            let best = hs.iter().filter_map(|h| h.height).max();
            let in_sync = |h: &Holder| h.height.is_some() && h.height >= best;
            let synced = live.iter().filter(|h| in_sync(h)).count();
            // Assigned copies that do not stage, the furthest behind first.
            let mut spare: Vec<&&&Holder> =
                live.iter().filter(|h| h.assigned && !h.stages).collect();
            spare.sort_by_key(|h| (h.height, h.node_id.clone()));
            let mut left = held.len();
            let mut synced_left = synced;
            for h in spare {
                if left <= want {
                    break;
                }
                let after = synced_left - usize::from(in_sync(h));
                if after < want {
                    continue;
                }
                moves.push(Move::Unassign {
                    volume: volume.clone(),
                    node: h.node_id.clone(),
                });
                left -= 1;
                synced_left = after;
            }
        }
    }
    moves
}

/// One placement pass of the leader: read, plan, apply. Returns the moves.
pub async fn place(db: &Db, timeout_secs: i64) -> DbResult<Vec<Move>> {
    let wanted = db.wanted_replicas(None).await?;
    let holders = db.holders(None, timeout_secs).await?;
    let nodes: Vec<Candidate> = db
        .live_nodes(timeout_secs)
        .await?
        .into_iter()
        .map(|(id, labels, free_bytes)| {
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&labels).unwrap_or_default();
            Candidate {
                id,
                zone: zone(&labels).map(str::to_string),
                free_bytes,
            }
        })
        .collect();
    let moves = plan(&wanted, &holders, &nodes);
    for m in &moves {
        match m {
            Move::Assign { volume, node } => {
                db.assign_replica(volume, node).await?;
                tracing::info!(%volume, %node, "replica assigned");
            }
            Move::Unassign { volume, node } => {
                db.unassign_replica(volume, node).await?;
                tracing::info!(%volume, %node, "replica taken back");
            }
        }
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(v: &str, n: &str, stages: bool, assigned: bool, height: i64, live: bool) -> Holder {
        Holder {
            volume_id: v.into(),
            node_id: n.into(),
            stages,
            assigned,
            head: Some(format!("h{height}")),
            height: Some(height),
            live,
        }
    }

    fn node(id: &str, zone: Option<&str>, free: i64) -> Candidate {
        Candidate {
            id: id.into(),
            zone: zone.map(Into::into),
            free_bytes: free,
        }
    }

    #[test]
    fn a_second_replica_goes_to_a_new_zone_before_more_free_space() {
        let holders = [holder("v", "a", true, false, 3, true)];
        let nodes = [
            node("a", Some("z1"), 10),
            node("b", Some("z1"), 1000),
            node("c", Some("z2"), 5),
        ];
        assert_eq!(
            plan(&[("v".into(), 2)], &holders, &nodes),
            vec![Move::Assign {
                volume: "v".into(),
                node: "c".into()
            }]
        );
    }

    #[test]
    fn a_lost_node_is_replaced() {
        let holders = [
            holder("v", "a", true, false, 3, true),
            holder("v", "b", false, true, 3, false),
        ];
        let nodes = [node("a", None, 1), node("c", None, 1)];
        let moves = plan(&[("v".into(), 2)], &holders, &nodes);
        assert!(moves.contains(&Move::Unassign {
            volume: "v".into(),
            node: "b".into()
        }));
        assert!(moves.contains(&Move::Assign {
            volume: "v".into(),
            node: "c".into()
        }));
    }

    #[test]
    fn one_too_many_goes_only_once_the_others_are_in_sync() {
        let behind = [
            holder("v", "a", true, false, 5, true),
            holder("v", "b", false, true, 5, true),
            holder("v", "c", false, true, 2, true),
        ];
        // Lowering to 2: c (behind) goes, a and b are in sync.
        assert_eq!(
            plan(&[("v".into(), 2)], &behind, &[]),
            vec![Move::Unassign {
                volume: "v".into(),
                node: "c".into()
            }]
        );
        // Lowering to 2 where only a is in sync: nothing goes.
        let lagging = [
            holder("v", "a", true, false, 5, true),
            holder("v", "b", false, true, 4, true),
            holder("v", "c", false, true, 2, true),
        ];
        assert_eq!(plan(&[("v".into(), 2)], &lagging, &[]), vec![]);
    }

    #[test]
    fn no_node_to_spare_assigns_nothing() {
        let holders = [holder("v", "a", true, false, 1, true)];
        assert!(plan(&[("v".into(), 3)], &holders, &[node("a", None, 1)]).is_empty());
    }
}
