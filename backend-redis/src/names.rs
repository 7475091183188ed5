//! What the backend writes and subscribes to, and on which [lane](sse_core::backend::Lane).
//!
//! On one server everything is lane 0: the shared channel, its history stream, and the route
//! channels `{channel}:{token}`, all in the one order of the server.
//!
//! On a Redis Cluster lane 0 is the shared channel and its history, in the channel's slot (they
//! begin with its hash tag, `{channel}` when it has none). The routes are spread over
//! [`RedisConfig::route_partitions`](crate::RedisConfig) partitions, lanes 1 to N: a session's
//! route is in partition [`partition`](sse_core::route::partition)`(token, N)`, whose channels
//! and history stream begin with the partition's own hash tag, `{<tag>#<k>.<n>}:`. The tag of
//! partition `k` is the first (`n` = 0, 1, …) whose slot falls in the `k`-th of N equal ranges
//! of the 16 384 slots: a cluster made with its slots in equal ranges (as `redis-cli --cluster
//! create` makes it) has the partitions spread evenly over its masters, so routed traffic is
//! shared by all of them. Every instance computes the same names. With no partitions (N = 0) the
//! routes stay in the channel's slot, on lane 0.

use std::collections::HashMap;

use sse_core::BackendError;
use sse_core::backend::Lane;

use crate::{NAME, RedisConfig};

/// The slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16_384;

/// The names of what the backend writes and subscribes to.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The channel every instance subscribes to.
    pub(crate) channel: String,
    /// Whether publishing is sharded (`SPUBLISH`).
    pub(crate) sharded: bool,
    /// Lane 0 first.
    lanes: Vec<LaneNames>,
    /// A partition's hash tag to its lane.
    by_tag: HashMap<String, Lane>,
}

/// The names of one lane.
#[derive(Debug, Clone)]
struct LaneNames {
    /// What its route channels begin with (the route token follows).
    prefix: String,
    /// Its history stream.
    history_key: String,
}

/// A session's route: its channel and the lane it travels on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteName {
    pub(crate) channel: String,
    pub(crate) lane: Lane,
}

impl Names {
    /// The names `config` gives on one server, or on a Redis Cluster when `cluster`.
    pub(crate) fn new(config: &RedisConfig, cluster: bool) -> Result<Names, BackendError> {
        let channel = config.channel.clone();
        if !cluster {
            return Ok(Names {
                lanes: vec![LaneNames {
                    prefix: format!("{channel}:"),
                    history_key: config.history_key.clone(),
                }],
                channel,
                sharded: false,
                by_tag: HashMap::new(),
            });
        }
        let tag = hash_tag(&channel);
        let prefix = if tag.is_some() {
            format!("{channel}:")
        } else {
            format!("{{{channel}}}:")
        };
        if slot(&format!("{prefix}x")) != slot(&channel) {
            return Err(BackendError::Config {
                backend: NAME,
                message: format!(
                    "on a Redis Cluster the channel `{channel}` needs a hash tag (`{{tag}}`) or \
                     no braces at all"
                ),
            });
        }
        let history_key = if config.history_key == format!("{channel}:history") {
            format!("{prefix}history")
        } else {
            config.history_key.clone()
        };
        if slot(&history_key) != slot(&channel) {
            return Err(BackendError::Config {
                backend: NAME,
                message: format!(
                    "on a Redis Cluster the history key `{history_key}` must be in the slot of \
                     the channel `{channel}`: begin it with `{prefix}`"
                ),
            });
        }
        let base = tag.unwrap_or(&channel);
        let mut lanes = vec![LaneNames {
            prefix,
            history_key,
        }];
        let mut by_tag = HashMap::new();
        for k in 0..config.route_partitions {
            let tag = partition_tag(base, k, config.route_partitions);
            by_tag.insert(tag.clone(), k + 1);
            lanes.push(LaneNames {
                prefix: format!("{{{tag}}}:"),
                history_key: format!("{{{tag}}}:history"),
            });
        }
        Ok(Names {
            channel,
            sharded: true,
            lanes,
            by_tag,
        })
    }

    /// How many lanes there are: 1, or 1 and the route partitions.
    pub(crate) fn lanes(&self) -> Lane {
        Lane::try_from(self.lanes.len()).unwrap_or(Lane::MAX)
    }

    /// The history stream of `lane` (0 when there is no such lane).
    pub(crate) fn history_key(&self, lane: Lane) -> &str {
        let lane = self.lanes.get(usize::from(lane)).unwrap_or(&self.lanes[0]);
        &lane.history_key
    }

    /// The route of the session whose route token is `token`.
    pub(crate) fn route(&self, token: &str) -> RouteName {
        let partitions = self.lanes.len() - 1;
        let lane = if partitions == 0 {
            0
        } else {
            let k = sse_core::route::partition(token, u32::try_from(partitions).unwrap_or(1));
            Lane::try_from(k + 1).unwrap_or(0)
        };
        RouteName {
            channel: format!("{}{token}", self.lanes[usize::from(lane)].prefix),
            lane,
        }
    }

