//! Which of a Redis Cluster's 16,384 hash slots a key lives in, and which
//! master serves that slot: how a node finds its Redis on a cluster.
//!
//! Redis hashes only a key's hash tag, the text between the first `{` and
//! the `}` after it, when there is one and it is not empty; so every key of
//! one vivachat cluster, `{vivachat}:q:bob` and `{vivachat}:presence` alike,
//! is in one slot, and a script may touch any of them (CROSSSLOT otherwise).

use redis::Value;

/// Slots in a Redis Cluster: CRC16(key) mod 16384.
pub const SLOTS: u16 = 16_384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
/// Bit by bit, O(bytes): a node computes one slot at start.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`, hash tag rules included.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// A master of the cluster and the slots it serves, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u16,
    pub last: u16,
    pub host: String,
    pub port: u16,
}

/// Reads `CLUSTER SLOTS`' reply: per range, its first and last slot, then
/// the master (host, port, id, ...), then its replicas. An empty host means
/// "the address you reached me on" (Redis 7's `cluster-preferred-endpoint-type`).
pub fn ranges(reply: &Value, reached: &str) -> Vec<Range> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let first = int(parts.first()?)?;
            let last = int(parts.get(1)?)?;
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let host = if host.is_empty() || host == "?" {
                reached.to_string()
            } else {
                host
            };
            let port = int(master.get(1)?)?;
            Some(Range {
                first,
                last,
                host,
                port,
            })
        })
        .collect()
}

/// The master serving `slot`, if the cluster has one for it now.
pub fn owner(ranges: &[Range], slot: u16) -> Option<&Range> {
    ranges.iter().find(|r| (r.first..=r.last).contains(&slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_cluster_computes() {
        // The Redis Cluster specification's check value: CRC16 of "123456789" is 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("123456789"), 0x31C3 % SLOTS);
        // CLUSTER KEYSLOT answers, read from a Redis 7.0 cluster.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("vivachat"), key_slot("{vivachat}:q:bob"));
    }

    #[test]
    fn only_a_non_empty_tag_is_hashed() {
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(
            key_slot("{vivachat}:presence"),
            key_slot("{vivachat}:devices:ana")
        );
        // `{}` is no tag: the whole key is hashed.
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        // Only the first `{` counts, up to the first `}` after it.
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        // An unclosed `{` is no tag.
        assert_eq!(key_slot("foo{bar"), crc16(b"foo{bar") % SLOTS);
    }

    #[test]
    fn the_owner_is_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let all = ranges(&reply, "10.0.0.9");
        assert_eq!(all.len(), 2);
        assert_eq!(owner(&all, 0).map(|r| r.port), Some(7000));
        assert_eq!(owner(&all, 5460).map(|r| r.port), Some(7000));
        let second = owner(&all, 12182).unwrap();
        assert_eq!((second.host.as_str(), second.port), ("10.0.0.9", 7001));
        assert_eq!(owner(&all[..1], 9000), None);
    }
}