    /// The lane a channel this backend subscribes to belongs to.
    pub(crate) fn lane_of(&self, channel: &[u8]) -> Lane {
        if self.by_tag.is_empty() {
            return 0;
        }
        std::str::from_utf8(channel)
            .ok()
            .and_then(hash_tag)
            .and_then(|tag| self.by_tag.get(tag))
            .copied()
            .unwrap_or(0)
    }
}

/// The hash tag of partition `k` of `partitions` for a channel whose own tag (or name) is
/// `base`: the first `base#k.n` whose slot is in the `k`-th of `partitions` equal slot ranges.
fn partition_tag(base: &str, k: u16, partitions: u16) -> String {
    let start = u32::from(SLOTS) * u32::from(k) / u32::from(partitions);
    let end = u32::from(SLOTS) * (u32::from(k) + 1) / u32::from(partitions);
    let mut n = 0u32;
    loop {
        let tag = format!("{base}#{k}.{n}");
        let slot = u32::from(slot(&tag));
        // Past a few hundred thousand tries the range is tiny (thousands of partitions): any
        // tag will do, the spread is then by chance.
        if (start..end).contains(&slot) || n > 1_000_000 {
            return tag;
        }
        n += 1;
    }
}

/// The slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of its hash tag, or of the
/// whole key when it has none, modulo 16 384.
pub(crate) fn slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes()) % SLOTS
}

/// The hash tag of a key, as Redis Cluster finds it: what is between the first `{` and the
/// first `}` after it, when that is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cluster_names(channel: &str, partitions: u16) -> Names {
        let mut config = RedisConfig::new("redis://a:1,redis://b:2", channel);
        config.route_partitions = partitions;
        Names::new(&config, true).unwrap()
    }

    #[test]
    fn without_partitions_history_and_routes_share_the_channels_slot() {
        for channel in ["send.sse.event", "{orders}.events", "x{a}{b}"] {
            let names = cluster_names(channel, 0);
            let slot = slot(channel);
            assert_eq!(names.lanes(), 1);
            assert_eq!(super::slot(names.history_key(0)), slot, "{channel}");
            let route = names.route("abc");
            assert_eq!((super::slot(&route.channel), route.lane), (slot, 0));
            assert_ne!(route.channel, names.route("abd").channel);
        }
        assert_eq!(
            cluster_names("send.sse.event", 0).history_key(0),
            "{send.sse.event}:history"
        );
    }

    #[test]
    fn partitions_spread_over_the_slot_ranges_and_keep_their_history_in_their_slot() {
        let names = cluster_names("send.sse.event", 16);
        assert_eq!(names.lanes(), 17);
        for lane in 1..=16u16 {
            let slot = u32::from(slot(names.history_key(lane)));
            let k = u32::from(lane - 1);
            assert!(
                slot >= 16_384 * k / 16 && slot < 16_384 * (k + 1) / 16,
                "lane {lane}: slot {slot}"
            );
        }
        // Each session's route is in its partition's slot, and received there as that lane.
        let mut seen = std::collections::HashSet::new();
        for n in 0..200 {
            let token = format!("s-user-{n}");
            let route = names.route(&token);
            assert!(route.lane >= 1);
            assert_eq!(
                slot(&route.channel),
                slot(names.history_key(route.lane)),
                "{route:?}"
            );
            assert_eq!(names.lane_of(route.channel.as_bytes()), route.lane);
            seen.insert(route.lane);
        }
        assert_eq!(seen.len(), 16, "200 sessions fall in every partition");
        assert_eq!(names.lane_of(b"send.sse.event"), 0);
        // Every instance names them alike.
        let again = cluster_names("send.sse.event", 16);
        assert_eq!(again.route("s-a"), names.route("s-a"));
    }

    #[test]
    fn our_slots_are_redis_clusters() {
        // `CLUSTER KEYSLOT` for these keys, as Redis's documentation shows it.
        assert_eq!(slot("somekey"), 11_058);
        assert_eq!(slot("foo{hash_tag}"), 2_515);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn a_history_key_outside_the_slot_is_refused_on_a_cluster() {
        let mut config = RedisConfig::new("redis://a:1,redis://b:2", "events");
        config.history_key = "elsewhere".into();
        let error = Names::new(&config, true).unwrap_err();
        assert!(error.to_string().contains("{events}:"), "{error}");
    }

    #[test]
    fn a_channel_with_braces_but_no_hash_tag_is_refused_on_a_cluster() {
        let config = RedisConfig::new("redis://a:1,redis://b:2", "a{}b");
        assert!(Names::new(&config, true).is_err());
    }

    #[test]
    fn one_server_keeps_the_names_it_always_had() {
        let config = RedisConfig::new("redis://a:1", "send.sse.event");
        let names = Names::new(&config, false).unwrap();
        assert_eq!(names.history_key(0), "send.sse.event:history");
        assert_eq!(names.route("t").channel, "send.sse.event:t");
        assert_eq!(names.lanes(), 1);
    }

    #[test]
    fn hash_tags_are_found_as_redis_finds_them() {
        assert_eq!(hash_tag("{a}b"), Some("a"));
        assert_eq!(hash_tag("x{a}{b}"), Some("a"));
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("plain"), None);
    }
}
